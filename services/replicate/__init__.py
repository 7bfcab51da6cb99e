"""The Replicate adapter: predictions with `Prefer: wait`, polling and cancel behind ProviderService."""
