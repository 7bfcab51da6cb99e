"""Scenario 4: reserve+commit/s (Quota) and ledger writes/s (Metering) on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from bench.clients import channels, create_tenant
from bench.context import Ctx, Result, Target
from bench.loadgen import Call
from bench.pg import start_cluster
from bench.procs import base_env, start_services
from bench.scenarios.common import interleaved, note_deaths, rss_table
from bench.stats import RunStats
from imagegate.common.v1 import image_pb2
from imagegate.metering.v1 import metering_pb2, metering_pb2_grpc
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc

GOALS = {"sqlite": 2000.0, "postgresql": 1500.0}


def reserve_commit(chans: list, tenant_id: str) -> Call:
    """ReserveQuota then CommitReservation, as the Router does for one image."""
    stubs = [quota_pb2_grpc.QuotaServiceStub(c) for c in chans]

    async def call(n: int) -> float | None:
        stub = stubs[n % len(stubs)]
        res = await stub.ReserveQuota(
            quota_pb2.ReserveQuotaRequest(
                request_id=f"bench-{uuid.uuid4().hex}",
                tenant_id=tenant_id,
                images=1,
                megapixels=0.004,
            ),
            timeout=30,
        )
        await stub.CommitReservation(
            quota_pb2.CommitReservationRequest(
                reservation_id=res.reservation.id, images=1, megapixels=0.004
            ),
            timeout=30,
        )
        return None

    return call


def record_usage(chans: list, tenant_id: str) -> Call:
    """One RecordUsage (a new ledger record with one billed attempt)."""
    stubs = [metering_pb2_grpc.MeteringServiceStub(c) for c in chans]
    now = Timestamp()
    now.FromDatetime(datetime.now(UTC))

    async def call(n: int) -> float | None:
        await stubs[n % len(stubs)].RecordUsage(usage_request(tenant_id, now), timeout=30)
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


async def run(ctx: Ctx) -> Result:
    """Each backend: Quota and Metering processes on it, one hot tenant, concurrency 1 and 16."""
    result = Result(
        "4. Quota and metering",
        "client -> Quota process (ReserveQuota + CommitReservation, one tenant = one hot row) and "
        "client -> Metering process (RecordUsage, new request_id each), over gRPC on loopback; "
        "SQLite (WAL, synchronous=NORMAL) and PostgreSQL (throwaway local cluster, fsync and "
        "synchronous_commit on); rows marked 'direct store' call QuotaStore / MeteringStore "
        "in the bench process (no gRPC) on separate databases",
    )
    cluster = await start_cluster()
    sqlite_dir = ctx.data_dir("quota-direct")
    backends: dict[str, dict[str, str]] = {"sqlite": {}}
    direct_urls: dict[str, dict[str, str]] = {
        "sqlite": {
            "QUOTA_DATABASE_URL": f"sqlite:///{sqlite_dir / 'quota.db'}",
            "METERING_DATABASE_URL": f"sqlite:///{sqlite_dir / 'metering.db'}",
        }
    }
    if cluster is None:
        result.notes.append("no PostgreSQL server binaries (make postgres-bin): PostgreSQL skipped")
    else:
        for into in (backends, direct_urls):
            into["postgresql"] = {
                "QUOTA_DATABASE_URL": cluster.create_database(),
                "METERING_DATABASE_URL": cluster.create_database(),
            }
    best: dict[str, float] = {}
    try:
        for backend, urls in backends.items():
            env = base_env(
                ctx.data_dir(f"quota-{backend}"), IMAGEGATE_ADMIN_TOKEN=ctx.admin_token, **urls
            )
            services = await start_services(
                env, log_dir=ctx.logs / f"quota-{backend}", names=["quota", "metering"]
            )
            try:
                tenant_id, _ = await create_tenant(
                    services.address("quota"), ctx.admin_token, f"bench-{backend}", "enterprise"
                )
                for c in (1, 16):
                    qch = channels(services.address("quota"), 1 if c == 1 else 4)
                    mch = channels(services.address("metering"), 1 if c == 1 else 4)
                    stats = await interleaved(
                        {
                            "reserve+commit": reserve_commit(qch, tenant_id),
                            "record_usage": record_usage(mch, tenant_id),
                        },
                        concurrency=c,
                        requests=ctx.n(3000 if c == 16 else 1500, 16),
                        rounds=1 if ctx.smoke else 2,
                        duration=None if ctx.smoke else 4.0,
                        warmup=ctx.n(50, 2),
                    )
                    for label, s in stats.items():
                        _row(result, s, backend)
                        if label == "reserve+commit":
                            best[backend] = max(best.get(backend, 0.0), s.rps)
                    for ch in (*qch, *mch):
                        await ch.close()
                result.extra[f"peak_rss_mb_{backend}"] = rss_table(list(services.procs.values()))
            finally:
                note_deaths(result, list(services.procs.values()))
                await services.stop()
            await direct_store(ctx, result, backend, direct_urls[backend])
    finally:
        if cluster is not None:
            cluster.stop()
    for backend, goal in GOALS.items():
        name = f"Quota reserve+commit/s on {backend}"
        if backend not in best:
            result.targets.append(Target(name, f">= {goal:,.0f}/s", "not measured", None))
            continue
        direct = max(
            (
                r["rps"]
                for r in result.runs
                if r["label"] == f"reserve+commit, direct store ({backend})"
            ),
            default=None,
        )
        result.targets.append(
            Target(
                name,
                f">= {goal:,.0f}/s",
                f"{best[backend]:,.0f}/s over gRPC (best of concurrency 1 and 16, one hot "
                f"tenant); direct store calls: {'n/a' if direct is None else f'{direct:,.0f}/s'}",
                best[backend] >= goal,
            )
        )
    return result


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
        tenant = await qstore.create_tenant(
            request_id=f"bench-{uuid.uuid4().hex}", name="bench-direct", plan="enterprise"
        )
        now = Timestamp()
        now.FromDatetime(datetime.now(UTC))

        async def reserve_commit_direct(n: int) -> float | None:
            res = await qstore.reserve(
                ReserveArgs(
                    request_id=f"bench-{uuid.uuid4().hex}",
                    tenant_id=tenant.id,
                    images=1,
                    megapixels=0.004,
                )
            )
            await qstore.commit(res.reservation.id, images=1, megapixels=0.004)
            return None

        async def record_usage_direct(n: int) -> float | None:
            await mstore.record_usage(usage_request(tenant.id, now))
            return None

        for c in (1, 16):
            stats = await interleaved(
                {
                    "reserve+commit, direct store": reserve_commit_direct,
                    "record_usage, direct store": record_usage_direct,
                },
                concurrency=c,
                requests=ctx.n(3000 if c == 16 else 1500, 16),
                rounds=1,
                warmup=ctx.n(20, 2),
                duration=None if ctx.smoke else 3.0,
            )
            for s in stats.values():
                _row(result, s, backend)
    finally:
        await qstore.close()
        await mstore.close()


def _row(result: Result, stats: RunStats, backend: str) -> None:
    row = stats.summary()
    row["label"] = f"{stats.label} ({backend})"
    result.runs.append(row)
