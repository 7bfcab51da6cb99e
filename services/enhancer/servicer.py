"""EnhancerService servicer: validates requests and hands them to PromptEnhancer."""

from __future__ import annotations

import grpc

from imagegate.enhancer.v1 import enhancer_pb2, enhancer_pb2_grpc
from imagegate.grpckit.deadline import Deadline
from imagegate.grpckit.errors import FieldViolation, invalid_argument
from services.enhancer.enhancer import DOMAIN, PromptEnhancer

MAX_PROMPT, MAX_STYLE_TEXT, MAX_NEGATIVE, MAX_NAME = 4000, 1000, 2000, 128


def validate(request: enhancer_pb2.EnhancePromptRequest) -> list[FieldViolation]:
    """Every problem of an EnhancePromptRequest, as field violations."""
    v: list[FieldViolation] = []
    if not request.prompt.strip():
        v.append(FieldViolation("prompt", "must not be empty"))
    elif len(request.prompt) > MAX_PROMPT:
        v.append(FieldViolation("prompt", f"at most {MAX_PROMPT} characters"))
    for name in ("style", "image_model"):
        if len(getattr(request, name)) > MAX_NAME:
            v.append(FieldViolation(name, f"at most {MAX_NAME} characters"))
    for name in ("style_description", "style_keywords"):
        if len(getattr(request, name)) > MAX_STYLE_TEXT:
            v.append(FieldViolation(name, f"at most {MAX_STYLE_TEXT} characters"))
    if len(request.negative_prompt) > MAX_NEGATIVE:
        v.append(FieldViolation("negative_prompt", f"at most {MAX_NEGATIVE} characters"))
    if not 0 <= request.max_prompt_chars <= MAX_PROMPT:
        v.append(FieldViolation("max_prompt_chars", f"0 (default) to {MAX_PROMPT}"))
    if request.prompt_format not in enhancer_pb2.PromptFormat.values():
        v.append(FieldViolation("prompt_format", "unknown prompt format"))
    return v


class EnhancerServicer(enhancer_pb2_grpc.EnhancerServiceServicer):
    """The EnhancerService RPCs."""

    def __init__(self, enhancer: PromptEnhancer) -> None:
        self._enhancer = enhancer

    async def EnhancePrompt(
        self, request: enhancer_pb2.EnhancePromptRequest, context: grpc.aio.ServicerContext
    ) -> enhancer_pb2.EnhancePromptResponse:
        """Rewrites one prompt within the caller's deadline."""
        violations = validate(request)
        if violations:
            raise invalid_argument(violations, domain=DOMAIN)
        deadline = Deadline.from_context(context, self._enhancer.settings.default_deadline_seconds)
        return await self._enhancer.enhance(request, deadline)

    async def ListTextProviders(
        self, request: enhancer_pb2.ListTextProvidersRequest, context: grpc.aio.ServicerContext
    ) -> enhancer_pb2.ListTextProvidersResponse:
        """Every known provider in priority order, with its breaker state."""
        out = enhancer_pb2.ListTextProvidersResponse()
        for client in self._enhancer.clients:
            breaker = self._enhancer.breakers[client.config.name]
            out.providers.add(
                name=client.config.name,
                model=client.config.model,
                base_url=client.config.base_url,
                enabled=client.config.enabled,
                breaker_open=not breaker.allows(),
                retry_in_seconds=breaker.retry_in(),
            )
        return out
