"""A whole stack in one process: real Quota, Metering, Router and the six hosted adapters, each
adapter talking HTTP to its provider's emulator (which keeps its own bill)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from imagegate.emulators.base import Emulator
from imagegate.emulators.bfl import BflEmulator
from imagegate.emulators.fal import FalEmulator
from imagegate.emulators.huggingface import HuggingFaceEmulator
from imagegate.emulators.openai import OpenAIEmulator
from imagegate.emulators.replicate import ReplicateEmulator
from imagegate.emulators.together import TogetherEmulator
from imagegate.grpckit.channel import create_channel
from imagegate.metering.v1 import metering_pb2_grpc
from imagegate.providerkit.main import start_adapter_server
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc
from imagegate.router.v1 import router_pb2_grpc
from imagegate.telemetry import setup_telemetry
from services.bfl.adapter import BflAdapter
from services.bfl.config import BflSettings
from services.fal.adapter import FalAdapter
from services.fal.config import FalSettings
from services.huggingface.adapter import HuggingFaceAdapter
from services.huggingface.config import HuggingFaceSettings
from services.metering.catalog import load_catalog
from services.metering.server import start_metering_server
from services.metering.store import MeteringStore
from services.openai.adapter import OpenAIAdapter
from services.openai.config import OpenAISettings
from services.quota.plans import load_plans
from services.quota.server import start_quota_server
from services.quota.store import QuotaStore
from services.replicate.adapter import ReplicateAdapter
from services.replicate.config import ReplicateSettings
from services.router.config import RouterSettings
from services.router.server import start_router
from services.together.adapter import TogetherAdapter
from services.together.config import TogetherSettings

ADMIN = (("authorization", "Bearer admin-cost"),)
KEY = "emulated-provider-key"
POLL = {"poll_interval_seconds": 0.02, "max_poll_interval_seconds": 0.05}
HOSTED: dict[str, tuple[type[Emulator], Any, Any, dict[str, Any]]] = {
    "fal": (FalEmulator, FalAdapter, FalSettings, POLL),
    "replicate": (ReplicateEmulator, ReplicateAdapter, ReplicateSettings, POLL),
    "bfl": (BflEmulator, BflAdapter, BflSettings, POLL),
    "huggingface": (HuggingFaceEmulator, HuggingFaceAdapter, HuggingFaceSettings, {}),
    "openai": (OpenAIEmulator, OpenAIAdapter, OpenAISettings, {}),
    "together": (TogetherEmulator, TogetherAdapter, TogetherSettings, {}),
}


@dataclass
class CostStack:
    """What a test drives and reads."""

    router: router_pb2_grpc.RouterServiceStub
    quota: quota_pb2_grpc.QuotaServiceStub
    metering: metering_pb2_grpc.MeteringServiceStub
    metering_store: MeteringStore
    emulators: dict[str, Emulator]
    tenant_id: str
    api_key: str
    addresses: dict[str, str]
    """Router, quota and metering addresses."""

    @property
    def auth(self) -> tuple[tuple[str, str], ...]:
        """Metadata of the tenant's key."""
        return (("authorization", f"Bearer {self.api_key}"),)


@asynccontextmanager
async def cost_stack(
    tmp_path: Path, metering_url: str, *, plan: str = "business"
) -> AsyncIterator[CostStack]:
    """Starts everything on loopback; one tenant on `plan`."""
    tel = setup_telemetry("cost-stack")
    stops: list[Any] = []
    channels: list[Any] = []
    try:
        qstore = QuotaStore.open(f"sqlite:///{tmp_path / 'q.db'}", plans=load_plans(), pepper="p")
        quota = await start_quota_server(
            qstore,
            address="127.0.0.1:0",
            admin_token="admin-cost",
            telemetry=tel,
            sweep_interval=None,
        )
        stops.append(lambda: quota.stop(0.1))
        mstore = MeteringStore.open(metering_url, catalog=load_catalog())
        metering = await start_metering_server(
            mstore,
            address="127.0.0.1:0",
            telemetry=tel,
            admin_token="admin-cost",
            plan_prices={p.id: p.price_micros for p in load_plans().values()},
        )
        stops.append(lambda: metering.running.stop(0.1))
        stops.append(mstore.close)
        emulators: dict[str, Emulator] = {}
        addrs = []
        for name, (emu_cls, adapter_cls, settings_cls, extra) in HOSTED.items():
            emulator = emu_cls(key=KEY)
            base_url = await emulator.start()
            stops.append(emulator.stop)
            emulators[name] = emulator
            adapter = adapter_cls(
                settings_cls(key=SecretStr(KEY), base_url=base_url, **extra), telemetry=tel
            )
            server, _ = await start_adapter_server(adapter, address="127.0.0.1:0", telemetry=tel)
            stops.append(lambda s=server: s.stop(0.1))
            stops.append(adapter.aclose)
            addrs.append(f"{name}={server.address}")
        settings = RouterSettings(
            adapters=",".join(addrs),
            quota_addr=quota.address,
            metering_addr=metering.running.address,
            data_dir=tmp_path,
            hedge=False,
            settle_before_reply=True,
        )
        router, _app, handle = await start_router(settings, tel, address="127.0.0.1:0")
        stops.append(lambda: handle.stop(grace=0.5))
        qchan = create_channel(quota.address)
        rchan = create_channel(router.address)
        mchan = create_channel(metering.running.address)
        channels += [qchan, rchan, mchan]
        qstub = quota_pb2_grpc.QuotaServiceStub(qchan)
        tenant = await qstub.CreateTenant(
            quota_pb2.CreateTenantRequest(request_id="t1", name="acme", plan=plan), metadata=ADMIN
        )
        key = await qstub.CreateApiKey(
            quota_pb2.CreateApiKeyRequest(tenant_id=tenant.tenant.id, label="t"), metadata=ADMIN
        )
        yield CostStack(
            router=router_pb2_grpc.RouterServiceStub(rchan),
            quota=qstub,
            metering=metering_pb2_grpc.MeteringServiceStub(mchan),
            metering_store=mstore,
            emulators=emulators,
            tenant_id=tenant.tenant.id,
            api_key=key.api_key,
            addresses={
                "router": router.address,
                "quota": quota.address,
                "metering": metering.running.address,
            },
        )
    finally:
        for ch in channels:
            await ch.close()
        for stop in reversed(stops):
            await stop()
        tel.shutdown()
