"""Processes refuse unsafe settings before they open anything: plaintext off loopback, weak secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagegate.grpckit.security import (
    InsecureConfigError,
    SecuritySettings,
    Transport,
    refuse_weak_secrets,
)
from imagegate.grpckit.tls import is_loopback

ROOT = Path(__file__).resolve().parents[2]
STRONG = "s3cr3t-0123456789-abcdef"


def _run(module: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("IMAGEGATE_", "QUOTA_", "METERING_"))
    }
    full.update(IMAGEGATE_DATA_DIR=str(tmp_path), IMAGEGATE_LOG_LEVEL="WARNING", **env)
    return subprocess.run(
        [sys.executable, "-m", module],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_quota_refuses_plaintext_on_a_non_loopback_address(tmp_path: Path):
    done = _run(
        "services.quota",
        tmp_path,
        IMAGEGATE_QUOTA_ADDR="0.0.0.0:0",
        IMAGEGATE_SERVICE_TOKEN=STRONG,
        IMAGEGATE_QUOTA_KEY_PEPPER=STRONG,
    )
    assert done.returncode != 0
    assert "refusing plaintext gRPC on 0.0.0.0:0" in done.stderr
    assert "Traceback" not in done.stderr


def test_quota_outside_dev_mode_refuses_an_empty_pepper(tmp_path: Path):
    done = _run(
        "services.quota",
        tmp_path,
        IMAGEGATE_QUOTA_ADDR="0.0.0.0:0",
        IMAGEGATE_ALLOW_PLAINTEXT="true",
        IMAGEGATE_SERVICE_TOKEN=STRONG,
    )
    assert done.returncode != 0
    assert "IMAGEGATE_QUOTA_KEY_PEPPER must be set" in done.stderr


def test_quota_outside_dev_mode_refuses_a_default_admin_token(tmp_path: Path):
    done = _run(
        "services.quota",
        tmp_path,
        IMAGEGATE_QUOTA_ADDR="127.0.0.1:0",
        IMAGEGATE_DEV_MODE="false",
        IMAGEGATE_SERVICE_TOKEN=STRONG,
        IMAGEGATE_QUOTA_KEY_PEPPER=STRONG,
        IMAGEGATE_ADMIN_TOKEN="admin",
    )
    assert done.returncode != 0
    assert "IMAGEGATE_ADMIN_TOKEN is a default" in done.stderr
    assert "=admin" not in done.stderr


def test_quota_refuses_to_start_with_no_way_to_authenticate_services(tmp_path: Path):
    done = _run("services.quota", tmp_path, IMAGEGATE_QUOTA_ADDR="127.0.0.1:0")
    assert done.returncode != 0
    assert "IMAGEGATE_SERVICE_TOKEN" in done.stderr


def test_metering_refuses_a_short_service_token(tmp_path: Path):
    done = _run(
        "services.metering",
        tmp_path,
        IMAGEGATE_METERING_ADDR="127.0.0.1:0",
        IMAGEGATE_SERVICE_TOKEN="short",
    )
    assert done.returncode != 0
    assert "shorter than 16" in done.stderr


@pytest.mark.parametrize("token", ["admin", "changeme", "Dev", "tooshort"])
def test_weak_admin_tokens_are_refused_outside_dev_mode_only(token: str):
    with pytest.raises(InsecureConfigError):
        refuse_weak_secrets(dev=False, pepper=STRONG, admin_token=token)
    refuse_weak_secrets(dev=True, pepper="", admin_token=token)


def test_an_empty_admin_token_is_allowed_it_disables_admin_rpcs():
    refuse_weak_secrets(dev=False, pepper=STRONG, admin_token="")


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.5.0.1:1", True),
        ("localhost:0", True),
        ("[::1]:50051", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        (":50051", False),
        ("10.0.0.7:50051", False),
        ("quota.imagegate.svc:50052", False),
    ],
)
def test_loopback_detection(address: str, loopback: bool):
    assert is_loopback(address) is loopback


def test_dev_mode_follows_the_listen_address_unless_set():
    assert Transport().is_dev("127.0.0.1:1")
    assert not Transport().is_dev("0.0.0.0:1")
    assert not Transport(dev_mode=False).is_dev("127.0.0.1:1")


def test_a_certificate_directory_gives_each_process_its_own_pair(tmp_path: Path):
    transport = SecuritySettings(tls_dir=tmp_path).transport("metering")
    assert transport.tls is not None
    assert transport.tls.cert == tmp_path / "metering.pem"
    assert transport.tls.key == tmp_path / "metering-key.pem"
    assert transport.tls.ca == tmp_path / "ca.pem"


def test_the_dev_stack_makes_a_fresh_service_token_per_run_and_keeps_a_given_one():
    from imagegate.devstack.services import plan_stack

    _, first = plan_stack({}, auto_ports=True)
    _, second = plan_stack({}, auto_ports=True)
    assert first["IMAGEGATE_SERVICE_TOKEN"] != second["IMAGEGATE_SERVICE_TOKEN"]
    assert len(first["IMAGEGATE_SERVICE_TOKEN"]) >= 32
    _, given = plan_stack({"IMAGEGATE_SERVICE_TOKEN": STRONG}, auto_ports=True)
    assert given["IMAGEGATE_SERVICE_TOKEN"] == STRONG
