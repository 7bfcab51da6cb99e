"""`imagegate admin prices` and `imagegate admin margin`: the price catalog and unit economics."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from google.protobuf import json_format

from imagegate.cli.connection import Connection
from imagegate.cli.output import as_csv, as_json, table, usd
from imagegate.common.v1 import catalog_pb2
from imagegate.grpckit.channel import create_channel
from imagegate.metering.v1 import metering_pb2, metering_pb2_grpc

COST_ACTIONS = ("prices", "margin")
"""The admin sub-commands served by Metering rather than Quota."""

_UNITS = {
    catalog_pb2.PRICE_UNIT_MEGAPIXEL: "megapixel",
    catalog_pb2.PRICE_UNIT_IMAGE: "image",
    catalog_pb2.PRICE_UNIT_COMPUTE_SECOND: "second",
    catalog_pb2.PRICE_UNIT_TOKEN: "token",
    catalog_pb2.PRICE_UNIT_FREE: "free",
}


async def cmd_admin_costs(args: argparse.Namespace, conn: Connection) -> int:
    """Dispatches `admin prices` and `admin margin` to Metering."""
    async with create_channel(conn.metering_addr, credentials=conn.credentials()) as channel:
        stub = metering_pb2_grpc.MeteringServiceStub(channel)
        if args.admin_action == "prices":
            resp = await stub.ListPrices(metering_pb2.ListPricesRequest(), timeout=10)
            print(render_prices(resp, args.format))
        else:
            report = (
                await stub.GetMarginReport(
                    metering_pb2.GetMarginReportRequest(period=args.month or ""),
                    metadata=conn.admin_metadata(),
                    timeout=30,
                )
            ).report
            print(render_margin(report, args.format))
    return 0


def _unit_price(p: metering_pb2.Price) -> str:
    text = f"{p.unit_price_micros:g} µ$/{_UNITS.get(p.unit, '?')}"
    if p.input_token_price_micros:
        text += f" (+{p.input_token_price_micros:g} µ$/input token)"
    return text


def render_prices(resp: metering_pb2.ListPricesResponse, fmt: str) -> str:
    """Every entry, current and past, with its source, dates and whether it is confirmed."""
    if fmt == "json":
        return as_json(json_format.MessageToDict(resp, preserving_proto_field_name=True))
    headers = [
        "provider",
        "model",
        "price",
        "from",
        "until",
        "status",
        "confirmed",
        "checked",
        "source",
    ]
    rows = [
        [
            p.provider,
            p.provider_model,
            _unit_price(p),
            p.effective_from,
            p.effective_until or "-",
            "past" if p.effective_until else "current",
            "confirmed" if p.confirmed else "UNCONFIRMED",
            p.as_of,
            p.source,
        ]
        for p in resp.prices
    ]
    if fmt == "csv":
        return as_csv(headers, rows)
    confirmed = sum(1 for p in resp.prices if p.confirmed)
    return (
        f"price catalog {resp.catalog_version}: {len(resp.prices)} entries, "
        f"{confirmed} confirmed against the provider's page\n" + table(headers, rows)
    )


_MARGIN_HEADERS = [
    "plan",
    "tenant",
    "tenants",
    "requests",
    "images",
    "revenue_usd",
    "provider_cost_usd",
    "failed_attempt_cost_usd",
    "gross_margin_usd",
    "gross_margin_pct",
    "cost_by_provider",
]


def _margin_row(line: metering_pb2.MarginLine, fmt: Callable[[int], str]) -> list[object]:
    return [
        line.plan or "ALL",
        line.tenant_id or "-",
        line.tenants,
        line.requests,
        line.images,
        fmt(line.revenue_micros),
        fmt(line.provider_cost_micros),
        fmt(line.failed_attempt_cost_micros),
        fmt(line.gross_margin_micros),
        f"{line.gross_margin_percent:.2f}",
        " ".join(f"{c.provider}={fmt(c.cost_micros)}" for c in line.provider_costs),
    ]


def render_margin(report: metering_pb2.MarginReport, fmt: str) -> str:
    """Plan lines, tenant lines and the total, as a table, CSV (exact dollars) or JSON."""
    if fmt == "json":
        return as_json(json_format.MessageToDict(report, preserving_proto_field_name=True))
    lines = [*report.plans, *report.tenants, report.total]
    if fmt == "csv":

        def exact(micros: int) -> str:
            return f"{micros / 1_000_000:.6f}"

        return as_csv(_MARGIN_HEADERS, [_margin_row(line, exact) for line in lines])
    by_plan = table(_MARGIN_HEADERS, [_margin_row(line, usd) for line in report.plans])
    by_tenant = table(_MARGIN_HEADERS, [_margin_row(line, usd) for line in report.tenants])
    total = table(_MARGIN_HEADERS, [_margin_row(report.total, usd)])
    return (
        f"margin for {report.period}\n\nper plan\n{by_plan}\n\nper tenant\n{by_tenant}"
        f"\n\ntotal\n{total}"
    )
