"""The harness registry: each provider contributes `harness_<provider>.py` with `create_harness`."""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from imagegate.emulators.base import FAULT_KINDS, Emulator
from imagegate.grpckit import reasons
from imagegate.providerkit.adapter import Adapter
from imagegate.telemetry import Telemetry


@dataclass(frozen=True)
class Expect:
    """What a fault must turn into at the gRPC boundary."""

    code: grpc.StatusCode | None
    """gRPC code; None means the call must succeed (the adapter copes with the fault)."""
    reason: str = ""
    """ErrorInfo reason."""
    retry_info: bool = False
    """Whether a RetryInfo detail must carry the emulator's Retry-After."""
    timeout_fault: bool = False
    """The fault makes the provider slow: the call runs with a short deadline."""


EXPECTED: dict[str, Expect] = {
    "rate_limit": Expect(
        grpc.StatusCode.RESOURCE_EXHAUSTED, reasons.PROVIDER_RATE_LIMITED, retry_info=True
    ),
    "error_500": Expect(grpc.StatusCode.UNAVAILABLE, reasons.PROVIDER_UNAVAILABLE),
    "error_502": Expect(grpc.StatusCode.UNAVAILABLE, reasons.PROVIDER_UNAVAILABLE),
    "error_503": Expect(grpc.StatusCode.UNAVAILABLE, reasons.PROVIDER_UNAVAILABLE, retry_info=True),
    "hang": Expect(grpc.StatusCode.DEADLINE_EXCEEDED, reasons.PROVIDER_TIMEOUT, timeout_fault=True),
    "slow_body": Expect(
        grpc.StatusCode.DEADLINE_EXCEEDED, reasons.PROVIDER_TIMEOUT, timeout_fault=True
    ),
    "malformed_json": Expect(grpc.StatusCode.UNAVAILABLE, reasons.PROVIDER_BAD_RESPONSE),
    "moderation": Expect(grpc.StatusCode.FAILED_PRECONDITION, reasons.PROVIDER_CONTENT_MODERATED),
    "expired_url": Expect(grpc.StatusCode.UNAVAILABLE, reasons.PROVIDER_BAD_RESPONSE),
    "never_complete": Expect(
        grpc.StatusCode.DEADLINE_EXCEEDED, reasons.PROVIDER_TIMEOUT, timeout_fault=True
    ),
    "wrong_content_type": Expect(None),
    "auth_failed": Expect(grpc.StatusCode.FAILED_PRECONDITION, reasons.PROVIDER_AUTH_FAILED),
    "out_of_credits": Expect(grpc.StatusCode.FAILED_PRECONDITION, reasons.PROVIDER_OUT_OF_CREDITS),
}
assert set(EXPECTED) == set(FAULT_KINDS), "every fault kind needs an expectation"


@dataclass
class Harness:
    """An emulator and an adapter pointed at it, ready for the contract suite."""

    provider: str
    """Provider name (the adapter's `name`)."""
    emulator: Emulator
    """The running emulator."""
    adapter: Adapter
    """The adapter, configured with the emulator's base URL and `key`."""
    model: str
    """Provider model id the suite generates with."""
    key: str
    """The credential configured; it must never leak."""
    width: int = 512
    """A width the model accepts exactly."""
    height: int = 512
    """A height the model accepts exactly."""
    reports_provider_seconds: bool = True
    """Whether the emulated API reports compute seconds."""
    reports_progress: bool = True
    """Whether StreamGenerateImage yields progress events before the result."""
    expectations: dict[str, Expect] = field(default_factory=dict)
    """Per-fault overrides of EXPECTED (documented in docs/errors.md when used)."""

    def expect(self, kind: str) -> Expect:
        """What `kind` must map to for this provider."""
        return self.expectations.get(kind, EXPECTED[kind])

    async def aclose(self) -> None:
        """Closes the adapter's client and stops the emulator."""
        await self.adapter.aclose()
        await self.emulator.stop()


HarnessFactory = Callable[..., Awaitable[Harness]]
"""`async def create_harness(telemetry: Telemetry, *, enabled: bool = True) -> Harness`."""


def harness_names() -> list[str]:
    """Providers with a harness_<provider>.py next to this file."""
    here = Path(__file__).parent
    return sorted(p.stem.removeprefix("harness_") for p in here.glob("harness_*.py"))


def load_factory(provider: str) -> HarnessFactory:
    """The `create_harness` of harness_<provider>.py."""
    module = importlib.import_module(f"{__package__}.harness_{provider}")
    factory: HarnessFactory = module.create_harness
    return factory


__all__ = [
    "EXPECTED",
    "Expect",
    "Harness",
    "HarnessFactory",
    "Telemetry",
    "harness_names",
    "load_factory",
]
