"""The Together Adapter: one synchronous POST /v1/images/generations per generation."""

from __future__ import annotations

from imagegate.grpckit.deadline import Deadline
from imagegate.providerkit.hosted import HostedAdapter
from imagegate.providerkit.types import (
    GenerationRequest,
    GenerationResult,
    ModelSpec,
    ProgressSink,
)
from imagegate.telemetry import Telemetry
from services.together import wire
from services.together.client import TogetherCall
from services.together.config import TogetherSettings

GENERATIONS_PATH = "/v1/images/generations"


class TogetherAdapter(HostedAdapter[TogetherSettings]):
    """FLUX.1 schnell/dev and SDXL on Together, base64 results, inference time reported."""

    name = "together"

    def __init__(self, settings: TogetherSettings, *, telemetry: Telemetry | None = None) -> None:
        super().__init__(
            settings,
            headers={"authorization": f"Bearer {settings.key_value()}"},
            max_connections=settings.max_concurrency,
            telemetry=telemetry,
            # Accept a base URL given with the conventional /v1 suffix as well.
            base_url=settings.effective_base_url.removesuffix("/v1"),
        )
        self._call = TogetherCall(
            self._client, GENERATIONS_PATH, self._results_from(settings.result_hosts)
        )

    def models(self) -> list[ModelSpec]:
        return list(wire.MODEL_SPECS)

    async def generate(
        self, request: GenerationRequest, deadline: Deadline, progress: ProgressSink | None
    ) -> GenerationResult:
        return await self._call.generate(request, request.model, deadline)
