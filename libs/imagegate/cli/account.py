"""Read-only account commands: models, styles, usage, quota, providers."""

from __future__ import annotations

import argparse

from imagegate.cli.connection import Connection
from imagegate.cli.output import as_csv, as_json, enum_name, proto_dict, table, usd
from imagegate.grpckit.channel import create_channel
from imagegate.router.v1 import router_pb2, router_pb2_grpc


async def cmd_models(args: argparse.Namespace, conn: Connection) -> int:
    """`imagegate models`: the model aliases and who serves them."""
    async with create_channel(conn.router_addr, credentials=conn.credentials()) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        resp = await stub.ListModels(
            router_pb2.ListModelsRequest(), metadata=conn.api_metadata(), timeout=10
        )
    rows = [
        [
            m.alias,
            m.description and m.description[:40],
            m.tier and enum_name(m.tier, "QUALITY_TIER_"),
            ",".join(m.providers) or "-",
            "yes" if m.allowed_by_plan else "no",
            "local stands in" if m.local_substitute else "",
        ]
        for m in resp.models
    ]
    print(table(["model", "description", "tier", "providers", "plan", "note"], rows))
    print(
        "\nplan: whether your plan allows the alias; its tier decides, whoever serves it "
        "(the local stand-in too), with or without provider keys"
    )
    return 0


async def cmd_styles(args: argparse.Namespace, conn: Connection) -> int:
    """`imagegate styles`: the style presets."""
    async with create_channel(conn.router_addr, credentials=conn.credentials()) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        resp = await stub.ListStyles(
            router_pb2.ListStylesRequest(), metadata=conn.api_metadata(), timeout=10
        )
    rows = [
        [
            s.name,
            f"{s.default_width}x{s.default_height}",
            "yes" if s.enhance_by_default else "no",
            s.description,
        ]
        for s in resp.styles
    ]
    print(table(["style", "size", "enhance", "description"], rows))
    return 0


async def cmd_usage(args: argparse.Namespace, conn: Connection) -> int:
    """`imagegate usage`: a month's summary and records as a table, CSV or JSON."""
    async with create_channel(conn.router_addr, credentials=conn.credentials()) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        summary = (
            await stub.GetUsageSummary(
                router_pb2.GetUsageSummaryRequest(period=args.month or ""),
                metadata=conn.api_metadata(),
                timeout=10,
            )
        ).summary
        records = []
        token = ""
        while True:
            page = await stub.ListUsageRecords(
                router_pb2.ListUsageRecordsRequest(
                    period=args.month or "", page_size=500, page_token=token
                ),
                metadata=conn.api_metadata(),
                timeout=10,
            )
            records.extend(page.records)
            token = page.next_page_token
            if not token or len(records) >= args.limit:
                break
    headers = [
        "time",
        "request_id",
        "model",
        "provider",
        "outcome",
        "images",
        "megapixels",
        "tenant_charge_usd",
        "provider_cost_usd",
        "failed_attempt_cost_usd",
    ]
    rows = [
        [
            r.occurred_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
            r.request_id,
            r.model,
            r.provider or "-",
            enum_name(r.outcome, "REQUEST_OUTCOME_"),
            r.images,
            f"{r.megapixels:.3f}",
            f"{r.tenant_charge_micros / 1e6:.6f}",
            f"{r.cost_micros / 1e6:.6f}",
            f"{r.failed_cost_micros / 1e6:.6f}",
        ]
        for r in records[: args.limit]
    ]
    if args.format == "json":
        print(
            as_json(
                {
                    "summary": proto_dict(summary),
                    "records": [proto_dict(r) for r in records[: args.limit]],
                }
            )
        )
    elif args.format == "csv":
        print(as_csv(headers, rows))
    else:
        print(
            f"usage for {summary.period}: {summary.requests} requests, {summary.images} images, "
            f"{summary.megapixels:.3f} MP; tenant charge {usd(summary.tenant_charge_micros)} "
            f"(what your plan counts); provider cost {usd(summary.cost_micros)} "
            f"(what the providers bill the gateway, {usd(summary.failed_cost_micros)} of it for "
            "failed attempts)"
        )
        if summary.groups:
            print(
                table(
                    [
                        "provider",
                        "provider model",
                        "attempts",
                        "failed",
                        "images",
                        "megapixels",
                        "provider cost",
                        "failed cost",
                    ],
                    [
                        [
                            g.provider,
                            g.provider_model,
                            g.attempts,
                            g.failed_attempts,
                            g.images,
                            f"{g.megapixels:.3f}",
                            usd(g.cost_micros),
                            usd(g.failed_cost_micros),
                        ]
                        for g in summary.groups
                    ],
                )
            )
        if rows:
            print()
            print(table(headers, rows))
    return 0


async def cmd_quota(args: argparse.Namespace, conn: Connection) -> int:
    """`imagegate quota`: plan, used, reserved and remaining."""
    async with create_channel(conn.router_addr, credentials=conn.credentials()) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        q = (
            await stub.GetQuota(
                router_pb2.GetQuotaRequest(), metadata=conn.api_metadata(), timeout=10
            )
        ).quota
    if args.json:
        print(as_json(proto_dict(q)))
        return 0
    limit = q.plan.monthly_images or "unlimited"
    remaining = "unlimited" if q.remaining_images < 0 else q.remaining_images
    print(f"tenant     {q.tenant.name} ({q.tenant.id})")
    print(f"plan       {q.plan.id}: {limit} images/month")
    print(f"period     {q.period} (resets {q.reset_time.ToDatetime():%Y-%m-%d %H:%M} UTC)")
    print(
        f"used       {q.used_images} images, {q.used_megapixels:.3f} MP, {usd(q.used_cost_micros)}"
    )
    print(f"reserved   {q.reserved_images} images")
    print(f"remaining  {remaining} images")
    return 0


async def cmd_providers(args: argparse.Namespace, conn: Connection) -> int:
    """`imagegate providers`: breaker state, error rate and latency per provider."""
    async with create_channel(conn.router_addr, credentials=conn.credentials()) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        resp = await stub.GetProviderStatus(
            router_pb2.GetProviderStatusRequest(), metadata=conn.api_metadata(), timeout=10
        )
    rows = [
        [
            p.provider + (f"/{p.provider_model}" if p.provider_model else ""),
            "yes" if p.enabled else "no",
            enum_name(p.state, "BREAKER_STATE_"),
            f"{p.error_rate:.0%}",
            p.window_calls,
            f"{p.latency_p50.ToTimedelta().total_seconds() * 1000:.0f}ms",
            f"{p.latency_p95.ToTimedelta().total_seconds() * 1000:.0f}ms",
            p.in_flight,
            p.trips,
            p.last_error_reason or "-",
        ]
        for p in resp.providers
    ]
    print(
        table(
            [
                "provider",
                "enabled",
                "breaker",
                "errors",
                "calls",
                "p50",
                "p95",
                "in flight",
                "trips",
                "last error",
            ],
            rows,
        )
    )
    return 0
