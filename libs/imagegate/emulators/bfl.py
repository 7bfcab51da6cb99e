"""Black Forest Labs API emulator: submit, get_result polling on another host, signed samples."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from imagegate.emulators.base import Emulator, new_id
from imagegate.providerkit.types import OutputFormat

MODELS = ("flux-dev", "flux-pro-1.1", "flux-pro")
# Active (Pending) tasks per account before submits get 429 (help.bfl.ai).
MAX_ACTIVE_TASKS = 24
# Signed delivery URLs expire 10 minutes after generation (contracts 4.4).
SAMPLE_TTL = 600.0
_PROGRESS_STEPS = (0.3, 0.7, 1.0)
# What BFL charges per image, micro-USD (1 credit = $0.01; docs.bfl.ml pricing): each submitted
# task is charged, a moderated one is not.
PRICES = {"flux-dev": "25000", "flux-pro-1.1": "40000", "flux-pro": "50000"}


@dataclass
class BflTask:
    """One submitted task."""

    id: str
    model: str
    input: dict[str, Any]
    created: float = field(default_factory=time.monotonic)
    polls: int = 0
    status: str = "Pending"
    result: dict[str, Any] | None = None
    details: dict[str, Any] | None = None
    never_complete: bool = False
    moderation: str = ""
    malformed: bool = False


class BflEmulator(Emulator):
    """Emulates https://api.bfl.ai (`x-key`), polling_url on a second host name."""

    name = "bfl"
    expired_status = 403

    def __init__(
        self,
        *,
        latency: float = 0.0,
        key: str | None = None,
        poll_retry_after: float = 1.0,
        sample_ttl: float = SAMPLE_TTL,
        moderation_status: str = "Content Moderated",
    ) -> None:
        super().__init__(latency=latency, key=key)
        self.poll_retry_after = poll_retry_after
        """retry-after sent on get_result answers (BFL sends 1)."""
        self.sample_ttl = sample_ttl
        """Seconds a result.sample URL stays valid."""
        self.moderation_status = moderation_status
        """Status the moderation fault produces: "Content Moderated" or "Request Moderated"."""
        self.tasks: dict[str, BflTask] = {}
        """Tasks by id."""

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/get_result", self._get_result)
        app.router.add_post("/v1/{model}", self._submit)

    def authorized(self, request: web.Request) -> bool:
        return self.credential_ok(request.headers.get("x-key"))

    @property
    def active_tasks(self) -> int:
        """Tasks still Pending."""
        return sum(1 for t in self.tasks.values() if t.status == "Pending")

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        if self.faults.take("auth_failed") or not self.authorized(request):
            return self.json_response({"detail": "Not authenticated - Invalid Authentication"}, 403)
        if self.faults.take("out_of_credits"):
            return self.json_response(
                {"detail": "Insufficient credits. Please add credits at api.bfl.ai"}, 402
            )
        fault = self.faults.take("rate_limit")
        if fault or self.active_tasks >= MAX_ACTIVE_TASKS:
            headers = self.retry_after_headers(fault) if fault else {"Retry-After": "1"}
            return self.json_response(
                {"detail": f"You have exceeded the limit of {MAX_ACTIVE_TASKS} active tasks."},
                429,
                headers,
            )
        if fault := self.faults.take("error_500", "error_502", "error_503"):
            status = int(fault.kind.removeprefix("error_"))
            headers = self.retry_after_headers(fault) if status == 503 else {}
            return self.json_response({"detail": "Internal Server Error"}, status, headers)
        if self.faults.take("hang"):
            return await self.hang()
        model = request.match_info["model"]
        if model not in MODELS:
            return self.json_response({"detail": "Not Found"}, 404)
        try:
            body = await request.json()
        except ValueError:
            return self.json_response({"detail": "Invalid JSON"}, 400)
        errors = _validate(model, body)
        if errors:
            return self.json_response({"detail": errors}, 422)
        task = BflTask(
            id=new_id(),
            model=model,
            input=body,
            never_complete=bool(self.faults.take("never_complete")),
            moderation=self.moderation_status if self.faults.take("moderation") else "",
            malformed=bool(self.faults.take("malformed_json")),
        )
        self.tasks[task.id] = task
        self.charge(task.id, model, 1, "image", PRICES[model])
        # The global endpoint answers with a polling_url on a regional cluster (another host).
        polling_url = f"{self.alt_base_url}/v1/get_result?id={task.id}"
        mp = body.get("width", 1024) * body.get("height", 768) / 1e6
        return self.json_response(
            {
                "id": task.id,
                "polling_url": polling_url,
                "cost": 2.5 if model == "flux-dev" else 4.0,
                "input_mp": 0,
                "output_mp": round(mp, 3),
            }
        )

    async def _get_result(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("x-key") is not None and not self.authorized(request):
            return self.json_response({"detail": "Not authenticated - Invalid Authentication"}, 403)
        headers = {
            "retry-after": f"{self.poll_retry_after:g}",
            "x-ratelimit-limit": "1200",
            "x-ratelimit-remaining": "1199",
        }
        task = self.tasks.get(request.query.get("id", ""))
        if task is None:
            return self.json_response(
                {"id": request.query.get("id", ""), "status": "Task not found", "result": None},
                200,
                headers,
            )
        if task.malformed:
            return self.malformed_json(200, headers)
        task.polls += 1
        self._advance(task)
        body: dict[str, Any] = {
            "id": task.id,
            "status": task.status,
            "result": task.result,
            "progress": None,
            "details": task.details,
        }
        if task.status == "Pending":
            step = min(task.polls, len(_PROGRESS_STEPS)) - 1
            body["progress"] = 0.1 if task.never_complete else _PROGRESS_STEPS[step]
        return self.json_response(body, 200, headers)

    def _advance(self, task: BflTask) -> None:
        if task.status != "Pending" or task.never_complete:
            return
        if task.moderation:
            self.refund(task.id)
            task.status = task.moderation
            task.details = {"Moderation Reasons": ["Derivative Works Filter"]}
            return
        if task.polls < len(_PROGRESS_STEPS) or time.monotonic() - task.created < self.latency:
            return
        inp = task.input
        width, height = int(inp.get("width", 1024)), int(inp.get("height", 768))
        fmt = OutputFormat.PNG if inp.get("output_format") == "png" else OutputFormat.JPEG
        seed = int(inp.get("seed", 1935921808))
        data, declared, _ = self.result_image(width, height, fmt, seed)
        ext = "png" if declared == "image/png" else "jpeg"
        url = self.store_file(
            data, declared, ttl=self.sample_ttl, suffix=f"/sample.{ext}", base_url=self.alt_base_url
        )
        end = time.time()
        task.status = "Ready"
        task.result = {
            "sample": f"{url}?se=2099-01-01T00%3A00%3A00Z&sp=r&sv=2024-11-04&sr=b&sig=emulated",
            "prompt": inp.get("prompt", ""),
            "seed": seed,
            "start_time": end - 0.2,
            "end_time": end,
            "duration": 0.2,
        }

    def fail(self, task_id: str, details: dict[str, Any]) -> None:
        """Makes a task end with status "Error"."""
        task = self.tasks[task_id]
        task.status, task.details = "Error", details


def _validate(model: str, body: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def bad(name: str, msg: str, kind: str) -> None:
        out.append({"loc": ["body", name], "msg": msg, "type": kind})

    if not isinstance(body, dict):
        return [{"loc": ["body"], "msg": "Input should be a valid dictionary", "type": "dict_type"}]
    if not isinstance(body.get("prompt"), str):
        bad("prompt", "Field required", "missing")
    for side in ("width", "height"):
        v = body.get(side)
        if v is not None and (not isinstance(v, int) or not 256 <= v <= 1440 or v % 32):
            bad(side, "Input should be a multiple of 32 between 256 and 1440", "value_error")
    if model == "flux-pro-1.1":
        for name in ("steps", "guidance"):
            if name in body:
                bad(name, "Extra inputs are not permitted", "extra_forbidden")
    else:
        steps = body.get("steps")
        if steps is not None and not (isinstance(steps, int) and 1 <= steps <= 50):
            bad("steps", "Input should be between 1 and 50", "less_than_equal")
        guidance = body.get("guidance")
        if guidance is not None and not (
            isinstance(guidance, int | float) and 1.5 <= guidance <= 5
        ):
            bad("guidance", "Input should be between 1.5 and 5", "less_than_equal")
    tolerance = body.get("safety_tolerance", 2)
    if not (isinstance(tolerance, int) and 0 <= tolerance <= 6):
        bad("safety_tolerance", "Input should be between 0 and 6", "less_than_equal")
    if body.get("output_format", "jpeg") not in ("jpeg", "png"):
        bad("output_format", "Input should be 'jpeg' or 'png'", "enum")
    return out
