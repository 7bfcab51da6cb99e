"""The CLI's error line tells the caller what a failed request cost and where to trace it."""

from __future__ import annotations

import grpc
import pytest

from imagegate.cli.main import _print_error
from imagegate.grpckit import reasons
from imagegate.grpckit.errors import ParsedStatus


def test_error_line_shows_the_billed_cost_retry_and_trace(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parsed = ParsedStatus(
        code=grpc.StatusCode.UNAVAILABLE,
        message="all 2 attempts failed",
        reason=reasons.ALL_PROVIDERS_FAILED,
        metadata={reasons.META_COST_MICROS: "3000", reasons.META_TRACE_ID: "ab" * 16},
        retry_after_seconds=7.0,
    )
    assert _print_error(parsed) == 1
    err = capsys.readouterr().err
    assert "UNAVAILABLE ALL_PROVIDERS_FAILED" in err
    assert "charged $0.003000" in err
    assert "retry after 7.0s" in err
    assert "trace " + "ab" * 16 in err


def test_error_line_mentions_no_charge_when_nothing_was_billed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parsed = ParsedStatus(
        code=grpc.StatusCode.FAILED_PRECONDITION,
        message="no candidate",
        reason=reasons.NO_CANDIDATE,
        metadata={reasons.META_COST_MICROS: "0"},
    )
    _print_error(parsed)
    assert "charged" not in capsys.readouterr().err
