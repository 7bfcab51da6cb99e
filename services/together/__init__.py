"""Together AI adapter: synchronous images/generations with base64 output."""
