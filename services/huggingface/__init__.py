"""Hugging Face adapter: the HF router's native hf-inference route and its partner routes."""
