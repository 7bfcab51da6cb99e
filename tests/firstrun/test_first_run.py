"""What a new user meets on first start: names that follow one rule, a quiet start, usable hints."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from imagegate.devstack.__main__ import try_hint
from imagegate.devstack.services import ADAPTERS, CORE, ROUTER, plan_stack
from imagegate.persistence.db import make_engine, migrate
from imagegate.telemetry.setup import DEFAULT_METRICS_ADDRS, env_key, metrics_address

ROOT = Path(__file__).resolve().parents[2]
SPECS = [*CORE, *ADAPTERS, ROUTER]


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_a_services_metrics_variable_uses_the_name_of_its_listen_variable(spec) -> None:
    name = spec.addr_var.removeprefix("IMAGEGATE_").removesuffix("_ADDR")
    assert env_key(spec.name) == name
    moved = "127.0.0.1:19999"
    assert metrics_address(spec.name, {f"IMAGEGATE_{name}_METRICS_ADDR": moved}) == moved


def test_the_readme_lists_every_default_metrics_port_and_the_variable() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "IMAGEGATE_<NAME>_METRICS_ADDR" in readme
    for addr in DEFAULT_METRICS_ADDRS.values():
        assert f":{addr.rsplit(':', 1)[1]}`" in readme, addr


def test_a_listen_address_past_65535_stops_the_stack_naming_the_variable() -> None:
    with pytest.raises(ValueError, match=r"IMAGEGATE_ROUTER_ADDR='127\.0\.0\.1:99999'"):
        plan_stack({"IMAGEGATE_ROUTER_ADDR": "127.0.0.1:99999"})


def test_the_try_hint_carries_a_moved_router_address() -> None:
    moved = try_hint("127.0.0.1:6000", "127.0.0.1:50052", "/repo/.venv/bin/imagegate")
    assert "export IMAGEGATE_ROUTER_ADDR=127.0.0.1:6000" in moved
    assert "IMAGEGATE_QUOTA_ADDR" not in moved
    assert '/repo/.venv/bin/imagegate generate "' in moved
    default = try_hint("127.0.0.1:50051", "127.0.0.1:50052", "imagegate")
    assert "export" not in default and "imagegate usage && imagegate quota" in default


def test_migrations_print_no_alembic_info_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    logging.getLogger("alembic").setLevel(logging.NOTSET)
    caplog.set_level(logging.INFO)
    engine = make_engine(f"sqlite:///{tmp_path / 'q.db'}", schema="quota")
    try:
        migrate(
            engine,
            script_location="services.quota:migrations",
            schema="quota",
            version_table="alembic_version",
        )
    finally:
        engine.dispose()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("alembic")] == []


def test_make_help_names_each_target_beside_its_description() -> None:
    make = shutil.which("make")
    assert make is not None, "make is part of the toolchain"
    out = subprocess.run(
        [make, "-s", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    makefile = (ROOT / "Makefile").read_text()
    described = re.findall(r"^# (.+)\n([a-z][a-z-]*):", makefile, flags=re.MULTILINE)
    assert len(described) >= 10
    for description, target in described:
        assert re.search(rf"^\s*{re.escape(target)}\s+{re.escape(description)}$", out, re.M), target


def test_the_install_step_keeps_pip_and_setuptools_chatter_in_a_log() -> None:
    # `make run` depends on `install`; its pip output (setuptools' editable-install notice
    # included) goes to .venv/install.log and is shown only when the install fails.
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\n$(STAMP):", 1)[1].split("\n\n", 1)[0]
    pip_lines = [line for line in recipe.splitlines() if "pip install" in line and "-e" in line]
    assert pip_lines, recipe
    assert all(
        ">$(VENV)/install.log 2>&1" in line and "cat $(VENV)/install.log" in line
        for line in pip_lines
    )


def test_the_router_refuses_downstream_addresses_gRPC_would_wrap() -> None:
    from pydantic import ValidationError

    from services.router.config import RouterSettings

    with pytest.raises(ValidationError, match="port from 1 to 65535"):
        RouterSettings(quota_addr="127.0.0.1:99999")
    with pytest.raises(ValueError, match=r"IMAGEGATE_ROUTER_ADAPTERS fal='127\.0\.0\.1:70000'"):
        RouterSettings(adapters="local=127.0.0.1:50060,fal=127.0.0.1:70000").adapter_targets()
    assert RouterSettings(adapters="local=127.0.0.1:50060").adapter_targets() == {
        "local": "127.0.0.1:50060"
    }


def test_a_busy_metrics_port_names_the_variable_to_move() -> None:
    import socket

    from imagegate.telemetry import setup_telemetry

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(RuntimeError, match=r"IMAGEGATE_HF_METRICS_ADDR") as info:
            setup_telemetry("adapter-huggingface", metrics_addr=busy)
        assert busy in str(info.value) and '""' in str(info.value)
    with pytest.raises(RuntimeError, match=r"IMAGEGATE_ROUTER_METRICS_ADDR='127\.0\.0\.1:99999'"):
        setup_telemetry("router", metrics_addr="127.0.0.1:99999")
