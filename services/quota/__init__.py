"""Quota service: tenants, plans, API keys and atomic monthly image quotas."""
