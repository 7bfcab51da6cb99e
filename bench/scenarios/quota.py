"""Scenario 4: reserve+commit/s (Quota) and ledger writes/s (Metering) on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace

from bench.clients import channels, create_tenant
from bench.context import Ctx, Result, Target
from bench.loadgen import Call
from bench.pg import start_cluster
from bench.procs import base_env, start_services_retrying
from bench.scenarios.common import interleaved, note_deaths, rss_table
from imagegate.common.v1 import image_pb2
from imagegate.grpckit.security import transport_from_env
from imagegate.grpckit.service_auth import with_metadata
from imagegate.metering.v1 import metering_pb2, metering_pb2_grpc
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc
from imagegate.settlement.batching import Batcher
from imagegate.settlement.parts import COMMIT, Part
from services.router.reserve_batch import ReserveBatcher

GOALS = {"sqlite": 2000.0, "postgresql": 1500.0}
# Tenants the "spread" variant cycles through (a gateway serves many tenants at once).
SPREAD = 16

Reserve = Callable[[str], Awaitable[str]]
Commit = Callable[[str], Awaitable[None]]
Record = Callable[[str], Awaitable[None]]


def reserve_commit(reserve: Reserve, commit: Commit, tenants: list[str]) -> Call:
    """One reservation then its commit, for tenant n mod len(tenants)."""

    async def call(n: int) -> float | None:
        await commit(await reserve(tenants[n % len(tenants)]))
        return None

    return call


def usage_request(tenant_id: str, now: Timestamp) -> metering_pb2.RecordUsageRequest:
    """A new ledger record: one successful local attempt under a fresh request_id."""
    return metering_pb2.RecordUsageRequest(
        request_id=f"bench-{uuid.uuid4().hex}",
        tenant_id=tenant_id,
        model="local",
        outcome=metering_pb2.REQUEST_OUTCOME_SUCCEEDED,
        occurred_at=now,
        attempts=[
            metering_pb2.BilledAttempt(
                provider="local",
                provider_model="imagegate-local-v1",
                attempt_number=1,
                succeeded=True,
                usage=image_pb2.Usage(images=1, megapixels=0.004),
            )
        ],
    )


def _now() -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(datetime.now(UTC))
    return ts


async def _measure(
    ctx: Ctx,
    result: Result,
    backend: str,
    how: str,
    reserve: Reserve,
    commit: Commit,
    record: Record,
    tenants: list[str],
    rounds: tuple[Reserve, Commit] | None = None,
) -> None:
    hot, spread = tenants[:1], tenants
    for c in (1, 16):

        async def rec(n: int) -> float | None:
            await record(tenants[n % len(tenants)])
            return None

        paths = {"reserve+commit, 1 tenant": reserve_commit(reserve, commit, hot)}
        if c > 1:
            paths[f"reserve+commit, {SPREAD} tenants"] = reserve_commit(reserve, commit, spread)
            if rounds is not None:
                paths[f"reserve+commit, {SPREAD} tenants, in the Router's rounds"] = reserve_commit(
                    *rounds, spread
                )
        paths["record_usage"] = rec
        stats = await interleaved(
            paths,
            concurrency=c,
            requests=ctx.n(4000 if c == 16 else 2000, 16),
            rounds=1,
            duration=None if ctx.smoke else 3.0,
            warmup=ctx.n(40, 2),
        )
        for s in stats.values():
            row = s.summary()
            row["label"] = f"{s.label} ({backend}, {how})"
            result.runs.append(row)


async def over_grpc(ctx: Ctx, result: Result, backend: str, urls: dict[str, str]) -> None:
    """Quota and Metering as processes, called over gRPC like the Router calls them."""
    env = base_env(ctx.data_dir(f"quota-{backend}"), IMAGEGATE_ADMIN_TOKEN=ctx.admin_token, **urls)
    services = await start_services_retrying(
        env, log_dir=ctx.logs / f"quota-{backend}", names=["quota", "metering"]
    )
    chans: list[grpc.aio.Channel] = []
    try:
        tenants = [
            (
                await create_tenant(
                    services.address("quota"), ctx.admin_token, f"b{i}", "enterprise"
                )
            )[0]
            for i in range(SPREAD)
        ]
        chans = channels(services.address("quota"), 4) + channels(services.address("metering"), 4)
        # Called like the Router calls them: with the stack's service token.
        service = transport_from_env(services.env).outbound_metadata()
        quota = [with_metadata(quota_pb2_grpc.QuotaServiceStub(c), service) for c in chans[:4]]
        metering = [
            with_metadata(metering_pb2_grpc.MeteringServiceStub(c), service) for c in chans[4:]
        ]
        now = _now()
        turn = iter(range(10**12))

        async def reserve(tenant: str) -> str:
            resp = await quota[next(turn) % 4].ReserveQuota(
                quota_pb2.ReserveQuotaRequest(
                    request_id=f"bench-{uuid.uuid4().hex}",
                    tenant_id=tenant,
                    images=1,
                    megapixels=0.004,
                ),
                timeout=30,
            )
            return str(resp.reservation.id)

        async def commit(reservation_id: str) -> None:
            await quota[next(turn) % 4].CommitReservation(
                quota_pb2.CommitReservationRequest(
                    reservation_id=reservation_id, images=1, megapixels=0.004
                ),
                timeout=30,
            )

        async def record(tenant: str) -> None:
            await metering[next(turn) % 4].RecordUsage(usage_request(tenant, now), timeout=30)

        # The same calls as the Router sends them: the reserves of requests that wait together
        # in one BatchReserveQuota, the commits in one BatchCommitReservations.
        reserves = ReserveBatcher(quota[0], trace.get_tracer("bench"))
        commits = Batcher(quota[1], metering[0])

        async def reserve_in_round(tenant: str) -> str:
            resp = await reserves.reserve(
                quota_pb2.ReserveQuotaRequest(
                    request_id=f"bench-{uuid.uuid4().hex}",
                    tenant_id=tenant,
                    images=1,
                    megapixels=0.004,
                ),
                30,
            )
            return str(resp.reservation.id)

        async def commit_in_round(reservation_id: str) -> None:
            message = quota_pb2.CommitReservationRequest(
                reservation_id=reservation_id, images=1, megapixels=0.004
            )
            await commits.send(Part(0, COMMIT, b"", message=message), 30)

        await _measure(
            ctx,
            result,
            backend,
            "gRPC",
            reserve,
            commit,
            record,
            tenants,
            rounds=(reserve_in_round, commit_in_round),
        )
        await reserves.close()
        await commits.close()
        result.extra[f"peak_rss_mb_{backend}"] = rss_table(list(services.procs.values()))
    finally:
        for ch in chans:
            await ch.close()
        note_deaths(result, list(services.procs.values()))
        await services.stop()


async def direct_store(ctx: Ctx, result: Result, backend: str, urls: dict[str, str]) -> None:
    """The same operations on QuotaStore / MeteringStore in this process (no gRPC, no service)."""
    # Imported here: a store module that is mid-refactor should cost only this part of the run.
    try:
        from services.metering.catalog import load_catalog
        from services.metering.store import MeteringStore
        from services.quota.plans import load_plans
        from services.quota.store import QuotaStore, ReserveArgs
    except ImportError as err:
        result.notes.append(f"direct store calls skipped: {err}")
        return
    qstore = await asyncio.to_thread(
        QuotaStore.open, urls["QUOTA_DATABASE_URL"], plans=load_plans(), threads=16
    )
    mstore = await asyncio.to_thread(
        MeteringStore.open, urls["METERING_DATABASE_URL"], catalog=load_catalog(), threads=16
    )
    try:
        tenants = [
            (
                await qstore.create_tenant(
                    request_id=f"bench-{uuid.uuid4().hex}", name=f"d{i}", plan="enterprise"
                )
            ).id
            for i in range(SPREAD)
        ]
        now = _now()

        async def reserve(tenant: str) -> str:
            res = await qstore.reserve(
                ReserveArgs(
                    request_id=f"bench-{uuid.uuid4().hex}",
                    tenant_id=tenant,
                    images=1,
                    megapixels=0.004,
                )
            )
            return str(res.reservation.id)

        async def commit(reservation_id: str) -> None:
            await qstore.commit(reservation_id, images=1, megapixels=0.004)

        async def record(tenant: str) -> None:
            await mstore.record_usage(usage_request(tenant, now))

        await _measure(ctx, result, backend, "direct store", reserve, commit, record, tenants)
    finally:
        await qstore.close()
        await mstore.close()


async def run(ctx: Ctx) -> Result:
    """Each backend: over gRPC to the services, then the stores called in-process."""
    result = Result(
        "4. Quota and metering",
        "client -> Quota process (ReserveQuota + CommitReservation by tenant id; 'in the "
        "Router's rounds': the Router's own batching clients, BatchReserveQuota and "
        "BatchCommitReservations for calls that wait together) and client -> "
        "Metering process (RecordUsage, fresh request_id), over gRPC on loopback; then the same "
        "calls on QuotaStore / MeteringStore in the bench process ('direct store', fresh "
        "databases). '1 tenant' = one hot quota row; "
        f"'{SPREAD} tenants' = the calls cycle over {SPREAD} tenants. SQLite: WAL, "
        "synchronous=NORMAL. PostgreSQL: throwaway local cluster, fsync and synchronous_commit on",
    )
    cluster = await start_cluster()
    urls: dict[str, dict[str, dict[str, str]]] = {}
    for how in ("gRPC", "direct store"):
        folder = ctx.data_dir(f"sqlite-{how.replace(' ', '-')}")
        urls.setdefault("sqlite", {})[how] = {
            "QUOTA_DATABASE_URL": f"sqlite:///{folder / 'quota.db'}",
            "METERING_DATABASE_URL": f"sqlite:///{folder / 'metering.db'}",
        }
        if cluster is not None:
            urls.setdefault("postgresql", {})[how] = {
                "QUOTA_DATABASE_URL": cluster.create_database(),
                "METERING_DATABASE_URL": cluster.create_database(),
            }
    if cluster is None:
        result.notes.append("no PostgreSQL server binaries (make postgres-bin): PostgreSQL skipped")
    try:
        for backend, by_how in urls.items():
            await over_grpc(ctx, result, backend, by_how["gRPC"])
            await direct_store(ctx, result, backend, by_how["direct store"])
    finally:
        if cluster is not None:
            await asyncio.to_thread(cluster.stop)
    _judge(result)
    return result


def _best(result: Result, backend: str, how: str) -> tuple[float, str] | None:
    rows = [
        r
        for r in result.runs
        if r["label"].startswith("reserve+commit") and r["label"].endswith(f"({backend}, {how})")
    ]
    if not rows:
        return None
    top: dict[str, Any] = max(rows, key=lambda r: r["rps"])
    what = ", ".join(top["label"].split(" (")[0].split(", ")[1:])
    return float(top["rps"]), f"{what}, c={top['concurrency']}"


def _judge(result: Result) -> None:
    for backend, goal in GOALS.items():
        name = f"Quota reserve+commit/s on {backend}"
        grpc_best = _best(result, backend, "gRPC")
        direct = _best(result, backend, "direct store")
        if grpc_best is None:
            result.targets.append(Target(name, f">= {goal:,.0f}/s", "not measured", None))
            continue
        direct_text = "n/a" if direct is None else f"{direct[0]:,.0f}/s ({direct[1]})"
        result.targets.append(
            Target(
                name,
                f">= {goal:,.0f}/s",
                f"{grpc_best[0]:,.0f}/s through the Quota service ({grpc_best[1]}); "
                f"store alone {direct_text}",
                grpc_best[0] >= goal,
            )
        )
