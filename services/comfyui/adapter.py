"""The ComfyUI Adapter: fill a workflow template, POST /prompt, follow /ws, poll /history, /view."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import uuid
from typing import Any

import aiohttp
import httpx

from imagegate.grpckit import reasons
from imagegate.grpckit.deadline import Deadline
from imagegate.providerkit.errors import ProviderError
from imagegate.providerkit.hosted import HostedAdapter
from imagegate.providerkit.http import (
    Pending,
    error_from_status,
    json_object,
    poll_until,
    send,
)
from imagegate.providerkit.images import normalize_image
from imagegate.providerkit.jobs import poll_get
from imagegate.providerkit.params import steps_and_guidance
from imagegate.providerkit.types import (
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    ModelSpec,
    Progress,
    ProgressSink,
)
from imagegate.telemetry import Telemetry
from services.comfyui.config import ComfyUISettings
from services.comfyui.workflows import Workflow, load_workflows

log = logging.getLogger(__name__)

# ComfyUI's seed input accepts 0..2**64-1; 48 bits keep it exact in every JSON reader.
_SEED_BITS = 48


class ComfyUIAdapter(HostedAdapter[ComfyUISettings]):
    """A team's ComfyUI server; `Authorization: Bearer` only when a token is configured."""

    name = "comfyui"

    def __init__(self, settings: ComfyUISettings, *, telemetry: Telemetry | None = None) -> None:
        settings.check_token_transport()
        token = settings.key_value()
        super().__init__(
            settings,
            headers={"authorization": f"Bearer {token}"} if token else {},
            max_connections=settings.max_concurrency * 2 + 2,
            telemetry=telemetry,
        )
        self._workflows: dict[str, Workflow] = load_workflows(settings.workflows)

    def models(self) -> list[ModelSpec]:
        return [w.spec for w in self._workflows.values()]

    async def generate(
        self, request: GenerationRequest, deadline: Deadline, progress: ProgressSink | None
    ) -> GenerationResult:
        workflow = self._workflows[request.model]
        limits_steps = {request.model: workflow.steps} if workflow.steps else {}
        limits_guidance = {request.model: workflow.guidance} if workflow.guidance else {}
        steps, guidance, deviations = steps_and_guidance(request, limits_steps, limits_guidance)
        seed = request.seed if request.seed is not None else secrets.randbits(_SEED_BITS)
        graph = workflow.fill(request, seed=seed, steps=steps, guidance=guidance)
        client_id = uuid.uuid4().hex
        socket: asyncio.Task[None] | None = None
        opened = asyncio.Event()
        prompt_id_box: dict[str, str] = {}
        if progress is not None and self._settings.progress_socket:
            # Opened before the prompt is queued, so its first step is not missed.
            socket = asyncio.ensure_future(self._follow(client_id, prompt_id_box, progress, opened))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(2.0, max(0.0, deadline.remaining() / 4))):
                    await opened.wait()
        try:
            return await self._run(
                request, graph, client_id, seed, deadline, progress, prompt_id_box, deviations
            )
        finally:
            if socket is not None:
                socket.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await socket

    async def _run(
        self,
        request: GenerationRequest,
        graph: dict[str, Any],
        client_id: str,
        seed: int,
        deadline: Deadline,
        progress: ProgressSink | None,
        prompt_id_box: dict[str, str],
        deviations: list[Any],
    ) -> GenerationResult:
        resp = await send(
            self._client,
            "POST",
            "/prompt",
            deadline=deadline,
            json={"prompt": graph, "client_id": client_id},
        )
        if resp.status_code == 400:
            raise self._refused(resp)
        if resp.status_code >= 300:
            raise error_from_status(resp, message="queueing the workflow failed")
        queued = json_object(resp)
        prompt_id = queued.get("prompt_id")
        if not isinstance(prompt_id, str) or not prompt_id:
            raise ProviderError(reasons.PROVIDER_BAD_RESPONSE, "POST /prompt answered no prompt_id")
        prompt_id_box["id"] = prompt_id
        if progress is not None:
            number = queued.get("number")
            await progress(
                Progress(
                    state="QUEUED",
                    queue_position=number if isinstance(number, int) else -1,
                    provider_job_id=prompt_id,
                )
            )

        async def step(d: Deadline) -> dict[str, Any] | Pending:
            r = await poll_get(self._client, f"/history/{prompt_id}", deadline=d, job_id=prompt_id)
            if isinstance(r, Pending):
                return r
            if r.status_code != 200:
                raise error_from_status(r, message="history failed", job_id=prompt_id)
            history = json_object(r, job_id=prompt_id)
            entry = history.get(prompt_id)
            if entry is None:
                return Pending()
            if not isinstance(entry, dict):
                raise _bad(f"history entry of {prompt_id} is not an object", prompt_id)
            return entry

        entry = await poll_until(
            deadline,
            self._settings.poll_interval_seconds,
            step,
            on_timeout=self._interrupt(prompt_id),
            what="ComfyUI prompt",
            job_id=prompt_id,
            billable=False,
            max_interval=self._settings.max_poll_interval_seconds,
            background=self._background,
        )
        raw_status = entry.get("status")
        status: dict[str, Any] = raw_status if isinstance(raw_status, dict) else {}
        raw_messages = status.get("messages")
        messages: list[Any] = raw_messages if isinstance(raw_messages, list) else []
        if status.get("status_str") != "success":
            raise self._failed(messages, prompt_id)
        images = await self._images(entry, request, deadline, prompt_id, seed)
        return GenerationResult(
            images=images,
            provider_job_id=prompt_id,
            provider_seconds=_execution_seconds(messages),
            deviations=deviations,
            model=request.model,
        )

    async def _images(
        self,
        entry: dict[str, Any],
        request: GenerationRequest,
        deadline: Deadline,
        prompt_id: str,
        seed: int,
    ) -> list[GeneratedImage]:
        outputs = entry.get("outputs")
        files: list[dict[str, Any]] = []
        if isinstance(outputs, dict):
            for node in outputs.values():
                if isinstance(node, dict) and isinstance(node.get("images"), list):
                    files.extend(f for f in node["images"] if isinstance(f, dict))
        files = [f for f in files if f.get("type", "output") == "output"]
        if not files:
            raise _bad("the workflow finished without an output image", prompt_id)
        images = []
        for f in files[: request.num_images]:
            params = {
                "filename": str(f.get("filename", "")),
                "subfolder": str(f.get("subfolder", "")),
                "type": "output",
            }
            r = await send(self._client, "GET", "/view", deadline=deadline, params=params)
            if r.status_code == 404:
                raise _bad(
                    f"output file {params['filename']!r} is gone (404 from /view)", prompt_id
                )
            if r.status_code >= 300:
                raise error_from_status(r, message="fetching the output failed", job_id=prompt_id)
            if len(r.content) > self._settings.max_image_bytes:
                raise _bad(f"output file is {len(r.content)} bytes, over the limit", prompt_id)
            try:
                images.append(normalize_image(r.content, request.output_format, seed=seed))
            except ProviderError as err:
                err.provider_job_id = prompt_id
                raise
        return images

    def _refused(self, resp: httpx.Response) -> ProviderError:
        """A 400 from /prompt: the server cannot run our template (missing checkpoint, node)."""
        detail = ""
        with contextlib.suppress(ValueError):
            body = resp.json()
            error = body.get("error") if isinstance(body, dict) else None
            if isinstance(error, dict):
                detail = f"{error.get('type', '')}: {error.get('message', '')}"
            node_errors = body.get("node_errors") if isinstance(body, dict) else None
            if isinstance(node_errors, dict) and node_errors:
                detail += f" (nodes {', '.join(sorted(map(str, node_errors)))})"
        # The server, not the caller, cannot run this model: the next candidate may.
        return ProviderError(
            reasons.PROVIDER_UNAVAILABLE,
            f"the server refused the workflow: {detail or 'HTTP 400'}",
            http_status=400,
        )

    def _failed(self, messages: list[Any], prompt_id: str) -> ProviderError:
        for item in messages:
            if isinstance(item, list) and len(item) == 2 and isinstance(item[1], dict):
                kind, data = item
                if kind == "execution_error":
                    text = " ".join(str(data.get("exception_message", ""))[:300].split())
                    return ProviderError(
                        reasons.PROVIDER_UNAVAILABLE,
                        f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                        f"{data.get('exception_type', '')}: {text}",
                        provider_job_id=prompt_id,
                    )
                if kind == "execution_interrupted":
                    return ProviderError(
                        reasons.PROVIDER_UNAVAILABLE,
                        "the prompt was interrupted on the server",
                        provider_job_id=prompt_id,
                    )
        return _bad("the prompt ended without success and without an error message", prompt_id)

    def _interrupt(self, prompt_id: str) -> Any:
        """poll_until's on_timeout: stop the prompt if running, drop it if still queued."""

        async def interrupt(deadline: Deadline) -> None:
            # Interrupt first: it frees the GPU; the queue delete only matters if it waits.
            for path, body in (
                ("/interrupt", {"prompt_id": prompt_id}),
                ("/queue", {"delete": [prompt_id]}),
            ):
                with contextlib.suppress(ProviderError):
                    r = await send(
                        self._client, "POST", path, deadline=Deadline.after(5.0), json=body
                    )
                    log.info(
                        "ComfyUI prompt stopped at the deadline",
                        extra={
                            "provider_job_id": prompt_id,
                            "path": path,
                            "http_status": r.status_code,
                        },
                    )

        return interrupt

    async def _follow(
        self,
        client_id: str,
        prompt_id_box: dict[str, str],
        progress: ProgressSink,
        opened: asyncio.Event,
    ) -> None:
        """Reads /ws and reports KSampler steps of our prompt; best effort (history decides)."""
        url = httpx.URL(self._base_url)
        ws_url = url.copy_with(
            scheme="wss" if url.scheme == "https" else "ws",
            path=url.path.rstrip("/") + "/ws",
            query=f"clientId={client_id}".encode(),
        )
        headers = {k: v for k, v in self._client.headers.items() if k == "authorization"}
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.ws_connect(str(ws_url), headers=headers, heartbeat=30) as ws,
            ):
                opened.set()
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    with contextlib.suppress(ValueError):
                        event = json.loads(msg.data)
                        await self._on_event(event, prompt_id_box, progress)
        except (aiohttp.ClientError, OSError) as err:
            log.info("ComfyUI progress socket unavailable", extra={"error": type(err).__name__})
        finally:
            opened.set()

    @staticmethod
    async def _on_event(event: Any, prompt_id_box: dict[str, str], progress: ProgressSink) -> None:
        if not isinstance(event, dict) or not isinstance(event.get("data"), dict):
            return
        data = event["data"]
        mine = prompt_id_box.get("id")
        if mine is None or data.get("prompt_id") != mine:
            return
        kind = event.get("type")
        if kind == "execution_start":
            await progress(Progress(state="RUNNING", fraction=0.0, provider_job_id=mine))
        elif kind == "progress":
            value, top = data.get("value"), data.get("max")
            if isinstance(value, int) and isinstance(top, int) and top > 0:
                await progress(
                    Progress(state="SAMPLING", fraction=value / top, provider_job_id=mine)
                )


def _bad(message: str, prompt_id: str) -> ProviderError:
    return ProviderError(reasons.PROVIDER_BAD_RESPONSE, message, provider_job_id=prompt_id)


def _execution_seconds(messages: list[Any]) -> float:
    """Seconds between execution_start and execution_success (ms timestamps in the history)."""
    stamps: dict[str, float] = {}
    for item in messages:
        if isinstance(item, list) and len(item) == 2 and isinstance(item[1], dict):
            ts = item[1].get("timestamp")
            if isinstance(ts, int | float) and not isinstance(ts, bool):
                stamps[str(item[0])] = float(ts)
    if "execution_start" in stamps and "execution_success" in stamps:
        return max(0.0, (stamps["execution_success"] - stamps["execution_start"]) / 1000)
    return 0.0
