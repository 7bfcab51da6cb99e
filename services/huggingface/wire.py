"""Hugging Face router wire format: models, routes, request bodies, error bodies."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any

import httpx

from imagegate.grpckit import reasons
from imagegate.providerkit.errors import ProviderError
from imagegate.providerkit.http import error_detail, redact, secrets_of
from imagegate.providerkit.types import GenerationRequest, ModelSpec, PriceUnit, SizeRule
from services.replicate.adapter import MODELS as replicate_models
from services.together import wire as together_wire

SD21 = "stabilityai/stable-diffusion-2-1"
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
FLUX_SCHNELL = "black-forest-labs/FLUX.1-schnell"

HF_INFERENCE = "hf-inference"
TOGETHER = "together"
FAL = "fal-ai"
NSCALE = "nscale"
REPLICATE = "replicate"
REPLICATE_SCHNELL = "black-forest-labs/flux-schnell"
# Not a partner: the first partner of the account's Inference Provider order that serves the model.
AUTO = "auto"
# Partners the auto route can take, and each one's id for FLUX.1 [schnell] when the Hub's
# mapping is not consulted (IMAGEGATE_HF_PROVIDER_ORDER set). Replicate is left out: its FLUX
# sizes are a fixed table, narrower than what the auto route promises.
PARTNER_MODEL_IDS: dict[str, dict[str, str]] = {
    TOGETHER: {FLUX_SCHNELL: together_wire.FLUX_SCHNELL},
    FAL: {FLUX_SCHNELL: "fal-ai/flux/schnell"},
    NSCALE: {FLUX_SCHNELL: FLUX_SCHNELL},
    HF_INFERENCE: {SD21: SD21, SDXL: SDXL},
}


def partner_route(model: str, partner: str) -> str:
    """The adapter's model id of `model` through one partner (HF's own `model:provider` form)."""
    return f"{model}:{partner}"


@dataclass(frozen=True)
class Route:
    """How one model is reached through the router."""

    partner: str
    """Router provider segment ("hf-inference", "together", "fal-ai", "nscale", "replicate")
    or "auto"."""
    provider_model: str
    """The model id the partner expects (its own id, from HF's provider mapping)."""


ROUTES: dict[str, Route] = {
    SD21: Route(HF_INFERENCE, SD21),
    SDXL: Route(HF_INFERENCE, SDXL),
    # Together is synchronous and answers base64, so the router call is the whole job: no polling
    # and no result download from a third host (see docs/errors.md, "Hugging Face").
    FLUX_SCHNELL: Route(TOGETHER, together_wire.FLUX_SCHNELL),
    # One id per partner route, so each has its own breaker in the Router.
    partner_route(FLUX_SCHNELL, FAL): Route(FAL, "fal-ai/flux/schnell"),
    partner_route(FLUX_SCHNELL, NSCALE): Route(NSCALE, FLUX_SCHNELL),
    partner_route(FLUX_SCHNELL, REPLICATE): Route(REPLICATE, REPLICATE_SCHNELL),
    partner_route(FLUX_SCHNELL, AUTO): Route(AUTO, FLUX_SCHNELL),
}

_TOGETHER_SCHNELL = next(s for s in together_wire.MODEL_SPECS if s.id == together_wire.FLUX_SCHNELL)

# hf-inference answers one image per call; more are separate calls with consecutive seeds.
MODEL_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec(
        id=SD21,
        sizes=SizeRule(min_side=256, max_side=1024, multiple=8),
        max_images=4,
        seed=True,
        negative_prompt=True,
        steps=True,
        guidance=True,
        price_unit=PriceUnit.COMPUTE_SECOND,
    ),
    ModelSpec(
        id=SDXL,
        sizes=SizeRule(min_side=512, max_side=1536, multiple=8),
        max_images=4,
        seed=True,
        negative_prompt=True,
        steps=True,
        guidance=True,
        price_unit=PriceUnit.COMPUTE_SECOND,
    ),
    replace(_TOGETHER_SCHNELL, id=FLUX_SCHNELL),
    # fal takes num_inference_steps; schnell ignores guidance everywhere.
    replace(_TOGETHER_SCHNELL, id=partner_route(FLUX_SCHNELL, FAL)),
    # HF's nscale helper drops num_inference_steps and cfg: steps cannot be honoured.
    replace(_TOGETHER_SCHNELL, id=partner_route(FLUX_SCHNELL, NSCALE), steps=False),
    # Replicate's FLUX takes aspect ratios, not sizes: its own fixed size table applies.
    replace(
        next(s for s in replicate_models if s.id == REPLICATE_SCHNELL),
        id=partner_route(FLUX_SCHNELL, REPLICATE),
    ),
    # "auto" may land on any partner, so it promises only what all of them honour.
    replace(_TOGETHER_SCHNELL, id=partner_route(FLUX_SCHNELL, AUTO), steps=False),
)

