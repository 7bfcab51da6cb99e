"""Entry point of the `imagegate` command and its sub-commands."""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from imagegate.cli.connection import Connection
from imagegate.cli.output import as_csv, as_json, table, usd
from imagegate.common.v1 import image_pb2
from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.errors import ImagegateError, parse_rpc_error
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc
from imagegate.router.v1 import router_pb2, router_pb2_grpc

FORMATS = {
    "png": image_pb2.IMAGE_FORMAT_PNG,
    "jpeg": image_pb2.IMAGE_FORMAT_JPEG,
    "jpg": image_pb2.IMAGE_FORMAT_JPEG,
    "webp": image_pb2.IMAGE_FORMAT_WEBP,
}
PREFERENCES = {
    "speed": router_pb2.PREFERENCE_SPEED,
    "balanced": router_pb2.PREFERENCE_BALANCED,
    "quality": router_pb2.PREFERENCE_QUALITY,
    "budget": router_pb2.PREFERENCE_BUDGET,
}
EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}

Command = Callable[[argparse.Namespace, Connection], Awaitable[int]]


def _size(text: str) -> tuple[int, int]:
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit():
        raise argparse.ArgumentTypeError("size must look like 512x512")
    return int(w), int(h)


def _build_request(args: argparse.Namespace) -> router_pb2.GenerateImageRequest:
    req = router_pb2.GenerateImageRequest(
        request_id=args.request_id or str(uuid.uuid4()),
        prompt=args.prompt,
        negative_prompt=args.negative or "",
        num_images=args.n,
        output_format=FORMATS[args.format],
        preference=PREFERENCES[args.preference],
        model=args.model or "",
        style=args.style or "",
        max_cost_micros=round(args.max_cost * 1_000_000) if args.max_cost else 0,
        allowed_providers=args.provider or [],
        blocked_providers=args.block or [],
        allow_degradation=args.allow_degradation,
    )
    if args.size:
        req.width, req.height = args.size
    if args.seed is not None:
        req.seed = args.seed
    if args.steps is not None:
        req.steps = args.steps
    return req


def _auth(conn: Connection) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {conn.api_key()}"),)


async def cmd_generate(args: argparse.Namespace, conn: Connection) -> int:
    request = _build_request(args)
    live = sys.stderr.isatty() and not args.quiet
    async with create_channel(conn.router_addr) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        result: router_pb2.GenerateImageResponse | None = None
        call = stub.StreamGenerateImage(
            router_pb2.StreamGenerateImageRequest(request=request),
            metadata=_auth(conn),
            timeout=args.timeout,
        )
        async for event in call:
            kind = event.WhichOneof("event")
            if kind == "result":
                result = event.result
            elif not args.quiet:
                _progress(event, kind, live)
        if live:
            print("\r\x1b[K", end="", file=sys.stderr)
    if result is None:
        raise ImagegateError(grpc.StatusCode.UNKNOWN, "NO_RESULT", "stream ended without a result")
    paths = _write_images(result, Path(args.output))
    if args.json:
        summary = json_format.MessageToDict(result, preserving_proto_field_name=True)
        for image in summary.get("images", []):
            image.pop("data", None)
        summary["files"] = [str(p) for p in paths]
        print(as_json(summary))
        return 0
    for path, image in zip(paths, result.images, strict=True):
        print(f"wrote {path} ({image.width}x{image.height} {image.mime_type})")
    attempts = ", ".join(
        f"{a.provider}:{router_pb2.AttemptOutcome.Name(a.outcome).removeprefix('ATTEMPT_OUTCOME_').lower()}"
        for a in result.attempts
    )
    print(
        f"provider {result.provider} model {result.model} ({result.provider_model}) "
        f"cost {usd(result.cost_micros)} attempts [{attempts}] trace {result.trace_id}"
    )
    for notice in result.notices:
        print(f"note: {notice}")
    for d in result.deviations:
        print(f"deviation: {d.field} asked {d.requested} got {d.delivered or '-'} ({d.reason})")
    return 0


