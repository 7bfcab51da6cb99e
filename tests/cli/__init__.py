"""Tests of the `imagegate` command line."""
