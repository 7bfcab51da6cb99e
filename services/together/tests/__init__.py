"""Tests of the together adapter."""
