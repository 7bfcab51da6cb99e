"""Migration 0002_cost upgrades a ledger that already holds records (SQLite and PostgreSQL)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from imagegate.metering.v1 import metering_pb2
from imagegate.persistence import make_engine
from services.metering.catalog import load_catalog
from services.metering.store import MeteringStore


def _upgrade_to(engine, revision: str) -> None:  # type: ignore[no-untyped-def]
    cfg = Config()
    cfg.set_main_option("script_location", "services.metering:migrations")
    cfg.set_main_option("version_table", "metering_alembic_version")
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text('CREATE SCHEMA IF NOT EXISTS "metering"'))
            conn.commit()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        conn.commit()


async def test_old_records_keep_their_cost_and_read_as_provider_cost(database_url: str) -> None:
    engine = make_engine(database_url, schema="metering")
    _upgrade_to(engine, "0001")
    old = metering_pb2.UsageRecord(
        request_id="old", tenant_id="t1", period="2026-12", cost_micros=3000
    )
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO usage_records (tenant_id, request_id, period, occurred_us, model,"
                " provider, provider_model, outcome, images, pixels, cost_micros, content_hash,"
                " record, create_us) VALUES ('t1', 'old', '2026-12', 1, 'm', 'fal', 'x', 1, 1,"
                " 786432, 3000, 'h', :record, 1)"
            ),
            {"record": old.SerializeToString()},
        )
    engine.dispose()
    store = MeteringStore.open(database_url, catalog=load_catalog())
    try:
        summary = await store.usage_summary("t1", "2026-12")
        assert (summary.requests, summary.cost_micros) == (1, 3000)
        assert summary.tenant_charge_micros == 0 and summary.failed_cost_micros == 0
        report = await store.margin_report("2026-12", {"pro": 29_000_000})
        assert [(line.plan, line.provider_cost_micros) for line in report.tenants] == [("", 3000)]
    finally:
        await store.close()
