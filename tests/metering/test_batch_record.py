"""BatchRecordUsage over real gRPC on loopback, on SQLite and PostgreSQL."""

from __future__ import annotations

import grpc
import pytest

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import parse_rpc_error
from imagegate.metering.v1 import metering_pb2
from tests.metering.conftest import MeteringEnv
from tests.metering.test_metering import _attempt, _request, _rows

SCHNELL = ("fal", "fal-ai/flux/schnell")


async def test_mixed_items_fail_alone_in_request_order_and_replays_are_idempotent(
    metering: MeteringEnv,
) -> None:
    a = _request("a", _attempt(1, *SCHNELL, True, images=1, megapixels=1.0))
    b = _request("b", _attempt(1, *SCHNELL, True, images=1, megapixels=1.0))
    changed = _request("a", _attempt(1, *SCHNELL, True, images=2, megapixels=1.0))
    unpriced = _request("u", _attempt(1, "fal", "no-such-model", True, images=1))
    invalid = _request("", _attempt(1, *SCHNELL, True, images=1))
    resp = await metering.stub.BatchRecordUsage(
        metering_pb2.BatchRecordUsageRequest(requests=[a, unpriced, a, invalid, b, changed])
    )
    assert [r.WhichOneof("result") for r in resp.results] == [
        "record",
        "error",
        "record",
        "error",
        "record",
        "error",
    ]
    first, price, replay, bad, second, reused = resp.results
    assert first.created and not replay.created and second.created
    assert first.record == replay.record and first.record.request_id == "a"
    assert second.record.request_id == "b" and second.record.cost_micros == 3000
    code = grpc.StatusCode
    assert (price.error.code, price.error.reason) == (
        code.FAILED_PRECONDITION.value[0],
        reasons.PRICE_NOT_FOUND,
    )
    assert (bad.error.code, bad.error.reason) == (
        code.INVALID_ARGUMENT.value[0],
        reasons.INVALID_ARGUMENT,
    )
    assert "request_id" in bad.error.message
    assert (reused.error.code, reused.error.reason) == (
        code.ALREADY_EXISTS.value[0],
        reasons.IDEMPOTENCY_KEY_REUSED,
    )
    assert not reused.created
    assert _rows(metering, "usage_records") == 2

    # Replayed in a later batch and by the single RPC: the stored records, nothing added.
    again = await metering.stub.BatchRecordUsage(
        metering_pb2.BatchRecordUsageRequest(requests=[b, a])
    )
    assert [r.record for r in again.results] == [second.record, first.record]
    assert not any(r.created for r in again.results)
    single = await metering.stub.RecordUsage(a)
    assert not single.created and single.record == first.record
    assert _rows(metering, "usage_records") == 2


async def test_many_items_are_stored_in_order(metering: MeteringEnv) -> None:
    reqs = [
        _request(f"r{i}", _attempt(1, *SCHNELL, True, images=1), tenant=f"t{i % 3}")
        for i in range(60)
    ]
    resp = await metering.stub.BatchRecordUsage(metering_pb2.BatchRecordUsageRequest(requests=reqs))
    assert [(r.record.tenant_id, r.record.request_id) for r in resp.results] == [
        (q.tenant_id, q.request_id) for q in reqs
    ]
    assert all(r.created for r in resp.results)
    assert _rows(metering, "usage_records") == 60


@pytest.mark.parametrize("count", [0, 257])
async def test_empty_or_oversized_batch_is_refused(metering: MeteringEnv, count: int) -> None:
    reqs = [_request(f"r{i}", _attempt(1, *SCHNELL, True, images=1)) for i in range(count)]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await metering.stub.BatchRecordUsage(metering_pb2.BatchRecordUsageRequest(requests=reqs))
    err = parse_rpc_error(info.value)
    assert (err.code, err.reason, err.domain) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        reasons.INVALID_ARGUMENT,
        "imagegate.metering",
    )
    assert [v.field for v in err.field_violations] == ["requests"]
