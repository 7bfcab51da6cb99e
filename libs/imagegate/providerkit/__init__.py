"""Provider kit: what every adapter shares, so an adapter is only its provider's translation."""
