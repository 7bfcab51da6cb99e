"""The whole stack in one process on loopback, every service with its own traced providers."""

from __future__ import annotations

import asyncio
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import SecretStr

from imagegate.devstack.bootstrap import ensure_dev_key
from imagegate.emulators.fal import FalEmulator
from imagegate.emulators.together import TogetherEmulator
from imagegate.grpckit.channel import create_channel
from imagegate.grpckit.server import RunningServer
from imagegate.providerkit.main import start_adapter_server
from imagegate.router.v1 import router_pb2_grpc
from imagegate.telemetry import Telemetry, TelemetrySettings, setup_telemetry
from imagegate.telemetry.logs import JsonFormatter, RedactingFilter
from services.fal.adapter import FalAdapter
from services.fal.config import FalSettings
from services.metering.catalog import load_catalog
from services.metering.server import start_metering_server
from services.metering.store import MeteringStore
from services.quota.plans import load_plans
from services.quota.server import start_quota_server
from services.quota.store import QuotaStore
from services.router.config import RouterSettings
from services.router.server import RouterHandle, start_router
from services.together.adapter import TogetherAdapter
from services.together.config import TogetherSettings

FAL_KEY = "fal-drill-id:fal-drill-secret-4a7c1e9b2d"
TOGETHER_KEY = "tgp_v1_telemetry-secret-5e2b9a1c7d"
ADMIN_TOKEN = "admin-token-telemetry-3f9e1d"


@dataclass
class TracedStack:
    """Everything started, plus what tests read: spans, log lines, the dev key."""

    spans: InMemorySpanExporter
    logs: io.StringIO
    api_key: str
    router: router_pb2_grpc.RouterServiceStub
    fal: FalEmulator
    together: TogetherEmulator
    telemetries: dict[str, Telemetry]
    _handle: RouterHandle
    _servers: list[RunningServer]
    _closers: list[object] = field(default_factory=list)
    _channel: grpc.aio.Channel | None = None
    _log_handler: logging.Handler | None = None

    def finished(self) -> tuple[ReadableSpan, ...]:
        """Spans ended so far, every service."""
        return self.spans.get_finished_spans()

    async def aclose(self) -> None:
        """Stops everything in reverse order."""
        if self._channel is not None:
            await self._channel.close()
        await self._handle.stop(0)
        for server in self._servers:
            await server.stop(0)
        for close in reversed(self._closers):
            result = close()  # type: ignore[operator]
            if asyncio.iscoroutine(result):
                await result
        await self.fal.stop()
        await self.together.stop()
        for telemetry in self.telemetries.values():
            telemetry.shutdown()
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)


async def start_traced_stack(data_dir: Path, *, record_prompts: bool = False) -> TracedStack:
    """Quota, Metering, fal and Together adapters (against emulators) and the Router."""
    data_dir.mkdir(parents=True, exist_ok=True)
    spans = InMemorySpanExporter()
    settings = TelemetrySettings(record_prompts=record_prompts)
    telemetries = {
        name: setup_telemetry(name, span_exporters=[spans], settings=settings)
        for name in ("router", "quota", "metering", "adapter-fal", "adapter-together")
    }
    logs = io.StringIO()
    handler = logging.StreamHandler(logs)
    handler.setFormatter(JsonFormatter("stack"))
    handler.addFilter(RedactingFilter())
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)

    quota_store = await asyncio.to_thread(
        QuotaStore.open,
        f"sqlite:///{data_dir / 'quota.db'}",
        plans=load_plans(),
        pepper="pepper-telemetry",
    )
    telemetries["quota"].instrument_sqlalchemy(quota_store.engine)
    quota = await start_quota_server(
        quota_store,
        address="127.0.0.1:0",
        admin_token=ADMIN_TOKEN,
        telemetry=telemetries["quota"],
        sweep_interval=None,
    )
    metering_store = await asyncio.to_thread(
        MeteringStore.open, f"sqlite:///{data_dir / 'metering.db'}", catalog=load_catalog()
    )
    telemetries["metering"].instrument_sqlalchemy(metering_store.engine)
    metering = await start_metering_server(
        metering_store, address="127.0.0.1:0", telemetry=telemetries["metering"]
    )

    fal = FalEmulator(key=FAL_KEY)
    together = TogetherEmulator(key=TOGETHER_KEY)
    fal_adapter = FalAdapter(
        FalSettings(
            key=SecretStr(FAL_KEY),
            base_url=await fal.start(),
            poll_interval_seconds=0.02,
            max_poll_interval_seconds=0.05,
        ),
        telemetry=telemetries["adapter-fal"],
    )
    together_adapter = TogetherAdapter(
        TogetherSettings(key=SecretStr(TOGETHER_KEY), base_url=await together.start()),
        telemetry=telemetries["adapter-together"],
    )
    fal_server, _ = await start_adapter_server(
        fal_adapter, address="127.0.0.1:0", telemetry=telemetries["adapter-fal"]
    )
    together_server, _ = await start_adapter_server(
        together_adapter, address="127.0.0.1:0", telemetry=telemetries["adapter-together"]
    )
    router_settings = RouterSettings(
        addr="127.0.0.1:0",
        adapters=f"fal={fal_server.address},together={together_server.address}",
        quota_addr=quota.address,
        metering_addr=metering.address,
        data_dir=data_dir,
        record_prompts=record_prompts,
    )
    _, _, handle = await start_router(router_settings, telemetries["router"], address="127.0.0.1:0")
    key_file, _ = await ensure_dev_key(data_dir, quota.address, ADMIN_TOKEN)
    channel = create_channel(handle.running.address)
    stack = TracedStack(
        spans=spans,
        logs=logs,
        api_key=key_file.read_text().strip(),
        router=router_pb2_grpc.RouterServiceStub(channel),
        fal=fal,
        together=together,
        telemetries=telemetries,
        _handle=handle,
        _servers=[fal_server, together_server, metering.running, quota.running],
        _closers=[
            quota_store.close,
            metering_store.close,
            fal_adapter.aclose,
            together_adapter.aclose,
        ],
        _channel=channel,
        _log_handler=handler,
    )
    spans.clear()  # bootstrap (tenant, key) is not part of what the tests look at
    return stack
