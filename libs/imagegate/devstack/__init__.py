"""Local development stack: a small supervisor that runs every service as its own process."""
