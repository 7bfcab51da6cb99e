"""MeteringService servicer: validates requests, prices with the catalog, calls MeteringStore."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import grpc

from imagegate.grpckit import reasons
from imagegate.grpckit.auth import require_admin
from imagegate.grpckit.batch import check_batch_size, run_items
from imagegate.grpckit.errors import FieldViolation, ImagegateError, invalid_argument
from imagegate.metering.v1 import metering_pb2, metering_pb2_grpc
from imagegate.persistence.periods import PERIOD_RE, period_of
from imagegate.pricing import QUALITIES, quote_micros
from services.metering.store import DOMAIN, MeteringStore

MAX_ID = 255
MAX_DIMENSION = 16_384
MAX_IMAGES = 16
DEFAULT_PAGE = 50
MAX_PAGE = 500


log = logging.getLogger(__name__)


def _check(violations: list[FieldViolation]) -> None:
    if violations:
        raise invalid_argument(violations, domain=DOMAIN)


def _require(violations: list[FieldViolation], field: str, value: str, limit: int = MAX_ID) -> None:
    if not value:
        violations.append(FieldViolation(field, "required"))
    elif len(value) > limit:
        violations.append(FieldViolation(field, f"at most {limit} characters"))


def validate_record(request: metering_pb2.RecordUsageRequest) -> list[FieldViolation]:
    """Every problem of a RecordUsageRequest, as field violations."""
    v: list[FieldViolation] = []
    _require(v, "request_id", request.request_id)
    _require(v, "tenant_id", request.tenant_id)
    if len(request.model) > MAX_ID:
        v.append(FieldViolation("model", f"at most {MAX_ID} characters"))
    if request.outcome == metering_pb2.REQUEST_OUTCOME_UNSPECIFIED:
        v.append(FieldViolation("outcome", "required: SUCCEEDED or FAILED"))
    if not request.HasField("occurred_at"):
        v.append(FieldViolation("occurred_at", "required: when the Router accepted the request"))
    numbers: set[int] = set()
    succeeded = 0
    for i, attempt in enumerate(request.attempts):
        path = f"attempts[{i}]"
        _require(v, f"{path}.provider", attempt.provider, 64)
        _require(v, f"{path}.provider_model", attempt.provider_model)
        if attempt.attempt_number < 1 or attempt.attempt_number in numbers:
            v.append(FieldViolation(f"{path}.attempt_number", "unique and at least 1"))
        numbers.add(attempt.attempt_number)
        usage = attempt.usage
        if usage.images < 0:
            v.append(FieldViolation(f"{path}.usage.images", "at least 0"))
        for name in ("megapixels", "provider_seconds", "wall_seconds"):
            value = getattr(usage, name)
            if not math.isfinite(value) or value < 0:
                v.append(FieldViolation(f"{path}.usage.{name}", "a finite number >= 0"))
        if usage.input_tokens < 0 or usage.output_tokens < 0:
            v.append(FieldViolation(f"{path}.usage", "token counts must be >= 0"))
        if len(attempt.note) > 500:
            v.append(FieldViolation(f"{path}.note", "at most 500 characters"))
        succeeded += attempt.succeeded
    if request.outcome == metering_pb2.REQUEST_OUTCOME_SUCCEEDED and succeeded != 1:
        v.append(
            FieldViolation("attempts", "a SUCCEEDED request has exactly one succeeded attempt")
        )
    if request.outcome == metering_pb2.REQUEST_OUTCOME_FAILED and succeeded:
        v.append(FieldViolation("attempts", "a FAILED request has no succeeded attempt"))
    return v


def _item_error(err: Exception) -> metering_pb2.ItemError:
    """What one failed batch item reports: the code, reason and message its single RPC would."""
    if isinstance(err, ImagegateError):
        return metering_pb2.ItemError(
            code=err.code.value[0], reason=err.reason, message=err.message
        )
    log.error("unexpected error in a batch item", exc_info=err)
    return metering_pb2.ItemError(
        code=grpc.StatusCode.INTERNAL.value[0], reason=reasons.INTERNAL, message="internal error"
    )


class MeteringServicer(metering_pb2_grpc.MeteringServiceServicer):
    """The MeteringService RPCs."""

    def __init__(
        self,
        store: MeteringStore,
        *,
        admin_token: str = "",
        plan_prices: Mapping[str, int] | None = None,
    ) -> None:
        self._store = store
        self._admin_token = admin_token
        self._plan_prices = dict(plan_prices or {})
        # The catalog is immutable for the life of the process: build its answer once.
        self._list_prices = metering_pb2.ListPricesResponse(
            catalog_version=store.catalog.version, prices=store.catalog.prices
        )

    def _period(self, violations: list[FieldViolation], period: str) -> str:
        if not period:
            return period_of(self._store.clock())
        if not PERIOD_RE.match(period):
            violations.append(FieldViolation("period", "a calendar month YYYY-MM"))
        return period

    async def RecordUsage(
        self, request: metering_pb2.RecordUsageRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.RecordUsageResponse:
        """Stores a request's usage once (idempotent on tenant and request_id)."""
        record, created = await self._record(request)
        return metering_pb2.RecordUsageResponse(record=record, created=created)

    async def BatchRecordUsage(
        self, request: metering_pb2.BatchRecordUsageRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.BatchRecordUsageResponse:
        """Records every item as RecordUsage would; per-item results in request order."""
        check_batch_size(len(request.requests), domain=DOMAIN)
        outcomes = await run_items(
            list(request.requests), lambda r: f"{r.tenant_id}\0{r.request_id}", self._record
        )
        response = metering_pb2.BatchRecordUsageResponse()
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                response.results.add(error=_item_error(outcome))
            else:
                response.results.add(record=outcome[0], created=outcome[1])
        return response

    async def _record(
        self, request: metering_pb2.RecordUsageRequest
    ) -> tuple[metering_pb2.UsageRecord, bool]:
        _check(validate_record(request))
        return await self._store.record_usage(request)

    async def GetUsageSummary(
        self, request: metering_pb2.GetUsageSummaryRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.GetUsageSummaryResponse:
        """Totals of a tenant's month, grouped by provider and model."""
        violations: list[FieldViolation] = []
        _require(violations, "tenant_id", request.tenant_id)
        period = self._period(violations, request.period)
        _check(violations)
        summary = await self._store.usage_summary(request.tenant_id, period)
        return metering_pb2.GetUsageSummaryResponse(summary=summary)

    async def ListUsageRecords(
        self, request: metering_pb2.ListUsageRecordsRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.ListUsageRecordsResponse:
        """One page of a tenant's records, newest first."""
        violations: list[FieldViolation] = []
        _require(violations, "tenant_id", request.tenant_id)
        period = self._period(violations, request.period)
        if request.page_size < 0 or request.page_size > MAX_PAGE:
            violations.append(
                FieldViolation("page_size", f"0 (default {DEFAULT_PAGE}) to {MAX_PAGE}")
            )
        _check(violations)
        records, token = await self._store.list_records(
            request.tenant_id, period, request.page_size or DEFAULT_PAGE, request.page_token
        )
        return metering_pb2.ListUsageRecordsResponse(records=records, next_page_token=token)

    async def QuotePrice(
        self, request: metering_pb2.QuotePriceRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.QuotePriceResponse:
        """The expected price of a generation, from the same function that prices usage."""
        violations: list[FieldViolation] = []
        _require(violations, "provider", request.provider, 64)
        _require(violations, "provider_model", request.provider_model)
        for name in ("width", "height"):
            if not 1 <= getattr(request, name) <= MAX_DIMENSION:
                violations.append(FieldViolation(name, f"1 to {MAX_DIMENSION} pixels"))
        if not 1 <= request.num_images <= MAX_IMAGES:
            violations.append(FieldViolation("num_images", f"1 to {MAX_IMAGES}"))
        if request.HasField("steps") and request.steps < 1:
            violations.append(FieldViolation("steps", "at least 1 when set"))
        if request.quality and request.quality not in QUALITIES:
            violations.append(FieldViolation("quality", f"one of {', '.join(QUALITIES)}"))
        _check(violations)
        price = self._store.price(request.provider, request.provider_model)
        cost = quote_micros(
            price,
            width=request.width,
            height=request.height,
            num_images=request.num_images,
            steps=request.steps if request.HasField("steps") else None,
            quality=request.quality,
        )
        return metering_pb2.QuotePriceResponse(cost_micros=cost, price=price)

    async def GetMarginReport(
        self, request: metering_pb2.GetMarginReportRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.GetMarginReportResponse:
        """The month's revenue, provider cost and margin per plan and tenant (admin only)."""
        require_admin(context, self._admin_token, domain=DOMAIN)
        violations: list[FieldViolation] = []
        period = self._period(violations, request.period)
        _check(violations)
        report = await self._store.margin_report(period, self._plan_prices)
        return metering_pb2.GetMarginReportResponse(report=report)

    async def ListPrices(
        self, request: metering_pb2.ListPricesRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.ListPricesResponse:
        """The whole catalog and its version."""
        return self._list_prices
