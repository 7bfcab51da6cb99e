"""Each adapter against its provider emulator: the provider-specific wire mapping and faults."""
