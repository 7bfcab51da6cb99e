"""`python -m bench.tracing_overhead`: what tracing adds to one loopback gRPC round trip."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Sequence

import grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.server import start_server
from imagegate.provider.v1 import provider_pb2, provider_pb2_grpc
from imagegate.telemetry.setup import Telemetry, setup_telemetry


class _Echo(provider_pb2_grpc.ProviderServiceServicer):
    async def DescribeProvider(
        self, request: provider_pb2.DescribeProviderRequest, context: grpc.aio.ServicerContext
    ) -> provider_pb2.DescribeProviderResponse:
        return provider_pb2.DescribeProviderResponse(provider="bench")


class _Drop(SpanExporter):
    """Accepts and discards; the batch processor still does all its work up to the wire."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


async def _measure(mode: str, calls: int) -> list[float]:
    server_t: Telemetry | None = None
    client_t: Telemetry | None = None
    if mode != "off":
        if mode == "sampled-out":
            os.environ["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
            os.environ["OTEL_TRACES_SAMPLER_ARG"] = "0"
        server_t = setup_telemetry("bench-server")
        client_t = setup_telemetry("bench-client")
        if mode == "on":
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            for traced in (server_t, client_t):
                traced.tracer_provider.add_span_processor(BatchSpanProcessor(_Drop()))
        os.environ.pop("OTEL_TRACES_SAMPLER", None)
        os.environ.pop("OTEL_TRACES_SAMPLER_ARG", None)
    running = await start_server(
        address="127.0.0.1:0",
        registrars=[lambda s: provider_pb2_grpc.add_ProviderServiceServicer_to_server(_Echo(), s)],  # type: ignore[abstract]
        service_names=["imagegate.provider.v1.ProviderService"],
        domain="bench",
        interceptors=server_t.server_interceptors() if server_t else (),
    )
    channel = create_channel(running.address, client_t.client_interceptors() if client_t else ())
    stub = provider_pb2_grpc.ProviderServiceStub(channel)
    request = provider_pb2.DescribeProviderRequest()
    for _ in range(200):
        await stub.DescribeProvider(request, timeout=5)
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        await stub.DescribeProvider(request, timeout=5)
        samples.append(time.perf_counter() - started)
    await channel.close()
    await running.stop(0)
    for t in (server_t, client_t):
        if t is not None:
            t.shutdown()
    return samples


async def run(calls: int, rounds: int) -> None:
    """Interleaves the modes `rounds` times so machine noise hits them alike."""
    results: dict[str, list[float]] = {"off": [], "no-exporter": [], "sampled-out": [], "on": []}
    for _ in range(rounds):
        for mode in results:
            results[mode].extend(await _measure(mode, calls))
    base = statistics.median(results["off"])
    print(f"{'mode':<12} {'p50 µs':>8} {'p99 µs':>8} {'added p50 µs':>13}")
    for mode, samples in results.items():
        samples.sort()
        p50 = statistics.median(samples)
        p99 = samples[int(len(samples) * 0.99)]
        print(f"{mode:<12} {p50 * 1e6:8.0f} {p99 * 1e6:8.0f} {(p50 - base) * 1e6:13.0f}")


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(run(args.calls, args.rounds))


if __name__ == "__main__":
    main()