# Wording of refusals by the pipelines' safety checkers; hf-inference has no documented code.
_MODERATION_WORDS = re.compile(r"nsfw|content polic|moderat|safety checker", re.I)
_MAX_MESSAGE = 300


def inference_body(req: GenerationRequest, seed: int | None) -> dict[str, Any]:
    """The hf-inference text-to-image body: `inputs` plus the task spec's `parameters`."""
    params: dict[str, Any] = {"width": req.width, "height": req.height}
    if req.negative_prompt:
        params["negative_prompt"] = req.negative_prompt
    if req.steps is not None:
        params["num_inference_steps"] = req.steps
    if req.guidance_scale is not None:
        params["guidance_scale"] = req.guidance_scale
    if seed is not None:
        params["seed"] = seed
    return {"inputs": req.prompt, "parameters": params}


def error_message(resp: httpx.Response) -> str:
    """The message from any of HF's error shapes, scrubbed of credentials.

    `{"error": str | [str]}`, `{"error", "error_description"}`, `{"errors": [{"message"}]}`,
    `{"detail"}` (partner pass-through) and the X-Error-Message / X-Error-Code headers.
    """
    parts = [error_detail(resp)]
    try:
        body = json.loads(resp.content) if resp.content else None
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("error_description"), str):
        parts.append(body["error_description"])
    header = resp.headers.get("x-error-message")
    if header and header not in parts[0]:
        parts.insert(0, header)
    code = resp.headers.get("x-error-code")
    if code:
        parts.insert(0, f"[{code}]")
    text = " ".join(" ".join(p for p in parts if p).split())[:_MAX_MESSAGE]
    try:
        request: httpx.Request | None = resp.request
    except RuntimeError:
        request = None
    return redact(text, secrets_of(request))


def estimated_time(resp: httpx.Response) -> float | None:
    """`estimated_time` of a 503 "model is loading" body, when present."""
    try:
        body = json.loads(resp.content)
    except ValueError:
        return None
    value = body.get("estimated_time") if isinstance(body, dict) else None
    return float(value) if isinstance(value, int | float) and value >= 0 else None


def special_error(resp: httpx.Response, job_id: str, partner: str) -> ProviderError | None:
    """HF readings of an error answer that the generic status table would get wrong."""
    status = resp.status_code
    message = error_message(resp)
    if partner != HF_INFERENCE:
        refused = together_wire.special_error(resp, job_id)
        if refused is not None:
            return refused
    if status in (400, 422) and _MODERATION_WORDS.search(message):
        return ProviderError(
            reasons.PROVIDER_CONTENT_MODERATED,
            f"content refused by the model's safety checker: {message}",
            http_status=status,
            provider_job_id=job_id,
        )
    if status == 503:
        wait = estimated_time(resp)
        if wait is not None:
            return ProviderError(
                reasons.PROVIDER_UNAVAILABLE,
                f"model is loading, ready in about {wait:g}s: {message}",
                http_status=status,
                retry_after_seconds=wait,
                provider_job_id=job_id,
            )
    return None
