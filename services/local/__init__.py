"""The local backend: renders real images offline, deterministically, at no cost."""
