"""Tests of the openai adapter."""
