"""Metering service: the price catalog and the idempotent usage ledger."""