def _progress(event: router_pb2.StreamGenerateImageResponse, kind: str | None, live: bool) -> None:
    if kind == "accepted":
        text = f"accepted; candidates: {', '.join(event.accepted.candidates)}"
    elif kind == "attempt_started":
        a = event.attempt_started
        text = f"attempt {a.attempt_number}: {a.provider} {a.provider_model}"
    elif kind == "progress":
        p = event.progress
        parts = [p.provider, p.state]
        if p.queue_position >= 0:
            parts.append(f"queue position {p.queue_position}")
        if p.fraction >= 0:
            parts.append(f"{p.fraction:.0%}")
        text = " ".join(x for x in parts if x)
    elif kind == "attempt_failed":
        text = f"attempt {event.attempt_failed.attempt_number} failed: {event.attempt_failed.error_reason}"
    elif kind == "failover":
        f = event.failover
        text = f"failover {f.from_provider} -> {f.to_provider} ({f.reason})"
    else:
        return
    line = f"[{event.elapsed_seconds:5.1f}s] {text}"
    if live:
        print(f"\r\x1b[K{line}", end="", file=sys.stderr, flush=True)
    else:
        print(line, file=sys.stderr)


def _write_images(result: router_pb2.GenerateImageResponse, output: Path) -> list[Path]:
    paths = []
    for index, image in enumerate(result.images, start=1):
        path = output
        if len(result.images) > 1:
            suffix = output.suffix or EXTENSIONS.get(image.mime_type, ".img")
            path = output.with_name(f"{output.stem}-{index}{suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image.data)
        paths.append(path)
    return paths


async def cmd_models(args: argparse.Namespace, conn: Connection) -> int:
    async with create_channel(conn.router_addr) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        resp = await stub.ListModels(
            router_pb2.ListModelsRequest(), metadata=_auth(conn), timeout=10
        )
    rows = [
        [
            m.alias,
            m.description and m.description[:40],
            m.tier and _enum_name(m.tier, "QUALITY_TIER_"),
            ",".join(m.providers) or "-",
            "yes" if m.allowed_by_plan else "no",
            "local stands in" if m.local_substitute else "",
        ]
        for m in resp.models
    ]
    print(table(["model", "description", "tier", "providers", "plan", "note"], rows))
    return 0


async def cmd_styles(args: argparse.Namespace, conn: Connection) -> int:
    async with create_channel(conn.router_addr) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        resp = await stub.ListStyles(
            router_pb2.ListStylesRequest(), metadata=_auth(conn), timeout=10
        )
    rows = [[s.name, f"{s.default_width}x{s.default_height}", s.description] for s in resp.styles]
    print(table(["style", "size", "description"], rows))
    return 0


async def cmd_estimate(args: argparse.Namespace, conn: Connection) -> int:
    async with create_channel(conn.router_addr) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        resp = await stub.EstimateCost(
            router_pb2.EstimateCostRequest(request=_build_request(args)),
            metadata=_auth(conn),
            timeout=10,
        )
    rows = [
        [c.provider, c.model, c.provider_model, usd(c.cost_micros), c.skip_reason or "eligible"]
        for c in resp.candidates
    ]
    print(table(["provider", "model", "provider model", "cost", "status"], rows))
    print(f"expected cost: {usd(resp.expected_cost_micros)}")
    return 0


async def cmd_usage(args: argparse.Namespace, conn: Connection) -> int:
    async with create_channel(conn.router_addr) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        summary = (
            await stub.GetUsageSummary(
                router_pb2.GetUsageSummaryRequest(period=args.month or ""),
                metadata=_auth(conn),
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
                metadata=_auth(conn),
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
        "cost_usd",
    ]
    rows = [
        [
            r.occurred_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
            r.request_id,
            r.model,
            r.provider or "-",
            _enum_name(r.outcome, "REQUEST_OUTCOME_"),
            r.images,
            f"{r.megapixels:.3f}",
            f"{r.cost_micros / 1e6:.6f}",
        ]
        for r in records[: args.limit]
    ]
    if args.format == "json":
        print(
            as_json(
                {
                    "summary": json_format.MessageToDict(summary, preserving_proto_field_name=True),
                    "records": [
                        json_format.MessageToDict(r, preserving_proto_field_name=True)
                        for r in records[: args.limit]
                    ],
                }
            )
        )
    elif args.format == "csv":
        print(as_csv(headers, rows))
    else:
        print(
            f"usage for {summary.period}: {summary.requests} requests, {summary.images} images, "
            f"{summary.megapixels:.3f} MP, {usd(summary.cost_micros)}"
        )
        if summary.groups:
            print(
                table(
                    ["provider", "provider model", "attempts", "images", "megapixels", "cost"],
                    [
                        [
                            g.provider,
                            g.provider_model,
                            g.attempts,
                            g.images,
                            f"{g.megapixels:.3f}",
                            usd(g.cost_micros),
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
    async with create_channel(conn.router_addr) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        q = (
            await stub.GetQuota(router_pb2.GetQuotaRequest(), metadata=_auth(conn), timeout=10)
        ).quota
    if args.json:
        print(as_json(json_format.MessageToDict(q, preserving_proto_field_name=True)))
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
    async with create_channel(conn.router_addr) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        resp = await stub.GetProviderStatus(
            router_pb2.GetProviderStatusRequest(), metadata=_auth(conn), timeout=10
        )
    rows = [
        [
            p.provider + (f"/{p.provider_model}" if p.provider_model else ""),
            "yes" if p.enabled else "no",
            _enum_name(p.state, "BREAKER_STATE_"),
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


async def cmd_admin(args: argparse.Namespace, conn: Connection) -> int:
    meta = (("authorization", f"Bearer {conn.admin_token()}"),)
    async with create_channel(conn.quota_addr) as channel:
        stub = quota_pb2_grpc.QuotaServiceStub(channel)
        action = args.admin_action
        if action == "tenant-create":
            t = (
                await stub.CreateTenant(
                    quota_pb2.CreateTenantRequest(
                        request_id=args.request_id or str(uuid.uuid4()),
                        name=args.name,
                        plan=args.plan,
                    ),
                    metadata=meta,
                    timeout=10,
                )
            ).tenant
            print(f"tenant {t.name} id {t.id} plan {t.plan}")
        elif action == "tenant-list":
            resp = await stub.ListTenants(quota_pb2.ListTenantsRequest(), metadata=meta, timeout=10)
            print(table(["id", "name", "plan"], [[t.id, t.name, t.plan] for t in resp.tenants]))
        elif action == "set-plan":
            t = (
                await stub.SetTenantPlan(
                    quota_pb2.SetTenantPlanRequest(tenant_id=args.tenant_id, plan=args.plan),
                    metadata=meta,
                    timeout=10,
                )
            ).tenant
            print(f"tenant {t.name} now on plan {t.plan}")
        elif action == "plans":
            resp = await stub.ListPlans(quota_pb2.ListPlansRequest(), timeout=10)
            print(
                table(
                    ["plan", "images/month", "tiers", "price"],
                    [
                        [
                            p.id,
                            p.monthly_images or "unlimited",
                            ",".join(p.allowed_tiers) or "all",
                            usd(p.price_micros),
                        ]
                        for p in resp.plans
                    ],
                )
            )
        elif action == "key-create":
            k = await stub.CreateApiKey(
                quota_pb2.CreateApiKeyRequest(tenant_id=args.tenant_id, label=args.label or ""),
                metadata=meta,
                timeout=10,
            )
            print(f"key id {k.key_id}")
            print(f"api key (shown once): {k.api_key}")
        elif action == "key-revoke":
            await stub.RevokeApiKey(
                quota_pb2.RevokeApiKeyRequest(key_id=args.key_id), metadata=meta, timeout=10
            )
            print(f"revoked {args.key_id}")
    return 0


def _enum_name(value: int, prefix: str) -> str:
    descriptor = {
        "QUALITY_TIER_": "QualityTier",
        "REQUEST_OUTCOME_": "RequestOutcome",
        "BREAKER_STATE_": "BreakerState",
    }[prefix]
    from imagegate.common.v1 import catalog_pb2
    from imagegate.metering.v1 import metering_pb2

    for module in (catalog_pb2, metering_pb2, router_pb2):
        enum = getattr(module, descriptor, None)
        if enum is not None:
            return str(enum.Name(value)).removeprefix(prefix).lower()
    return str(value)


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="what to draw")
    p.add_argument("--model", help="model alias (see `imagegate models`)")
    p.add_argument("--preference", choices=sorted(PREFERENCES), default="balanced")
    p.add_argument("--size", type=_size, help="WxH, e.g. 512x512")
    p.add_argument("--n", type=int, default=1, help="number of images, 1-4")
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--format", choices=sorted(FORMATS), default="png")
    p.add_argument("--style", help="style preset (see `imagegate styles`)")
    p.add_argument("--negative", help="negative prompt")
    p.add_argument("--max-cost", type=float, help="cost ceiling in USD")
    p.add_argument("--provider", action="append", help="only this provider (repeatable)")
    p.add_argument("--block", action="append", help="never this provider (repeatable)")
    p.add_argument("--allow-degradation", action="store_true")
    p.add_argument("--request-id", help="idempotency key (default: a new UUID)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every sub-command."""
    parser = argparse.ArgumentParser(prog="imagegate", description="imagegate client")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate images")
    _add_generation_args(g)
    g.add_argument("-o", "--output", required=True, help="output file (-1, -2… added for --n>1)")
    g.add_argument("--timeout", type=float, default=120.0, help="deadline in seconds")
    g.add_argument("--json", action="store_true", help="print the response as JSON")
    g.add_argument("--quiet", action="store_true", help="no progress output")
    g.set_defaults(func=cmd_generate)
    e = sub.add_parser("estimate", help="price a request without running it")
    _add_generation_args(e)
    e.set_defaults(func=cmd_estimate)
    sub.add_parser("models", help="list model aliases").set_defaults(func=cmd_models)
    sub.add_parser("styles", help="list style presets").set_defaults(func=cmd_styles)
    u = sub.add_parser("usage", help="your usage for a month")
    u.add_argument("--month", help="YYYY-MM (default: this month, UTC)")
    u.add_argument("--format", choices=["table", "csv", "json"], default="table")
    u.add_argument("--limit", type=int, default=50, help="most records to show")
    u.set_defaults(func=cmd_usage)
    q = sub.add_parser("quota", help="your plan and what is left this month")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_quota)
    sub.add_parser("providers", help="provider health and breakers").set_defaults(
        func=cmd_providers
    )
    a = sub.add_parser("admin", help="tenants, plans and keys (needs the admin token)")
    asub = a.add_subparsers(dest="admin_action", required=True)
    tc = asub.add_parser("tenant-create")
    tc.add_argument("name")
    tc.add_argument("--plan", default="free", help="free, pro, business or enterprise")
    tc.add_argument("--request-id")
    asub.add_parser("tenant-list")
    sp = asub.add_parser("set-plan")
    sp.add_argument("tenant_id")
    sp.add_argument("plan")
    asub.add_parser("plans")
    kc = asub.add_parser("key-create")
    kc.add_argument("tenant_id")
    kc.add_argument("--label")
    kr = asub.add_parser("key-revoke")
    kr.add_argument("key_id")
    a.set_defaults(func=cmd_admin)
    return parser


def run(argv: list[str] | None = None) -> int:
    """Parses arguments, runs the command, prints errors without tracebacks."""
    args = build_parser().parse_args(argv)
    command: Command = args.func
    try:
        return asyncio.run(_run_command(command, args))
    except grpc.aio.AioRpcError as err:
        return _print_error(parse_rpc_error(err))
    except ImagegateError as err:
        print(f"error: {err.code.name} {err.reason}: {err.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def _print_error(parsed: Any) -> int:
    code = parsed.code.name if hasattr(parsed.code, "name") else str(parsed.code)
    reason = f" {parsed.reason}" if parsed.reason else ""
    print(f"error: {code}{reason}: {parsed.message}", file=sys.stderr)
    for v in parsed.field_violations:
        print(f"  field {v.field}: {v.description}", file=sys.stderr)
    for q in parsed.quota_violations:
        print(f"  quota {q.subject}: {q.description}", file=sys.stderr)
    if parsed.retry_after_seconds is not None:
        print(f"  retry after {parsed.retry_after_seconds:.1f}s", file=sys.stderr)
    if parsed.code == grpc.StatusCode.UNAVAILABLE and not parsed.reason:
        print("  is the stack running? start it with `make run`", file=sys.stderr)
    return 1


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())


async def _run_command(command: Command, args: argparse.Namespace) -> int:
    return await command(args, Connection.from_env())
