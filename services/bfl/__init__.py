"""The Black Forest Labs adapter: submit, follow polling_url, fetch the signed sample in time."""
