"""The fal.ai adapter: fal's queue API (submit, poll, fetch, cancel) behind ProviderService."""
