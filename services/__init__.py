"""Deployable imagegate processes, one package per service."""
