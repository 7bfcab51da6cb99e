"""What a new user met with the CLI: one-word errors, wrapped ports, int64 strings, repeated lines."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import grpc
import pytest

from imagegate.cli.args import build_parser
from imagegate.cli.connection import Connection, default_data_dir, record_data_dir
from imagegate.cli.generate import ProgressLines
from imagegate.cli.main import _print_error, run
from imagegate.cli.output import proto_dict
from imagegate.common.v1 import image_pb2
from imagegate.grpckit import reasons
from imagegate.grpckit.errors import ImagegateError, ParsedStatus
from imagegate.metering.v1 import metering_pb2
from imagegate.router.v1 import router_pb2

ROOT = Path(__file__).resolve().parents[2]


def test_a_reason_that_only_repeats_the_code_is_printed_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _print_error(
        ParsedStatus(
            code=grpc.StatusCode.INVALID_ARGUMENT,
            message="width must be 64 to 4096",
            reason=reasons.INVALID_ARGUMENT,
        )
    )
    first = capsys.readouterr().err.splitlines()[0]
    assert first == "error: INVALID_ARGUMENT: width must be 64 to 4096"
    _print_error(
        ParsedStatus(code=grpc.StatusCode.NOT_FOUND, message="m", reason=reasons.UNKNOWN_MODEL)
    )
    assert capsys.readouterr().err.startswith("error: NOT_FOUND UNKNOWN_MODEL: m")


@pytest.mark.parametrize("addr", ["127.0.0.1:99999", "127.0.0.1:0", "127.0.0.1", "host:5x"])
def test_a_router_address_gRPC_would_wrap_or_reject_is_refused_by_name(
    addr: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IMAGEGATE_ROUTER_ADDR", addr)
    assert run(["models"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: INVALID_ARGUMENT BAD_ADDRESS: IMAGEGATE_ROUTER_ADDR=")
    assert "port from 1 to 65535" in err


def test_a_quota_address_out_of_range_is_refused_too() -> None:
    with pytest.raises(ImagegateError) as info:
        Connection.from_env({"IMAGEGATE_QUOTA_ADDR": "127.0.0.1:70000"})
    assert info.value.reason == reasons.BAD_ADDRESS
    assert info.value.metadata["variable"] == "IMAGEGATE_QUOTA_ADDR"


def test_json_output_writes_int64_fields_as_numbers() -> None:
    response = router_pb2.GenerateImageResponse(
        cost_micros=12_345,
        usage=image_pb2.Usage(images=2, input_tokens=9_007_199_254_740_993),
        attempts=[router_pb2.Attempt(provider="fal")],
        replayed=True,
    )
    out = proto_dict(response)
    assert out["cost_micros"] == 12_345
    # Nested, and beyond 2^53 too: exact, as Python's json writes any int.
    assert out["usage"]["input_tokens"] == 9_007_199_254_740_993
    assert out["attempts"][0]["provider"] == "fal"
    assert out["replayed"] is True
    record = proto_dict(metering_pb2.UsageRecord(cost_micros=7, images=1))
    assert record["cost_micros"] == 7
    # Well-known types keep their JSON forms.
    record_ts = metering_pb2.UsageRecord()
    record_ts.occurred_at.FromSeconds(0)
    assert proto_dict(record_ts)["occurred_at"] == "1970-01-01T00:00:00Z"


def _progress(job: str, state: str = "Pending") -> router_pb2.StreamGenerateImageResponse:
    return router_pb2.StreamGenerateImageResponse(
        elapsed_seconds=0.1,
        progress=router_pb2.ProviderProgress(
            provider="bfl", state=state, queue_position=-1, fraction=0.0, provider_job_id=job
        ),
    )


def test_four_jobs_of_one_request_are_four_numbered_lines_not_one_line_four_times() -> None:
    lines = ProgressLines(4)
    shown = [lines.text(_progress(f"job-{i}"), "progress") for i in range(1, 5)]
    assert shown[0] == "bfl Pending 0%"
    assert shown[1:] == [f"bfl Pending 0% (image {i} of 4)" for i in (2, 3, 4)]
    assert len(set(shown)) == 4
    # The same state polled again says nothing new.
    assert lines.text(_progress("job-4"), "progress") is None
    assert lines.text(_progress("job-1", "Ready"), "progress") == "bfl Ready 0% (image 1 of 4)"


def test_one_job_for_several_images_is_not_numbered() -> None:
    lines = ProgressLines(3)
    assert lines.text(_progress("only"), "progress") == "bfl Pending 0%"
    assert lines.text(_progress("only", "Ready"), "progress") == "bfl Ready 0%"


def test_the_cli_finds_the_data_dir_make_run_recorded_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "repo" / ".imagegate"
    data.mkdir(parents=True)
    (data / "dev-api-key").write_text("igk_test\n")
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    pointer = record_data_dir(data, env)
    assert pointer == tmp_path / "state" / "imagegate" / "data-dir"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("IMAGEGATE_API_KEY", raising=False)
    conn = Connection.from_env(env)
    assert conn.data_dir == data.resolve()
    assert conn.api_key() == "igk_test"
    # An explicit IMAGEGATE_DATA_DIR wins and is made absolute.
    assert default_data_dir({**env, "IMAGEGATE_DATA_DIR": "rel"}) == elsewhere / "rel"
    # Nothing recorded: the current directory's .imagegate, absolute.
    assert default_data_dir({"XDG_STATE_HOME": str(tmp_path / "none")}) == (
        elsewhere / ".imagegate"
    )


def _options(parser: argparse.ArgumentParser) -> dict[str, set[str]]:
    """Every long option of every (sub)command, keyed by the command path."""
    found: dict[str, set[str]] = {}

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}".strip())
            else:
                longs = [o for o in action.option_strings if o.startswith("--") and o != "--help"]
                if longs:
                    found.setdefault(path, set()).update(longs)

    walk(parser, "")
    return found


def test_the_readme_synopsis_names_every_flag_of_every_command() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The CLI", 1)[1]
    synopsis = section.split("```sh", 1)[1].split("```", 1)[0]
    missing = []
    for command, options in _options(build_parser()).items():
        words = command.split()
        assert words[-1] in synopsis, f"`{command}` is not in the README synopsis"
        for option in options:
            if not re.search(rf"{re.escape(option)}\b", synopsis):
                missing.append(f"{command} {option}")
    assert not missing, f"README's CLI synopsis lacks: {', '.join(sorted(missing))}"
