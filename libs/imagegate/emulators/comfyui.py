"""ComfyUI server emulator: POST /prompt, GET /history/{id}, GET /view, /ws progress, /interrupt.

It executes API-format workflow graphs the way ComfyUI's queue does (one prompt at a time,
KSampler steps reported on the socket, SaveImage outputs in the history) without a model: the
images are rendered from the EmptyLatentImage size and the KSampler seed. A bearer token is
checked when `key` is set (ComfyUI has none itself; teams put a proxy in front of it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from imagegate.emulators.base import Emulator, new_id
from imagegate.providerkit.types import OutputFormat

# Seconds per KSampler step when the emulator has no latency set.
_STEP_SECONDS = 0.01


@dataclass
class ComfyJob:
    """One queued prompt."""

    id: str
    number: int
    client_id: str
    graph: dict[str, Any]
    width: int
    height: int
    batch: int
    steps: int
    seed: int
    never_complete: bool = False
    failing: bool = False
    malformed_history: bool = False
    state: str = "pending"
    """pending -> running -> success | error | interrupted (or deleted while pending)."""
    messages: list[list[Any]] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    interrupt: asyncio.Event = field(default_factory=asyncio.Event)


class ComfyUIEmulator(Emulator):
    """Emulates a ComfyUI server (optionally behind a proxy asking `Authorization: Bearer`)."""

    name = "comfyui"
    expired_status = 404

    def __init__(self, *, latency: float = 0.0, key: str | None = None) -> None:
        super().__init__(latency=latency, key=key)
        self.jobs: dict[str, ComfyJob] = {}
        """Prompts by prompt_id."""
        self.outputs: dict[str, tuple[bytes, str]] = {}
        """Files under output/ by filename: (bytes, content type)."""
        self.interrupts: list[str] = []
        """prompt_id of each POST /interrupt ("" when the body named none)."""
        self.deleted: list[str] = []
        """prompt_ids removed from the queue with POST /queue {"delete": [...]}."""
        self._queue: asyncio.Queue[ComfyJob] = asyncio.Queue()
        self._sockets: dict[str, list[web.WebSocketResponse]] = {}
        self._runner_task: asyncio.Task[None] | None = None
        self._numbers = 0

    def add_routes(self, app: web.Application) -> None:
        for prefix in ("", "/api"):
            app.router.add_post(f"{prefix}/prompt", self._prompt)
            app.router.add_get(f"{prefix}/history/{{prompt_id}}", self._history)
            app.router.add_get(f"{prefix}/view", self._view)
            app.router.add_get(f"{prefix}/queue", self._queue_state)
            app.router.add_post(f"{prefix}/queue", self._queue_edit)
            app.router.add_post(f"{prefix}/interrupt", self._interrupt)
        app.router.add_get("/ws", self._ws)
        app.on_startup.append(self._start_runner)
        app.on_cleanup.append(self._stop_runner)

    def authorized(self, request: web.Request) -> bool:
        if self.key is None:
            return True
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return scheme == "Bearer" and self.credential_ok(token)

    def _guard(self, request: web.Request) -> web.Response | None:
        if self.faults.take("auth_failed") or not self.authorized(request):
            return web.Response(status=401, text="401 Unauthorized", content_type="text/plain")
        if self.faults.take("out_of_credits"):
            # The proxy's quota for this team's GPU pool is spent.
            return self.json_response({"error": "GPU pool quota exhausted"}, 402)
        return None

    # ---- queue

    async def _start_runner(self, _app: web.Application) -> None:
        self._runner_task = asyncio.ensure_future(self._run_queue())

    async def _stop_runner(self, _app: web.Application) -> None:
        if self._runner_task is not None:
            self._runner_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner_task
        for sockets in self._sockets.values():
            for ws in sockets:
                await ws.close()

    async def _run_queue(self) -> None:
        while True:
            job = await self._queue.get()
            if job.state != "pending":
                continue
            await self._execute(job)

    async def _execute(self, job: ComfyJob) -> None:
        job.state = "running"
        started = int(time.time() * 1000)
        job.messages.append(["execution_start", {"prompt_id": job.id, "timestamp": started}])
        await self._send(job.client_id, "execution_start", {"prompt_id": job.id})
        sampler = _first(job.graph, "KSampler")
        await self._send(job.client_id, "executing", {"node": sampler, "prompt_id": job.id})
        per_step = (self.latency / job.steps) if self.latency > 0 else _STEP_SECONDS
        step = 0
        while step < job.steps or job.never_complete:
            if job.interrupt.is_set():
                job.state = "interrupted"
                data = {"prompt_id": job.id, "node_id": sampler, "node_type": "KSampler"}
                job.messages.append(["execution_interrupted", data])
                await self._send(job.client_id, "execution_interrupted", data)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.interrupt.wait(), timeout=per_step)
            if job.interrupt.is_set():
                continue
            step = min(step + 1, job.steps)
            await self._send(
                job.client_id,
                "progress",
                {"value": step, "max": job.steps, "prompt_id": job.id, "node": sampler},
            )
        if job.failing:
            job.state = "error"
            data = {
                "prompt_id": job.id,
                "node_id": sampler,
                "node_type": "KSampler",
                "exception_message": "CUDA error: an illegal memory access was encountered",
                "exception_type": "RuntimeError",
            }
            job.messages.append(["execution_error", data])
            await self._send(job.client_id, "execution_error", data)
            return
        for node_id, node in job.graph.items():
            if node.get("class_type") != "SaveImage":
                continue
            prefix = str(node.get("inputs", {}).get("filename_prefix", "ComfyUI"))
            images = []
            for i in range(job.batch):
                picture, declared, _ = self.result_image(
                    job.width, job.height, OutputFormat.PNG, job.seed + i
                )
                filename = f"{prefix}_{job.number:05d}_{i:02d}_.png"
                self.outputs[filename] = (picture, declared)
                images.append({"filename": filename, "subfolder": "", "type": "output"})
            job.outputs[node_id] = {"images": images}
            await self._send(
                job.client_id,
                "executed",
                {"node": node_id, "output": job.outputs[node_id], "prompt_id": job.id},
            )
        job.state = "success"
        done = int(time.time() * 1000)
        job.messages.append(["execution_success", {"prompt_id": job.id, "timestamp": done}])
        await self._send(job.client_id, "executing", {"node": None, "prompt_id": job.id})
        await self._send(job.client_id, "execution_success", {"prompt_id": job.id})

    async def _send(self, client_id: str, kind: str, data: dict[str, Any]) -> None:
        for ws in list(self._sockets.get(client_id, ())):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_json({"type": kind, "data": data})

    # ---- routes

    async def _prompt(self, request: web.Request) -> web.StreamResponse:
        denied = self._guard(request)
        if denied is not None:
            return denied
        if fault := self.faults.take("rate_limit"):
            return web.Response(
                status=429,
                text="429 Too Many Requests",
                content_type="text/plain",
                headers=self.retry_after_headers(fault),
            )
        if fault := self.faults.take("error_500", "error_502", "error_503"):
            status = int(fault.kind.removeprefix("error_"))
            headers = self.retry_after_headers(fault) if status == 503 else {}
            return web.Response(
                status=status,
                text=f"{status} from proxy",
                content_type="text/plain",
                headers=headers,
            )
        if self.faults.take("hang"):
            return await self.hang()
        try:
            body = await request.json()
        except ValueError:
            return self._invalid("invalid_prompt", "Invalid prompt", "body is not JSON")
        graph = body.get("prompt") if isinstance(body, dict) else None
        if not isinstance(graph, dict) or not all(
            isinstance(n, dict) and "class_type" in n and isinstance(n.get("inputs"), dict)
            for n in graph.values()
        ):
            return self._invalid("invalid_prompt", "Invalid prompt", "not an API-format graph")
        if not any(n["class_type"] == "SaveImage" for n in graph.values()):
            return self._invalid("prompt_no_outputs", "Prompt has no outputs", "")
        latent = graph.get(_latent(graph) or "", {}).get("inputs", {})
        sampler = graph.get(_first(graph, "KSampler") or "", {}).get("inputs", {})
        try:
            width, height = int(latent["width"]), int(latent["height"])
            batch = int(latent.get("batch_size", 1))
            steps, seed = int(sampler["steps"]), int(sampler["seed"])
        except (KeyError, TypeError, ValueError):
            return self._invalid(
                "prompt_outputs_failed_validation", "Prompt outputs failed validation", "inputs"
            )
        self._numbers += 1
        job = ComfyJob(
            id=new_id(),
            number=self._numbers,
            client_id=str(body.get("client_id", "")),
            graph=graph,
            width=width,
            height=height,
            batch=batch,
            steps=max(1, steps),
            seed=seed,
            never_complete=bool(self.faults.take("never_complete")),
            failing=bool(self.faults.take("moderation")),
            malformed_history=bool(self.faults.take("malformed_json")),
        )
        self.jobs[job.id] = job
        self._queue.put_nowait(job)
        return self.json_response({"prompt_id": job.id, "number": job.number, "node_errors": {}})

    def _invalid(self, kind: str, message: str, details: str) -> web.Response:
        return self.json_response(
            {
                "error": {"type": kind, "message": message, "details": details, "extra_info": {}},
                "node_errors": {},
            },
            400,
        )

    async def _history(self, request: web.Request) -> web.StreamResponse:
        denied = self._guard(request)
        if denied is not None:
            return denied
        job = self.jobs.get(request.match_info["prompt_id"])
        if job is None or job.state in ("pending", "running", "deleted"):
            return self.json_response({})
        if job.malformed_history:
            return self.malformed_json()
        status = "success" if job.state == "success" else "error"
        entry = {
            "prompt": [job.number, job.id, job.graph, {"client_id": job.client_id}, []],
            "outputs": job.outputs,
            "status": {
                "status_str": status,
                "completed": job.state == "success",
                "messages": job.messages,
            },
            "meta": {},
        }
        return self.json_response({job.id: entry})

    async def _view(self, request: web.Request) -> web.StreamResponse:
        denied = self._guard(request)
        if denied is not None:
            return denied
        stored = self.outputs.get(request.query.get("filename", ""))
        if stored is None or request.query.get("type", "output") != "output":
            return web.Response(status=404)
        if self.faults.take("expired_url"):
            # The output directory was cleaned between the history answer and the download.
            return web.Response(status=404)
        data, content_type = stored
        if self.faults.take("slow_body"):
            return await self.slow(request, data, content_type=content_type)
        return web.Response(body=data, content_type=content_type)

    async def _queue_state(self, request: web.Request) -> web.StreamResponse:
        denied = self._guard(request)
        if denied is not None:
            return denied

        def item(j: ComfyJob) -> list[Any]:
            return [j.number, j.id, j.graph, {"client_id": j.client_id}, []]

        return self.json_response(
            {
                "queue_running": [item(j) for j in self.jobs.values() if j.state == "running"],
                "queue_pending": [item(j) for j in self.jobs.values() if j.state == "pending"],
            }
        )

    async def _queue_edit(self, request: web.Request) -> web.StreamResponse:
        denied = self._guard(request)
        if denied is not None:
            return denied
        body = await request.json()
        for prompt_id in body.get("delete", []) if isinstance(body, dict) else []:
            job = self.jobs.get(str(prompt_id))
            if job is not None and job.state == "pending":
                job.state = "deleted"
                self.deleted.append(job.id)
        return web.Response(status=200)

    async def _interrupt(self, request: web.Request) -> web.StreamResponse:
        denied = self._guard(request)
        if denied is not None:
            return denied
        body: Any = {}
        if request.body_exists:
            with contextlib.suppress(ValueError):
                body = await request.json()
        wanted = str(body.get("prompt_id", "")) if isinstance(body, dict) else ""
        self.interrupts.append(wanted)
        for job in self.jobs.values():
            # ComfyUI interrupts the running prompt; with a prompt_id, only if it is that one.
            if job.state == "running" and wanted in ("", job.id):
                job.interrupt.set()
        return web.Response(status=200)

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        if not self.authorized(request):
            return web.Response(status=401)
        client_id = request.query.get("clientId") or new_id()
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.setdefault(client_id, []).append(ws)
        pending = sum(j.state in ("pending", "running") for j in self.jobs.values())
        await ws.send_json(
            {
                "type": "status",
                "data": {"status": {"exec_info": {"queue_remaining": pending}}, "sid": client_id},
            }
        )
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            self._sockets[client_id].remove(ws)
        return ws


def _first(graph: dict[str, Any], class_type: str) -> str | None:
    """The id of the first node of `class_type`."""
    return next((k for k, n in graph.items() if n.get("class_type") == class_type), None)


def _latent(graph: dict[str, Any]) -> str | None:
    """The id of the empty-latent node (EmptyLatentImage, EmptySD3LatentImage, ...)."""
    return next(
        (
            k
            for k, n in graph.items()
            if str(n.get("class_type", "")).startswith("Empty")
            and str(n.get("class_type", "")).endswith("LatentImage")
        ),
        None,
    )
