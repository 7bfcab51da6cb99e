"""Reconciliation: a mixed workload through the six emulated providers; each emulator's own bill
(by its provider's rule) equals the ledger's provider cost to the micro-dollar, and the tenant
charges equal what Quota counted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from imagegate.emulators.base import Fault
from imagegate.metering.v1 import metering_pb2
from imagegate.router.v1 import router_pb2
from tests.cost.stack import CostStack, cost_stack

# (request id, model alias, providers allowed, width, height, n, fault to inject, where)
WORKLOAD: list[tuple[str, str, list[str], int, int, int, str, str]] = [
    ("fal-1", "flux-schnell", ["fal"], 1024, 768, 1, "", ""),
    ("fal-2", "flux-schnell", ["fal"], 1024, 1024, 2, "", ""),
    ("fal-sdxl", "sdxl", ["fal"], 1024, 1024, 1, "", ""),
    ("rep-1", "flux-schnell", ["replicate"], 1024, 1024, 2, "", ""),
    ("rep-sdxl", "sdxl", ["replicate"], 1024, 1024, 1, "", ""),
    ("bfl-1", "flux-dev", ["bfl"], 1024, 768, 2, "", ""),
    ("bfl-pro", "flux-pro", ["bfl"], 1024, 768, 1, "", ""),
    ("hf-sd21", "sd-2.1", ["huggingface"], 768, 768, 1, "", ""),
    ("hf-flux", "flux-schnell", ["huggingface"], 1024, 1024, 1, "", ""),
    ("oai-1", "gpt-image-1", ["openai"], 1024, 1024, 1, "", ""),
    ("oai-mini", "gpt-image-1-mini", ["openai"], 1024, 1024, 2, "", ""),
    ("tg-1", "flux-schnell", ["together"], 1024, 1024, 1, "", ""),
    ("tg-sdxl", "sdxl", ["together"], 1024, 1024, 2, "", ""),
    # Failures the providers bill (or not), each with what the adapter reports.
    ("bfl-mod", "flux-dev", ["bfl"], 1024, 768, 2, "moderation", "bfl"),
    ("fal-expired", "flux-schnell", ["fal", "together"], 1024, 768, 1, "expired_url", "fal"),
    ("fal-500", "flux-schnell", ["fal", "together"], 1024, 768, 1, "error_500", "fal"),
    ("rep-sdxl-mod", "sdxl", ["replicate"], 1024, 1024, 1, "moderation", "replicate"),
    ("oai-mod", "gpt-image-1", ["openai"], 1024, 1024, 1, "moderation", "openai"),
    ("hf-mod", "sd-2.1", ["huggingface"], 768, 768, 1, "moderation", "huggingface"),
    ("tg-mod", "flux-schnell", ["together"], 1024, 1024, 1, "moderation", "together"),
]


async def _run(stack: CostStack) -> dict[str, Any]:
    outcomes: dict[str, Any] = {}
    for rid, model, providers, width, height, n, fault, where in WORKLOAD:
        if fault:
            stack.emulators[where].faults.set(Fault(fault, count=1))
        try:
            outcomes[rid] = await stack.router.GenerateImage(
                router_pb2.GenerateImageRequest(
                    request_id=rid,
                    prompt="a lighthouse at dusk",
                    model=model,
                    allowed_providers=providers,
                    width=width,
                    height=height,
                    num_images=n,
                ),
                metadata=stack.auth,
                timeout=30,
            )
        except grpc.aio.AioRpcError as err:
            outcomes[rid] = err
        for emulator in stack.emulators.values():
            emulator.faults.clear()
    return outcomes


async def _records(stack: CostStack) -> list[metering_pb2.UsageRecord]:
    records, token = [], ""
    while True:
        page = await stack.router.ListUsageRecords(
            router_pb2.ListUsageRecordsRequest(page_size=500, page_token=token),
            metadata=stack.auth,
            timeout=10,
        )
        records.extend(page.records)
        token = page.next_page_token
        if not token:
            return records


@pytest.mark.timeout(120)
async def test_every_emulator_bill_equals_the_ledger_to_the_micro_dollar(tmp_path: Path) -> None:
    async with cost_stack(tmp_path, f"sqlite:///{tmp_path / 'm.db'}") as stack:
        outcomes = await _run(stack)
        records = await _records(stack)
        quota = (
            await stack.router.GetQuota(router_pb2.GetQuotaRequest(), metadata=stack.auth)
        ).quota
        summary = (
            await stack.router.GetUsageSummary(
                router_pb2.GetUsageSummaryRequest(), metadata=stack.auth
            )
        ).summary
    succeeded = {
        rid for rid, o in outcomes.items() if isinstance(o, router_pb2.GenerateImageResponse)
    }
    assert succeeded >= {w[0] for w in WORKLOAD if not w[6]}, outcomes
    assert {"fal-expired", "fal-500"} <= succeeded  # both failed over
    ledger: dict[str, int] = {}
    for record in records:
        for attempt in record.attempts:
            ledger[attempt.provider] = ledger.get(attempt.provider, 0) + attempt.cost_micros
    bills = {name: emulator.billed_micros() for name, emulator in stack.emulators.items()}
    assert all(bills[p] > 0 for p in bills), bills
    assert {p: ledger.get(p, 0) for p in bills} == bills
    # Provider cost in the ledger = the providers' bills; tenant charge = what Quota counted.
    assert summary.cost_micros == sum(bills.values())
    assert summary.tenant_charge_micros == quota.used_cost_micros > 0
    assert quota.reserved_images == 0
    delivered = sum(len(o.images) for o in outcomes.values() if hasattr(o, "images"))
    assert quota.used_images == delivered == summary.images
    by_id = {r.request_id: r for r in records}
    # The tenant pays for delivered images only; failed attempts are the gateway's cost.
    for rid in succeeded:
        assert by_id[rid].tenant_charge_micros == outcomes[rid].cost_micros
        won = [a for a in by_id[rid].attempts if a.succeeded]
        assert by_id[rid].tenant_charge_micros == won[0].cost_micros
    # BFL: one of two tasks moderated; the sibling ran and is billed, as BFL reported it.
    [bfl_failed] = by_id["bfl-mod"].attempts
    assert bfl_failed.usage.images == 1 and bfl_failed.usage_reported
    assert bfl_failed.cost_micros == 25_000 and by_id["bfl-mod"].tenant_charge_micros == 0
    # fal ran the job whose result URL expired: billed by its output, then Together delivered.
    expired = by_id["fal-expired"]
    assert [(a.provider, a.succeeded) for a in expired.attempts] == [
        ("fal", False),
        ("together", True),
    ]
    assert expired.failed_cost_micros == 3_000 and expired.attempts[0].usage_reported
    # Replicate's per-second SDXL bills the seconds a refused prediction ran.
    [sdxl_failed] = by_id["rep-sdxl-mod"].attempts
    assert sdxl_failed.usage.provider_seconds == pytest.approx(0.4)
    assert sdxl_failed.cost_micros == 390
