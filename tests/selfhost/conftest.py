"""A tiny diffusers pipeline saved once per session, and adapters loaded from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.tiny_pipeline import build_tiny_pipeline


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised StableDiffusionPipeline in diffusers format (no download)."""
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-diffusers"))
