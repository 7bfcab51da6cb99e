"""MeteringStore: the usage ledger, one short transaction per operation in a worker thread.

Benchmarks and tests can drive it without gRPC:

    store = MeteringStore.open(url, catalog=load_catalog())
    record, created = await store.record_usage(request)   # a RecordUsageRequest
    summary = await store.usage_summary("t_1", "2026-11")
    await store.close()

Transactions run on `imagegate.persistence.DbRunner` (one writer thread for SQLite, with group
commit of concurrent RecordUsage calls; a thread pool for PostgreSQL) with SQL prepared once.
Idempotency lives in the unique (tenant_id, request_id) constraint: the record is inserted with
ON CONFLICT DO NOTHING, so duplicates (also concurrent ones) never create a second row; a
duplicate whose billable content differs (`content_hash`: trace id, time and notes aside) is
refused with IDEMPOTENCY_KEY_REUSED.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import grpc
from sqlalchemy import Engine, Table, and_, case, func, or_, select

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import FieldViolation, ImagegateError, invalid_argument
from imagegate.metering.v1 import metering_pb2
from imagegate.persistence import DbRunner, Tx, make_engine, migrate
from imagegate.persistence.periods import Clock, period_of, to_us, utc_now
from imagegate.pricing import usage_micros
from services.metering.catalog import Catalog
from services.metering.margin import margin_report
from services.metering.models import BilledAttemptRow, UsageRecordRow

DOMAIN = "imagegate.metering"
_T = TypeVar("_T")
_records: Table = cast(Table, UsageRecordRow.__table__)
_attempts: Table = cast(Table, BilledAttemptRow.__table__)
_INSERT_RECORD = (
    "INSERT INTO usage_records (tenant_id, request_id, period, occurred_us, model, provider,"
    " provider_model, outcome, images, pixels, cost_micros, content_hash, record, create_us,"
    " tenant_charge_micros, failed_cost_micros, plan)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (tenant_id, request_id) DO NOTHING RETURNING id"
)
_INSERT_ATTEMPT = (
    "INSERT INTO usage_attempts (record_id, tenant_id, period, attempt_number, provider,"
    " provider_model, succeeded, images, pixels, provider_seconds, input_tokens, output_tokens,"
    " provider_job_id, note, price_id, cost_micros, usage_reported, kind)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_ENHANCEMENT = metering_pb2.BILLING_LINE_KIND_PROMPT_ENHANCEMENT
_EXISTING = "SELECT content_hash, record FROM usage_records WHERE tenant_id = ? AND request_id = ?"


def _pixels(megapixels: float) -> int:
    return round(megapixels * 1_000_000)


# What a replay of the same request may change without changing what is billed: the trace and the
# time of the call that reports it, the adapter's own wall-clock measurement and the free-text
# note on a billable failure. Metering fills cost_micros and price_id itself. The first record
# stands: a replay with another occurred_at counts in the period the original was recorded in.
# Every RecordUsageRequest field is one or the other (a test keeps the lists complete).
BILLABLE_REQUEST_FIELDS = (
    "request_id",
    "tenant_id",
    "model",
    "outcome",
    "attempts",
    "tenant_charge_micros",
    "plan",
)
INCIDENTAL_REQUEST_FIELDS = ("trace_id", "occurred_at")
INCIDENTAL_ATTEMPT_FIELDS = ("note", "cost_micros", "price_id")
INCIDENTAL_USAGE_FIELDS = ("wall_seconds",)
_HASH_DOMAIN = b"imagegate.metering.billable.v2\0"


def billable_content(
    source: metering_pb2.RecordUsageRequest | metering_pb2.UsageRecord,
) -> metering_pb2.RecordUsageRequest:
    """The billable content of a request, or of a stored record (which holds every field of the
    request it came from): key, model, outcome and attempts, without the incidental fields."""
    canonical = metering_pb2.RecordUsageRequest(
        **{name: getattr(source, name) for name in BILLABLE_REQUEST_FIELDS}
    )
    for attempt in canonical.attempts:
        for name in INCIDENTAL_ATTEMPT_FIELDS:
            attempt.ClearField(name)  # type: ignore[arg-type]
        if attempt.HasField("usage"):
            for name in INCIDENTAL_USAGE_FIELDS:
                attempt.usage.ClearField(name)  # type: ignore[arg-type]
            if attempt.usage.ByteSize() == 0:
                attempt.ClearField("usage")
    return canonical


def content_hash(source: metering_pb2.RecordUsageRequest | metering_pb2.UsageRecord) -> str:
    """SHA-256 of the billable content (`billable_content`): a replay of a request with another
    trace id or time has the same hash; other attempts, usage, model or outcome do not.

    Rows written before this hash (which covered the whole request, trace id and time included)
    keep their old hash: `MeteringStore` compares a mismatch against the stored record's own
    billable content, so those rows need no migration.
    """
    canonical = billable_content(source).SerializeToString(deterministic=True)
    return hashlib.sha256(_HASH_DOMAIN + canonical).hexdigest()


class MeteringStore:
    """The ledger over one SQLAlchemy engine (SQLite or PostgreSQL), priced from a catalog."""

    def __init__(
        self, engine: Engine, catalog: Catalog, *, clock: Clock = utc_now, threads: int = 8
    ) -> None:
        self.engine = engine
        self.catalog = catalog
        self.clock = clock
        # SQLite: one thread and one connection for every transaction (no busy waits);
        # PostgreSQL: `threads` threads, each with its own connection.
        self._db = DbRunner(engine, threads=threads, name="metering-db")
        self._q_insert_record = self._db.sql(_INSERT_RECORD)
        self._q_insert_attempt = self._db.sql(_INSERT_ATTEMPT)
        self._q_existing = self._db.sql(_EXISTING)

    @classmethod
    def open(
        cls,
        url: str,
        *,
        catalog: Catalog,
        schema: str = "metering",
        clock: Clock = utc_now,
        threads: int = 8,
    ) -> MeteringStore:
        """Creates the engine, applies the migrations and returns a ready store."""
        engine = make_engine(url, schema=schema, pool_size=threads)
        migrate(
            engine,
            script_location="services.metering:migrations",
            schema=schema,
            version_table="metering_alembic_version",
        )
        return cls(engine, catalog, clock=clock, threads=threads)

    async def close(self) -> None:
        """Stops the worker threads and disposes of the connection pool."""
        self._db.close()
        self.engine.dispose()

    async def _run(self, fn: Callable[..., _T], *args: Any, batch: bool = False) -> _T:
        return await self._db.run(fn, *args, batch=batch)

    def price(
        self, provider: str, provider_model: str, at: datetime | None = None
    ) -> metering_pb2.Price:
        """The catalog entry of a provider's model in force at `at` (default: now);
        FAILED_PRECONDITION PRICE_NOT_FOUND if the model has none."""
        price = self.catalog.book.find(provider, provider_model, at)
        if price is None:
            raise ImagegateError(
                grpc.StatusCode.FAILED_PRECONDITION,
                reasons.PRICE_NOT_FOUND,
                f"the price catalog {self.catalog.version} has no price for"
                f" {provider}/{provider_model}",
                domain=DOMAIN,
                metadata={
                    reasons.META_PROVIDER: provider,
                    reasons.META_PROVIDER_MODEL: provider_model,
                    "catalog_version": self.catalog.version,
                },
            )
        return price

    def price_record(self, request: metering_pb2.RecordUsageRequest) -> metering_pb2.UsageRecord:
        """The ledger record of a request: every billable attempt priced with the catalog entry
        in force when the request was accepted; the tenant charge as the Router committed it."""
        at = request.occurred_at.ToDatetime().replace(tzinfo=UTC)
        record = metering_pb2.UsageRecord(
            tenant_charge_micros=request.tenant_charge_micros,
            plan=request.plan,
            request_id=request.request_id,
            tenant_id=request.tenant_id,
            model=request.model,
            outcome=request.outcome,
            occurred_at=request.occurred_at,
            period=period_of(at),
            trace_id=request.trace_id,
        )
        for attempt in request.attempts:
            price = self.price(attempt.provider, attempt.provider_model, at)
            priced = record.attempts.add()
            priced.CopyFrom(attempt)
            priced.price_id = price.id
            priced.cost_micros = usage_micros(price, attempt.usage)
            record.cost_micros += priced.cost_micros
            # A prompt enhancement is a provider cost, never a failed attempt.
            if not attempt.succeeded and attempt.kind != _ENHANCEMENT:
                record.failed_cost_micros += priced.cost_micros
            if attempt.succeeded:
                record.provider = attempt.provider
                record.provider_model = attempt.provider_model
                record.images = attempt.usage.images
                record.megapixels = attempt.usage.megapixels
        return record

    # ---- async API ----

    async def record_usage(
        self, request: metering_pb2.RecordUsageRequest
    ) -> tuple[metering_pb2.UsageRecord, bool]:
        """Stores a request's usage once; (record, created)."""
        return await self._run(self.record_usage_sync, request, batch=True)

    async def usage_summary(self, tenant_id: str, period: str) -> metering_pb2.UsageSummary:
        """Totals of a tenant's period, grouped by provider and model."""
        return await self._run(self.usage_summary_sync, tenant_id, period)

    async def margin_report(
        self, period: str, plan_prices: Mapping[str, int]
    ) -> metering_pb2.MarginReport:
        """The month's margin report (services.metering.margin)."""
        return await self._run(margin_report, self.engine, period, plan_prices)

    async def list_records(
        self, tenant_id: str, period: str, page_size: int, page_token: str
    ) -> tuple[list[metering_pb2.UsageRecord], str]:
        """One page of records, newest first, and the next page token."""
        return await self._run(self.list_records_sync, tenant_id, period, page_size, page_token)

    # ---- synchronous operations ----

    def record_usage_sync(
        self, request: metering_pb2.RecordUsageRequest
    ) -> tuple[metering_pb2.UsageRecord, bool]:
        """See `record_usage`."""
        record = self.price_record(request)
        digest = content_hash(request)
        occurred_us = to_us(record.occurred_at.ToDatetime().replace(tzinfo=UTC))
        with self._db.tx() as tx:
            inserted = tx.one(
                self._q_insert_record,
                (
                    record.tenant_id,
                    record.request_id,
                    record.period,
                    occurred_us,
                    record.model,
                    record.provider,
                    record.provider_model,
                    record.outcome,
                    record.images,
                    _pixels(record.megapixels),
                    record.cost_micros,
                    digest,
                    record.SerializeToString(deterministic=True),
                    to_us(self.clock()),
                    record.tenant_charge_micros,
                    record.failed_cost_micros,
                    record.plan,
                ),
            )
            if inserted is None:
                return self._existing(tx, request, digest), False
            record_id = inserted[0]
            if record.attempts:
                tx.many(
                    self._q_insert_attempt,
                    [
                        (
                            record_id,
                            record.tenant_id,
                            record.period,
                            a.attempt_number,
                            a.provider,
                            a.provider_model,
                            a.succeeded,
                            a.usage.images,
                            _pixels(a.usage.megapixels),
                            a.usage.provider_seconds,
                            a.usage.input_tokens,
                            a.usage.output_tokens,
                            a.usage.provider_job_id,
                            a.note,
                            a.price_id,
                            a.cost_micros,
                            a.usage_reported,
                            a.kind,
                        )
                        for a in record.attempts
                    ],
                )
        return record, True

    def _existing(
        self, tx: Tx, request: metering_pb2.RecordUsageRequest, digest: str
    ) -> metering_pb2.UsageRecord:
        stored_hash, stored = tx.one(self._q_existing, (request.tenant_id, request.request_id))
        record = metering_pb2.UsageRecord.FromString(bytes(stored))
        # A row hashed the old way (whole request) differs from every new hash: decide on the
        # stored record's billable content instead.
        if stored_hash != digest and content_hash(record) != digest:
            raise ImagegateError(
                grpc.StatusCode.ALREADY_EXISTS,
                reasons.IDEMPOTENCY_KEY_REUSED,
                f"request_id {request.request_id!r} was already recorded with different content",
                domain=DOMAIN,
                metadata={"request_id": request.request_id, "tenant_id": request.tenant_id},
            )
        return record

    def usage_summary_sync(self, tenant_id: str, period: str) -> metering_pb2.UsageSummary:
        """See `usage_summary`."""
        r, a = _records.c, _attempts.c
        with self.engine.begin() as conn:
            totals = conn.execute(
                select(
                    func.count(),
                    func.coalesce(func.sum(r.images), 0),
                    func.coalesce(func.sum(r.pixels), 0),
                    func.coalesce(func.sum(r.cost_micros), 0),
                    func.coalesce(func.sum(r.tenant_charge_micros), 0),
                    func.coalesce(func.sum(r.failed_cost_micros), 0),
                ).where(r.tenant_id == tenant_id, r.period == period)
            ).one()
            delivered_images = func.sum(case((a.succeeded, a.images), else_=0))
            delivered_pixels = func.sum(case((a.succeeded, a.pixels), else_=0))
            groups = conn.execute(
                select(
                    a.provider,
                    a.provider_model,
                    func.count(),
                    func.coalesce(delivered_images, 0),
                    func.coalesce(delivered_pixels, 0),
                    func.coalesce(func.sum(a.cost_micros), 0),
                    func.coalesce(func.sum(case((a.succeeded, 0), else_=1)), 0),
                    func.coalesce(func.sum(case((a.succeeded, 0), else_=a.cost_micros)), 0),
                )
                .where(a.tenant_id == tenant_id, a.period == period)
                .group_by(a.provider, a.provider_model)
                .order_by(a.provider, a.provider_model)
            ).all()
        return metering_pb2.UsageSummary(
            tenant_id=tenant_id,
            period=period,
            requests=int(totals[0]),
            images=int(totals[1]),
            megapixels=int(totals[2]) / 1_000_000,
            cost_micros=int(totals[3]),
            tenant_charge_micros=int(totals[4]),
            failed_cost_micros=int(totals[5]),
            groups=[
                metering_pb2.UsageGroup(
                    provider=g[0],
                    provider_model=g[1],
                    attempts=int(g[2]),
                    images=int(g[3]),
                    megapixels=int(g[4]) / 1_000_000,
                    cost_micros=int(g[5]),
                    failed_attempts=int(g[6]),
                    failed_cost_micros=int(g[7]),
                )
                for g in groups
            ],
        )

    def list_records_sync(
        self, tenant_id: str, period: str, page_size: int, page_token: str
    ) -> tuple[list[metering_pb2.UsageRecord], str]:
        """See `list_records`."""
        r = _records.c
        query = select(r.id, r.occurred_us, r.record).where(
            r.tenant_id == tenant_id, r.period == period
        )
        if page_token:
            after_us, after_id = decode_page_token(page_token, tenant_id, period)
            query = query.where(
                or_(r.occurred_us < after_us, and_(r.occurred_us == after_us, r.id < after_id))
            )
        query = query.order_by(r.occurred_us.desc(), r.id.desc()).limit(page_size + 1)
        with self.engine.begin() as conn:
            rows = conn.execute(query).all()
        more = len(rows) > page_size
        rows = rows[:page_size]
        records = [metering_pb2.UsageRecord.FromString(row.record) for row in rows]
        token = (
            encode_page_token(tenant_id, period, rows[-1].occurred_us, rows[-1].id) if more else ""
        )
        return records, token


def encode_page_token(tenant_id: str, period: str, occurred_us: int, row_id: int) -> str:
    """Opaque token: where the previous page stopped, bound to its tenant and period."""
    raw = json.dumps({"t": tenant_id, "p": period, "o": occurred_us, "i": row_id}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, tenant_id: str, period: str) -> tuple[int, int]:
    """(occurred_us, id) of a token; INVALID_ARGUMENT when malformed or from another listing."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if data["t"] != tenant_id or data["p"] != period:
            raise ValueError("token from another listing")
        return int(data["o"]), int(data["i"])
    except (ValueError, KeyError, TypeError) as err:
        raise invalid_argument(
            [FieldViolation("page_token", "not a token from a previous page of this listing")],
            domain=DOMAIN,
        ) from err


def current_period(clock: Clock) -> str:
    """The period "now" falls in."""
    return period_of(clock())
