"""Quota gauges: the periodic snapshot reports each tenant's used, limit and remaining images."""

from __future__ import annotations

from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from imagegate.telemetry import setup_telemetry
from services.quota.gauges import QuotaGauges
from services.quota.store import ReserveArgs


def _points(reader: InMemoryMetricReader) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    tenant = str(point.attributes.get("imagegate.tenant_id", ""))
                    out[(metric.name, tenant)] = point.value
    return out


async def test_snapshot_reports_used_and_remaining(quota):
    tenant = await quota.tenant("gauged", plan="free")
    await quota.store.reserve(
        ReserveArgs(request_id="g1", tenant_id=tenant.id, images=3, megapixels=0.0, cost_micros=0)
    )
    reader = InMemoryMetricReader()
    telemetry = setup_telemetry("quota-gauges-test", metric_readers=[reader])
    gauges = QuotaGauges(quota.store, telemetry)
    assert await gauges.refresh() >= 1
    points = _points(reader)
    assert points[("imagegate.quota.used", tenant.id)] == 3
    assert points[("imagegate.quota.limit", tenant.id)] == 50
    assert points[("imagegate.quota.remaining", tenant.id)] == 47
