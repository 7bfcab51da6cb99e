"""The Adapter base class: the only thing a provider integration has to implement."""

from __future__ import annotations

from abc import ABC, abstractmethod

from imagegate.grpckit.deadline import Deadline
from imagegate.providerkit.types import (
    GenerationRequest,
    GenerationResult,
    ModelSpec,
    ProgressSink,
)


class Adapter(ABC):
    """Translates GenerationRequest into one provider's HTTP API.

    The servicer around it validates the request against `models()`, enforces the concurrency
    limit and the deadline, checks the result and measures usage; `generate` only speaks HTTP.
    """

    name: str = ""
    """Provider name, e.g. "fal"."""

    @property
    @abstractmethod
    def enabled(self) -> bool:
        """Whether credentials are configured."""

    @property
    def base_url(self) -> str:
        """Base URL called, for DescribeProvider (never with credentials)."""
        return ""

    @property
    def max_concurrency(self) -> int:
        """Most generations in flight at once (the provider's documented limit)."""
        return 16

    @property
    def default_timeout(self) -> float:
        """Seconds allowed when the caller sets no deadline."""
        return 120.0

    @abstractmethod
    def models(self) -> list[ModelSpec]:
        """Models served, with capabilities and billing unit."""

    @abstractmethod
    async def generate(
        self, request: GenerationRequest, deadline: Deadline, progress: ProgressSink | None
    ) -> GenerationResult:
        """Runs one generation; must return before `deadline` and raise ProviderError on failure."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Releases pooled connections."""
