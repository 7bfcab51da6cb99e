"""`python -m bench.otlp_sink --port N --stats FILE`: an OTLP/gRPC collector stub that counts and drops."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from bench.echo import serve_until_signalled

_SERVICES = {
    "opentelemetry.proto.collector.trace.v1.TraceService": "traces",
    "opentelemetry.proto.collector.metrics.v1.MetricsService": "metrics",
    "opentelemetry.proto.collector.logs.v1.LogsService": "logs",
}


def handlers(counts: Counter[str]) -> list[grpc.GenericRpcHandler]:
    """Export handlers for traces, metrics and logs; spans are counted, everything is dropped."""
    out = []
    for service, signal_name in _SERVICES.items():

        async def export(
            request: bytes, _context: grpc.aio.ServicerContext, _signal: str = signal_name
        ) -> bytes:
            counts[f"{_signal}_requests"] += 1
            counts[f"{_signal}_bytes"] += len(request)
            if _signal == "traces":
                msg = trace_service_pb2.ExportTraceServiceRequest.FromString(request)
                counts["spans"] += sum(
                    len(ss.spans) for rs in msg.resource_spans for ss in rs.scope_spans
                )
            # An empty Export*ServiceResponse serialises to zero bytes.
            return b""

        out.append(
            grpc.method_handlers_generic_handler(
                service, {"Export": grpc.unary_unary_rpc_method_handler(export)}
            )
        )
    return out


async def serve(port: int, stats: Path) -> None:
    """Serves until SIGTERM, then writes the counts to `stats` as JSON."""
    counts: Counter[str] = Counter()
    await serve_until_signalled(handlers(counts), port)
    stats.write_text(json.dumps(dict(counts)))


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.otlp_sink")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stats", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.stats))


if __name__ == "__main__":
    main()
