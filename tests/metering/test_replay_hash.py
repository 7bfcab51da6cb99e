"""A replayed RecordUsage (same billable content, another trace id, time, note or wall-clock
measurement) is an idempotent duplicate; other billable content is still IDEMPOTENCY_KEY_REUSED;
rows hashed the old way (whole request) keep working. SQLite and PostgreSQL, over real gRPC."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime

import grpc
import pytest
from sqlalchemy import text

from imagegate.common.v1 import image_pb2
from imagegate.grpckit import reasons
from imagegate.metering.v1 import metering_pb2
from services.metering.store import (
    BILLABLE_REQUEST_FIELDS,
    INCIDENTAL_ATTEMPT_FIELDS,
    INCIDENTAL_REQUEST_FIELDS,
    INCIDENTAL_USAGE_FIELDS,
    content_hash,
)
from tests.metering.conftest import MeteringEnv
from tests.metering.test_metering import _error, _rows, _ts

Request = metering_pb2.RecordUsageRequest
SCHNELL = ("replicate", "black-forest-labs/flux-schnell")
BILLABLE_ATTEMPT_FIELDS = {
    "provider",
    "provider_model",
    "attempt_number",
    "usage",
    "succeeded",
    "usage_reported",
    "kind",
}
BILLABLE_USAGE_FIELDS = {
    "images",
    "megapixels",
    "provider_seconds",
    "input_tokens",
    "output_tokens",
    "provider_job_id",
}


def _request(request_id: str = "r1") -> Request:
    return Request(
        request_id=request_id,
        tenant_id="t1",
        model="flux-schnell",
        outcome=metering_pb2.REQUEST_OUTCOME_SUCCEEDED,
        attempts=[
            metering_pb2.BilledAttempt(
                provider="bfl",
                provider_model="flux-pro-1.1",
                attempt_number=1,
                succeeded=False,
                usage=image_pb2.Usage(images=1, megapixels=1.0, wall_seconds=30.2),
                note="timeout after provider accepted the job",
            ),
            metering_pb2.BilledAttempt(
                provider=SCHNELL[0],
                provider_model=SCHNELL[1],
                attempt_number=2,
                succeeded=True,
                usage=image_pb2.Usage(
                    images=1, megapixels=1.0, provider_job_id="job-1", wall_seconds=1.5
                ),
            ),
        ],
        occurred_at=_ts(datetime(2026, 11, 24, 12, tzinfo=UTC)),
        trace_id="11111111111111111111111111111111",
    )


def _changed(edit: Callable[[Request], None]) -> Request:
    request = _request()
    edit(request)
    return request


def _legacy_hash(request: Request) -> str:
    """The hash rows were written with before: the whole request less cost_micros and price_id."""
    canonical = Request()
    canonical.CopyFrom(request)
    for attempt in canonical.attempts:
        attempt.ClearField("cost_micros")
        attempt.ClearField("price_id")
    return hashlib.sha256(canonical.SerializeToString(deterministic=True)).hexdigest()


def _replay(request: Request) -> None:
    request.trace_id = "22222222222222222222222222222222"
    request.occurred_at.CopyFrom(_ts(datetime(2026, 12, 1, 0, 5, tzinfo=UTC)))
    request.attempts[0].note = "provider accepted the job, then timed out after 30.4 s"
    request.attempts[0].usage.wall_seconds = 30.4
    request.attempts[1].usage.wall_seconds = 1.7
    request.attempts[0].cost_micros = 999  # ignored on input


BILLABLE_CHANGES: dict[str, Callable[[Request], None]] = {
    "model": lambda r: setattr(r, "model", "flux-dev"),
    "outcome": lambda r: (
        setattr(r, "outcome", metering_pb2.REQUEST_OUTCOME_FAILED),
        setattr(r.attempts[1], "succeeded", False),
    ),
    "one attempt fewer": lambda r: r.attempts.pop(0),
    "which attempt delivered": lambda r: (
        setattr(r.attempts[0], "succeeded", True),
        setattr(r.attempts[1], "succeeded", False),
    ),
    "attempt provider": lambda r: setattr(r.attempts[0], "provider_model", "flux-dev"),
    "attempt number": lambda r: setattr(r.attempts[1], "attempt_number", 3),
    "images": lambda r: setattr(r.attempts[1].usage, "images", 2),
    "megapixels": lambda r: setattr(r.attempts[1].usage, "megapixels", 2.0),
    "provider seconds": lambda r: setattr(r.attempts[1].usage, "provider_seconds", 4.0),
    "output tokens": lambda r: setattr(r.attempts[1].usage, "output_tokens", 10),
    "provider job": lambda r: setattr(r.attempts[1].usage, "provider_job_id", "job-2"),
    "line kind": lambda r: setattr(
        r.attempts[0], "kind", metering_pb2.BILLING_LINE_KIND_PROMPT_ENHANCEMENT
    ),
}


def test_every_field_is_billable_or_incidental() -> None:
    """A field added to the request, an attempt or a usage must be classified here and in the
    store, or this fails."""
    request_fields = {f.name for f in Request.DESCRIPTOR.fields}
    assert request_fields == set(BILLABLE_REQUEST_FIELDS) | set(INCIDENTAL_REQUEST_FIELDS)
    attempt_fields = {f.name for f in metering_pb2.BilledAttempt.DESCRIPTOR.fields}
    assert attempt_fields == BILLABLE_ATTEMPT_FIELDS | set(INCIDENTAL_ATTEMPT_FIELDS)
    usage_fields = {f.name for f in image_pb2.Usage.DESCRIPTOR.fields}
    assert usage_fields == BILLABLE_USAGE_FIELDS | set(INCIDENTAL_USAGE_FIELDS)


def test_hash_ignores_incidentals_only() -> None:
    assert content_hash(_changed(_replay)) == content_hash(_request())
    for name, edit in BILLABLE_CHANGES.items():
        assert content_hash(_changed(edit)) != content_hash(_request()), name
    # A usage left with only incidental fields hashes like no usage at all.
    bare = _request()
    bare.attempts[0].usage.Clear()
    only_wall = _request()
    only_wall.attempts[0].usage.Clear()
    only_wall.attempts[0].usage.wall_seconds = 3.0
    assert content_hash(bare) == content_hash(only_wall)


async def test_replay_with_other_trace_and_time_returns_the_stored_record(
    metering: MeteringEnv,
) -> None:
    first = await metering.stub.RecordUsage(_request())
    assert first.created
    replay = await metering.stub.RecordUsage(_changed(_replay))
    assert not replay.created
    assert replay.record == first.record  # the original trace id, time and period stand
    assert (replay.record.trace_id, replay.record.period) == ("1" * 32, "2026-11")
    batch = await metering.stub.BatchRecordUsage(
        metering_pb2.BatchRecordUsageRequest(requests=[_changed(_replay)])
    )
    assert not batch.results[0].created and batch.results[0].record == first.record
    assert _rows(metering, "usage_records") == 1 and _rows(metering, "usage_attempts") == 2


@pytest.mark.parametrize("change", list(BILLABLE_CHANGES))
async def test_other_billable_content_is_refused(metering: MeteringEnv, change: str) -> None:
    await metering.stub.RecordUsage(_request())
    changed = _changed(BILLABLE_CHANGES[change])
    changed.trace_id = "3" * 32
    err = await _error(metering.stub.RecordUsage(changed))
    assert (err.code, err.reason) == (  # type: ignore[attr-defined]
        grpc.StatusCode.ALREADY_EXISTS,
        reasons.IDEMPOTENCY_KEY_REUSED,
    )
    assert _rows(metering, "usage_records") == 1


async def test_rows_hashed_the_old_way_still_match_on_billable_content(
    metering: MeteringEnv,
) -> None:
    original = _request()
    first = await metering.stub.RecordUsage(original)
    with metering.store.engine.begin() as conn:  # as a row written before this change
        conn.execute(
            text("UPDATE usage_records SET content_hash = :h WHERE request_id = 'r1'"),
            {"h": _legacy_hash(original)},
        )
    exact = await metering.stub.RecordUsage(original)
    replay = await metering.stub.RecordUsage(_changed(_replay))
    assert (exact.created, replay.created) == (False, False)
    assert exact.record == first.record and replay.record == first.record
    err = await _error(metering.stub.RecordUsage(_changed(BILLABLE_CHANGES["images"])))
    assert err.reason == reasons.IDEMPOTENCY_KEY_REUSED  # type: ignore[attr-defined]
    with metering.store.engine.connect() as conn:
        stored = conn.execute(text("SELECT content_hash FROM usage_records")).scalar_one()
    assert stored == _legacy_hash(original)  # read, never rewritten
