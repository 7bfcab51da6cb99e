"""Every bad flag is one clear line and exit status 2 before any RPC; good flags build the request."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagegate.cli import flags
from imagegate.cli.args import parse
from imagegate.cli.connection import Connection
from imagegate.cli.generate import build_request
from imagegate.cli.main import run
from services.quota import servicer as quota_servicer
from services.router import validation

ROOT = Path(__file__).resolve().parents[2]

BAD = [
    (["generate", "x", "-o", "x.png", "--seed", "99999999999999999999"], "--seed"),
    (["generate", "x", "-o", "x.png", "--seed", "-1"], "--seed"),
    (["generate", "x", "-o", "x.png", "--max-cost", "1e20"], "--max-cost"),
    (["generate", "x", "-o", "x.png", "--max-cost", "nan"], "--max-cost"),
    (["generate", "x", "-o", "x.png", "--max-cost", "inf"], "--max-cost"),
    (["generate", "x", "-o", "x.png", "--max-cost", "-inf"], "--max-cost"),
    (["generate", "x", "-o", "x.png", "--max-cost", "-0.5"], "--max-cost"),
    (["generate", "x", "-o", "x.png", "--max-cost", "0.0000001"], "--max-cost"),
    (["generate", "x", "-o", "x.png", "--n", "99999999999"], "--n"),
    (["generate", "x", "-o", "x.png", "--n", "5"], "--n"),
    (["generate", "x", "-o", "x.png", "--n", "0"], "--n"),
    (["generate", "x", "-o", "x.png", "--steps", "99999999999"], "--steps"),
    (["generate", "x", "-o", "x.png", "--size", "99999999999x512"], "--size"),
    (["generate", "x", "-o", "x.png", "--size", "512x99999999999"], "--size"),
    (["generate", "x", "-o", "x.png", "--size", "-5x512"], "--size"),
    (["generate", "x", "-o", "x.png", "--size=-5x512"], "--size"),
    (["generate", "x", "-o", "x.png", "--size", "512"], "--size"),
    (["generate", "x", "-o", "x.png", "--size", "8" * 5000 + "x512"], "--size"),
    (["generate", "x", "-o", "x.png", "--guidance", "nan"], "--guidance"),
    (["generate", "x", "-o", "x.png", "--guidance", "51"], "--guidance"),
    (["generate", "x", "-o", "x.png", "--timeout", "inf"], "--timeout"),
    (["generate", "x", "-o", "x.png", "--timeout", "0"], "--timeout"),
    (["generate", "x", "-o", "x.png", "--request-id", "r" * 129], "--request-id"),
    (["generate", "x", "-o", "x.png", "--negative", "n" * 2001], "--negative"),
    (["generate", "   ", "-o", "x.png"], "prompt"),
    (["generate", "p" * 4001, "-o", "x.png"], "prompt"),
    (["generate", "bad \udcff bytes", "-o", "x.png"], "prompt"),
    (["estimate", "x", "--seed", "1" * 5000], "--seed"),
    (["estimate", "x", "--steps", "0"], "--steps"),
    (["estimate", "x", "--max-cost", "lots"], "--max-cost"),
    (["usage", "--month", "2026-13"], "--month"),
    (["usage", "--limit", "99999999999"], "--limit"),
    (["admin", "tenant-create", " padded "], "name"),
    (["admin", "key-create", "t_1", "--label", "l" * 101], "--label"),
    (["admin", "key-revoke", ""], "key_id"),
]


@pytest.fixture
def no_rpc(monkeypatch):
    def refuse() -> Connection:
        raise AssertionError("a command ran: validation should have stopped it")

    monkeypatch.setattr(Connection, "from_env", staticmethod(refuse))


@pytest.mark.parametrize(("argv", "flag"), BAD, ids=[" ".join(a)[:60] for a, _ in BAD])
def test_bad_flag_exits_2_with_one_line_naming_it(argv, flag, no_rpc, capsys):
    with pytest.raises(SystemExit) as exited:
        run(argv)
    out, err = capsys.readouterr()
    assert exited.value.code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert f"argument {flag}" in err and "must" in err
    assert "Traceback" not in err


def test_size_that_starts_with_a_dash_is_checked_not_taken_for_an_option(no_rpc, capsys):
    with pytest.raises(SystemExit):
        run(["generate", "x", "--size", "-5x512", "-o", "x.png"])
    err = capsys.readouterr().err
    assert "each side 64 to 4096" in err and "'-5x512'" in err
    assert "expected one argument" not in err


def test_good_flags_build_the_request_the_router_documents():
    args = parse(
        [
            "generate",
            "a red fox",
            "-o",
            "fox.png",
            "--size=512x768",
            "--n",
            "4",
            "--seed",
            str(flags.INT64_MAX),
            "--steps",
            "150",
            "--guidance",
            "7.5",
            "--max-cost",
            "0.05",
            "--provider",
            "fal",
            "--request-id",
            "r-1",
            "--timeout",
            "30",
        ]
    )
    req = build_request(args)
    assert (req.prompt, req.width, req.height, req.num_images) == ("a red fox", 512, 768, 4)
    assert req.seed == flags.INT64_MAX and req.steps == 150 and req.guidance_scale == 7.5
    assert req.max_cost_micros == 50_000 and req.request_id == "r-1"
    assert list(req.allowed_providers) == ["fal"] and args.timeout == 30.0


def test_defaults_leave_optional_fields_unset():
    req = build_request(parse(["estimate", "x"]))
    assert req.num_images == 1 and req.max_cost_micros == 0 and req.request_id
    for field in ("width", "height", "seed", "steps", "guidance_scale"):
        assert not req.HasField(field)


def test_cli_limits_agree_with_the_servers():
    assert (flags.MIN_SIDE, flags.MAX_SIDE) == (validation.MIN_SIDE, validation.MAX_SIDE)
    assert flags.MAX_PROMPT == validation.MAX_PROMPT
    assert flags.MAX_NEGATIVE == validation.MAX_NEGATIVE
    assert flags.MAX_REQUEST_ID == validation.MAX_REQUEST_ID
    assert (flags.MAX_ID, flags.MAX_NAME) == (quota_servicer.MAX_ID, quota_servicer.MAX_NAME)


def test_unexpected_error_is_one_line_not_a_traceback(monkeypatch, capsys):
    def broken() -> Connection:
        raise RuntimeError("something we did not foresee")

    monkeypatch.setattr(Connection, "from_env", staticmethod(broken))
    monkeypatch.delenv("IMAGEGATE_DEBUG", raising=False)
    assert run(["models"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unexpected RuntimeError: something we did not foresee")
    assert "Traceback" not in err


def test_the_installed_entry_point_answers_a_bad_size_in_one_line():
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'libs'}{os.pathsep}{ROOT}"}
    proc = subprocess.run(
        [sys.executable, "-m", "imagegate.cli", "generate", "x", "--size", "-5x512", "-o", "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith(
        "imagegate generate: error: argument --size: must be WIDTHxHEIGHT"
    )
    assert "Traceback" not in proc.stderr
