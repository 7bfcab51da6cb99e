"""A whole stack of real processes on free loopback ports, shared by the integration tests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagegate.devstack.bootstrap import ensure_admin_token, ensure_dev_key
from imagegate.devstack.supervisor import Stack
from imagegate.grpckit.security import transport_from_env
from imagegate.textproviders import KEY_VARS as TEXT_KEY_VARS

_PROVIDER_KEYS = (
    "FAL_KEY",
    "HF_TOKEN",
    "REPLICATE_API_TOKEN",
    "BFL_API_KEY",
    "OPENAI_API_KEY",
    "TOGETHER_API_KEY",
)


@dataclass
class RunningStack:
    """The started stack with what a test needs to call it."""

    stack: Stack
    """The processes."""
    api_key: str
    """Key of the `dev` tenant (plan pro)."""
    admin_token: str
    """Admin token for Quota's admin RPCs."""
    env: dict[str, str]
    """Environment the processes run with (for CLI subprocesses)."""
    data_dir: Path
    """Data directory of this stack."""


def stack_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The test process's environment without provider keys, pointed at `data_dir`."""
    env = {
        k: v for k, v in os.environ.items() if k not in _PROVIDER_KEYS and k not in TEXT_KEY_VARS
    }
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    env.update(
        IMAGEGATE_DATA_DIR=str(data_dir),
        IMAGEGATE_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


async def start_stack(data_dir: Path, **extra: str) -> RunningStack:
    """Starts every service as a process and bootstraps the dev tenant."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = stack_env(data_dir, **extra)
    admin = ensure_admin_token(data_dir, env)
    stack = Stack(env, auto_ports=True, out=None)
    try:
        await stack.start(timeout=60)
        key_file, _ = await ensure_dev_key(
            data_dir, stack.address("quota"), admin, transport=transport_from_env(stack.env)
        )
    except BaseException:
        await stack.stop()
        raise
    return RunningStack(stack, key_file.read_text().strip(), admin, stack.env, data_dir)


@pytest.fixture(scope="session")
async def running_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningStack]:
    """One stack for the integration tests of this session."""
    running = await start_stack(tmp_path_factory.mktemp("stack") / "data")
    yield running
    await running.stack.stop()
