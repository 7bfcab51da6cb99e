"""The OpenAI Adapter: one synchronous POST /v1/images/generations (or /edits) per generation."""

from __future__ import annotations

import asyncio

from imagegate.grpckit.deadline import Deadline
from imagegate.inputs.checks import EditMode
from imagegate.inputs.encoding import multipart
from imagegate.providerkit.hosted import HostedAdapter
from imagegate.providerkit.http import json_body
from imagegate.providerkit.synchronous import post_sync
from imagegate.providerkit.types import (
    GenerationRequest,
    GenerationResult,
    ModelSpec,
    ProgressSink,
)
from imagegate.telemetry import Telemetry
from services.openai import wire
from services.openai.config import OpenAISettings

GENERATIONS_PATH = "/v1/images/generations"
EDITS_PATH = "/v1/images/edits"


class OpenAIAdapter(HostedAdapter[OpenAISettings]):
    """gpt-image-1 and gpt-image-1-mini: fixed sizes, base64 output, token usage."""

    name = "openai"

    def __init__(self, settings: OpenAISettings, *, telemetry: Telemetry | None = None) -> None:
        headers = {"authorization": f"Bearer {settings.key_value()}"}
        if settings.organization:
            headers["openai-organization"] = settings.organization
        if settings.project:
            headers["openai-project"] = settings.project
        super().__init__(
            settings,
            headers=headers,
            max_connections=settings.max_concurrency,
            telemetry=telemetry,
            # OPENAI_BASE_URL is conventionally given with /v1; accept both forms.
            base_url=settings.effective_base_url.removesuffix("/v1"),
        )

    def models(self) -> list[ModelSpec]:
        return list(wire.MODEL_SPECS)

    async def generate(
        self, request: GenerationRequest, deadline: Deadline, progress: ProgressSink | None
    ) -> GenerationResult:
        if request.mode is EditMode.TEXT:
            # The request's own quality wins; the setting is only the default.
            body = wire.request_body(
                request,
                quality=request.quality or self._settings.quality,
                moderation=self._settings.moderation,
            )
            resp = await post_sync(
                self._client,
                GENERATIONS_PATH,
                deadline=deadline,
                json=body,
                what="OpenAI images/generations",
                special=wire.special_error,
            )
        else:
            # The mask is decoded and re-encoded: off the event loop.
            fields, files = await asyncio.to_thread(
                wire.edit_form, request, quality=request.quality or self._settings.quality
            )
            content, content_type = multipart(fields, files)
            resp = await post_sync(
                self._client,
                EDITS_PATH,
                deadline=deadline,
                content=content,
                headers={"content-type": content_type},
                what="OpenAI images/edits",
                special=wire.special_error,
            )
        job_id = resp.headers.get("x-request-id", "")
        parsed = await wire.parse_response(
            json_body(resp, billable=True, job_id=job_id),
            wanted=request.output_format,
            job_id=job_id,
        )
        return GenerationResult(
            images=parsed.images,
            provider_job_id=job_id,
            input_tokens=parsed.input_tokens,
            output_tokens=parsed.output_tokens,
            model=request.model,
        )
