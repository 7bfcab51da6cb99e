"""The Hugging Face Adapter: hf-inference raw-bytes calls and partner calls through the router."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import replace

import httpx

from imagegate.grpckit import reasons
from imagegate.grpckit.deadline import Deadline
from imagegate.providerkit.download import to_image
from imagegate.providerkit.errors import BilledUsage, ProviderError
from imagegate.providerkit.hosted import HostedAdapter
from imagegate.providerkit.http import error_from_status, json_body, send
from imagegate.providerkit.images import sniff_format
from imagegate.providerkit.synchronous import post_sync
from imagegate.providerkit.types import (
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    ModelSpec,
    ProgressSink,
)
from imagegate.telemetry import Telemetry
from services.huggingface import partners, wire
from services.huggingface.config import HuggingFaceSettings
from services.huggingface.partners import PartnerCall
from services.replicate.adapter import ReplicateAdapter
from services.replicate.config import ReplicateSettings
from services.together.client import TogetherCall

# Seeds drawn when the caller gives none, so each image of a fan-out differs (HF caches
# identical requests) and every delivered image reports the seed that reproduces it.
_SEED_RANGE = 2**31


class HuggingFaceAdapter(HostedAdapter[HuggingFaceSettings]):
    """SD 2.1 and SDXL on hf-inference (compute-second billing); FLUX.1 schnell through the
    router's partners: Together (the bare id), fal-ai, nscale, or "auto" (the account's order)."""

    name = "huggingface"

    def __init__(
        self, settings: HuggingFaceSettings, *, telemetry: Telemetry | None = None
    ) -> None:
        headers = {"authorization": f"Bearer {settings.key_value()}"}
        if settings.bill_to:
            headers["x-hf-bill-to"] = settings.bill_to
        super().__init__(
            settings,
            headers=headers,
            max_connections=settings.max_concurrency * 4,
            telemetry=telemetry,
        )
        self._partners = PartnerCall(
            self._client,
            self._results_from(settings.result_hosts),
            special=lambda resp, job: wire.special_error(resp, job, wire.FAL),
        )
        # The Hub's answer for the auto route: model -> (when fetched, [(partner, partner id)]).
        self._orders: dict[str, tuple[float, list[tuple[str, str]]]] = {}
        # Replicate's own client code, pointed at the router's /replicate prefix with the HF
        # token: predictions are created with `Prefer: wait` and polled through the router.
        router = settings.effective_base_url.rstrip("/")
        self._replicate = ReplicateAdapter(
            ReplicateSettings(
                key=settings.key,
                base_url=f"{router}/replicate",
                max_concurrency=settings.max_concurrency,
                poll_interval_seconds=settings.poll_interval_seconds,
                max_poll_interval_seconds=settings.max_poll_interval_seconds,
                api_hosts=(httpx.URL(router).host, "api.replicate.com"),
            ),
            telemetry=telemetry,
        )
        self._together = TogetherCall(
            self._client,
            "/together/v1/images/generations",
            self._results_from(settings.result_hosts),
            what="HF router -> together images/generations",
            special=lambda resp, job: wire.special_error(resp, job, wire.TOGETHER),
        )

    def models(self) -> list[ModelSpec]:
        return list(wire.MODEL_SPECS)

    async def aclose(self) -> None:
        await self._replicate.aclose()
        await super().aclose()

    async def generate(
        self, request: GenerationRequest, deadline: Deadline, progress: ProgressSink | None
    ) -> GenerationResult:
        route = wire.ROUTES[request.model]
        if route.partner == wire.AUTO:
            partner, provider_model = await self._first_partner(route.provider_model, deadline)
            result = await self._call(partner, provider_model, request, deadline, progress)
            # The job id names the partner that served (the model stays the route asked for).
            return replace(result, provider_job_id=f"{partner}:{result.provider_job_id}")
        return await self._call(route.partner, route.provider_model, request, deadline, progress)

    async def _call(
        self,
        partner: str,
        provider_model: str,
        request: GenerationRequest,
        deadline: Deadline,
        progress: ProgressSink | None,
    ) -> GenerationResult:
        try:
            return await self._partner_call(partner, provider_model, request, deadline, progress)
        except ProviderError as err:
            if err.reason == reasons.PROVIDER_RATE_LIMITED and partner != wire.HF_INFERENCE:
                # A partner's (or this route's) limit, not the HF account's: the Router opens
                # only this route's breaker and keeps the other partners in play.
                err.extra[reasons.META_BREAKER_SCOPE] = "model"
                err.extra["partner"] = partner
            raise

    async def _partner_call(
        self,
        partner: str,
        provider_model: str,
        request: GenerationRequest,
        deadline: Deadline,
        progress: ProgressSink | None,
    ) -> GenerationResult:
        if partner == wire.TOGETHER:
            return await self._together.generate(request, provider_model, deadline)
        if partner == wire.FAL:
            return await self._partners.fal(request, provider_model, deadline)
        if partner == wire.NSCALE:
            return await self._partners.nscale(request, provider_model, deadline)
        if partner == wire.REPLICATE:
            result = await self._replicate.generate(
                replace(request, model=provider_model), deadline, progress
            )
            return replace(result, model=request.model)
        return await self._inference(request, provider_model, deadline)

    async def _first_partner(self, model: str, deadline: Deadline) -> tuple[str, str]:
        """The first partner of the account's order (or IMAGEGATE_HF_PROVIDER_ORDER) we speak."""
        order = await self._provider_order(model, deadline)
        for partner, provider_model in order:
            if partner in wire.PARTNER_MODEL_IDS:
                return partner, provider_model
        named = ", ".join(p for p, _ in order) or "none"
        raise ProviderError(
            reasons.PROVIDER_INVALID_REQUEST,
            f"no partner in the HF account's provider order serves {model} for text-to-image "
            f"through this adapter (order: {named}; spoken: "
            f"{', '.join(sorted(wire.PARTNER_MODEL_IDS))})",
        )

    async def _provider_order(self, model: str, deadline: Deadline) -> list[tuple[str, str]]:
        settings = self._settings
        fixed = settings.partner_order()
        if fixed:
            return [(p, wire.PARTNER_MODEL_IDS.get(p, {}).get(model, model)) for p in fixed]
        now = time.monotonic()
        cached = self._orders.get(model)
        if cached is not None and now - cached[0] < settings.mapping_ttl_seconds:
            return cached[1]
        resp = await send(
            self._client,
            "GET",
            f"{settings.hub_url.rstrip('/')}/api/models/{model}",
            deadline=deadline,
            params={"expand[]": "inferenceProviderMapping"},
        )
        if resp.status_code != 200:
            raise error_from_status(resp, message="HF Hub provider mapping")
        order = partners.provider_order(json_body(resp), model)
        self._orders[model] = (now, order)
        return order

    async def _inference(
        self, request: GenerationRequest, model_id: str, deadline: Deadline
    ) -> GenerationResult:
        """One hf-inference call per image, concurrently; any failure fails the generation."""
        first = request.seed if request.seed is not None else secrets.randbelow(_SEED_RANGE)
        seeds = [first + i for i in range(request.num_images)]
        tasks: list[asyncio.Task[tuple[GeneratedImage, float, str]]] = []
        try:
            async with asyncio.TaskGroup() as group:
                for seed in seeds:
                    tasks.append(
                        group.create_task(self._one_image(request, model_id, seed, deadline))
                    )
        except* ProviderError as failed:
            err = failed.exceptions[0]
            assert isinstance(err, ProviderError)
            # Images already rendered are billed even though the generation failed.
            done = [
                t.result()
                for t in tasks
                if t.done() and not t.cancelled() and t.exception() is None
            ]
            if done:
                err.billable = True
                err.billed = BilledUsage(
                    images=len(done),
                    megapixels=len(done) * request.width * request.height / 1_000_000,
                    provider_seconds=sum(seconds for _, seconds, _ in done),
                )
            raise err from None
        results = [t.result() for t in tasks]
        return GenerationResult(
            images=[image for image, _, _ in results],
            provider_job_id=",".join(job for _, _, job in results if job),
            provider_seconds=sum(seconds for _, seconds, _ in results),
            model=request.model,
        )

    async def _one_image(
        self, request: GenerationRequest, model_id: str, seed: int, deadline: Deadline
    ) -> tuple[GeneratedImage, float, str]:
        resp = await post_sync(
            self._client,
            f"/hf-inference/models/{model_id}",
            deadline=deadline,
            json=wire.inference_body(request, seed),
            what="HF router hf-inference",
            special=lambda r, job: wire.special_error(r, job, wire.HF_INFERENCE),
            headers={"accept": request.output_format.mime_type},
        )
        job_id = resp.headers.get("x-request-id", "")
        if sniff_format(resp.content) is None:
            raise _not_an_image(resp, job_id)
        try:
            # The declared Content-Type is ignored: HF labels JPEG as whatever was asked for.
            image = await to_image(resp.content, request.output_format, seed=seed)
        except ProviderError as err:
            err.billable, err.provider_job_id = True, job_id
            raise
        return image, _compute_seconds(resp), job_id


def _compute_seconds(resp: httpx.Response) -> float:
    try:
        value = float(resp.headers.get("x-compute-time", "0"))
    except ValueError:
        return 0.0
    return value if value >= 0 else 0.0


def _not_an_image(resp: httpx.Response, job_id: str) -> ProviderError:
    ctype = resp.headers.get("content-type", "unknown")
    detail = wire.error_message(resp) if ctype.startswith("application/json") else ""
    return ProviderError(
        reasons.PROVIDER_BAD_RESPONSE,
        f"HTTP 200 with {len(resp.content)} bytes of {ctype} that are not a PNG, JPEG or WebP "
        "image" + (f": {detail}" if detail else ""),
        http_status=resp.status_code,
        billable=True,
        provider_job_id=job_id,
    )
