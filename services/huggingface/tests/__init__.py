"""Tests of the huggingface adapter."""
