"""Black Forest Labs API emulator: submit, get_result polling on another host, signed samples."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from imagegate.emulators.base import Emulator, edited_image, image_field, input_problem, new_id
from imagegate.providerkit.types import OutputFormat

KONTEXT_MODELS = ("flux-kontext-pro", "flux-kontext-max")
FILL_MODEL = "flux-pro-1.0-fill"
MODELS = ("flux-dev", "flux-pro-1.1", "flux-pro", *KONTEXT_MODELS, FILL_MODEL)
# Credits (1 credit = $0.01) per image, as the submit answer's `cost` reports them.
COSTS = {"flux-dev": 2.5, "flux-kontext-pro": 4.0, "flux-kontext-max": 8.0, FILL_MODEL: 5.0}
# Input images: 20 MB or 20 megapixels at most ([S] BFL docs; help.bfl.ai).
MAX_INPUT_BYTES = 20 * 1024 * 1024
MAX_INPUT_PIXELS = 20_000_000
# Kontext answers about one megapixel in the requested aspect ratio (diffusers' FLUX Kontext
# preferred resolutions, (width, height); the hosted API's exact table is [U]).
KONTEXT_SIZES = (
    (672, 1568),
    (688, 1504),
    (720, 1456),
    (752, 1392),
    (800, 1328),
    (832, 1248),
    (880, 1184),
    (944, 1104),
    (1024, 1024),
    (1104, 944),
    (1184, 880),
    (1248, 832),
    (1328, 800),
    (1392, 752),
    (1456, 720),
    (1504, 688),
    (1568, 672),
)
# Active (Pending) tasks per account before submits get 429 (help.bfl.ai).
MAX_ACTIVE_TASKS = 24
# Signed delivery URLs expire 10 minutes after generation (contracts 4.4).
SAMPLE_TTL = 600.0
_PROGRESS_STEPS = (0.3, 0.7, 1.0)
# What BFL charges per image, micro-USD (1 credit = $0.01; docs.bfl.ml pricing): each submitted
# task is charged, a moderated one is not.
PRICES = {
    "flux-dev": "25000",
    "flux-pro-1.1": "40000",
    "flux-pro": "50000",
    "flux-kontext-pro": "40000",
    "flux-kontext-max": "80000",
    "flux-pro-1.0-fill": "50000",
}


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
    size: tuple[int, int] = (1024, 768)
    source: bytes = b""


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
        errors, size, source = _validate_any(model, body)
        if errors:
            return self.json_response({"detail": errors}, 422)
        task = BflTask(
            id=new_id(),
            model=model,
            input=body,
            never_complete=bool(self.faults.take("never_complete")),
            moderation=self.moderation_status if self.faults.take("moderation") else "",
            malformed=bool(self.faults.take("malformed_json")),
            size=size,
            source=source,
        )
        self.tasks[task.id] = task
        self.charge(task.id, model, 1, "image", PRICES[model])
        # The global endpoint answers with a polling_url on a regional cluster (another host).
        polling_url = f"{self.alt_base_url}/v1/get_result?id={task.id}"
        mp = size[0] * size[1] / 1e6
        return self.json_response(
            {
                "id": task.id,
                "polling_url": polling_url,
                "cost": COSTS.get(model, 4.0),
                "input_mp": round(_input_mp(body), 3),
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
        width, height = task.size
        fmt = OutputFormat.PNG if inp.get("output_format") == "png" else OutputFormat.JPEG
        seed = int(inp.get("seed", 1935921808))
        data, declared, _ = self.result_image(width, height, fmt, seed)
        if task.source and declared == fmt.mime_type:
            data = edited_image(task.source, width, height, fmt, seed)
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


def _input_mp(body: dict[str, Any]) -> float:
    total = 0.0
    for name in ("input_image", "input_image_2", "input_image_3", "input_image_4", "image"):
        data = image_field(body.get(name))
        if data:
            info, _ = input_problem(data, name, max_bytes=MAX_INPUT_BYTES)
            total += info.width * info.height / 1e6 if info else 0.0
    return total


def _validate_any(model: str, body: Any) -> tuple[list[dict[str, Any]], tuple[int, int], bytes]:
    """Errors, output size and the input image the result derives from, for any model."""
    if not isinstance(body, dict):
        return _validate(model, body), (0, 0), b""
    if model in KONTEXT_MODELS:
        return _validate_kontext(body)
    if model == FILL_MODEL:
        return _validate_fill(body)
    size = (int(body.get("width", 1024) or 1024), int(body.get("height", 768) or 768))
    return _validate(model, body), size, b""


def _image(
    body: dict[str, Any], name: str, out: list[dict[str, Any]], *, required: bool
) -> tuple[bytes, tuple[int, int] | None]:
    value = body.get(name)
    if value is None:
        if required:
            out.append({"loc": ["body", name], "msg": "Field required", "type": "missing"})
        return b"", None
    data = image_field(value)
    if isinstance(value, str) and value.startswith(("http://", "https://")):
        # BFL would fetch it; the emulator never fetches anything.
        out.append(
            {"loc": ["body", name], "msg": "URL inputs are not emulated", "type": "value_error"}
        )
        return b"", None
    info, problem = input_problem(data, name, max_bytes=MAX_INPUT_BYTES)
    if problem is None and info is not None and info.width * info.height > MAX_INPUT_PIXELS:
        problem = f"{name} is above 20 megapixels"
    if problem is not None or info is None:
        out.append(
            {"loc": ["body", name], "msg": problem or "invalid image", "type": "value_error"}
        )
        return b"", None
    return data or b"", (info.width, info.height)


def _validate_kontext(body: dict[str, Any]) -> tuple[list[dict[str, Any]], tuple[int, int], bytes]:
    out: list[dict[str, Any]] = []
    if not isinstance(body.get("prompt"), str):
        out.append({"loc": ["body", "prompt"], "msg": "Field required", "type": "missing"})
    for name in ("width", "height", "steps", "guidance"):
        if name in body:
            out.append(
                {
                    "loc": ["body", name],
                    "msg": "Extra inputs are not permitted",
                    "type": "extra_forbidden",
                }
            )
    source, first = _image(body, "input_image", out, required=False)
    for extra in ("input_image_2", "input_image_3", "input_image_4"):
        _image(body, extra, out, required=False)
    ratio = body.get("aspect_ratio")
    target = first[0] / first[1] if first else 1.0
    if ratio is not None:
        try:
            a, b = (int(v) for v in str(ratio).split(":"))
            target = a / b
            if not 9 / 21 <= target <= 21 / 9:
                raise ValueError
        except ValueError:
            out.append(
                {
                    "loc": ["body", "aspect_ratio"],
                    "msg": "Aspect ratio must be between 21:9 and 9:21",
                    "type": "value_error",
                }
            )
    size = min(KONTEXT_SIZES, key=lambda s: abs(s[0] / s[1] - target))
    tolerance = body.get("safety_tolerance", 2)
    if not (isinstance(tolerance, int) and 0 <= tolerance <= 6):
        out.append(
            {
                "loc": ["body", "safety_tolerance"],
                "msg": "Input should be between 0 and 6",
                "type": "less_than_equal",
            }
        )
    if body.get("output_format", "png") not in ("jpeg", "png"):
        out.append(
            {
                "loc": ["body", "output_format"],
                "msg": "Input should be 'jpeg' or 'png'",
                "type": "enum",
            }
        )
    return out, size, source


def _validate_fill(body: dict[str, Any]) -> tuple[list[dict[str, Any]], tuple[int, int], bytes]:
    out: list[dict[str, Any]] = []
    if not isinstance(body.get("prompt", ""), str):
        out.append(
            {
                "loc": ["body", "prompt"],
                "msg": "Input should be a valid string",
                "type": "string_type",
            }
        )
    for name in ("width", "height", "aspect_ratio"):
        if name in body:
            out.append(
                {
                    "loc": ["body", name],
                    "msg": "Extra inputs are not permitted",
                    "type": "extra_forbidden",
                }
            )
    source, size = _image(body, "image", out, required=True)
    _, mask_size = _image(body, "mask", out, required=False)
    if size and mask_size and size != mask_size:
        out.append(
            {
                "loc": ["body", "mask"],
                "msg": f"Mask size {mask_size[0]}x{mask_size[1]} must match the image size {size[0]}x{size[1]}",
                "type": "value_error",
            }
        )
    steps = body.get("steps")
    if steps is not None and not (isinstance(steps, int) and 15 <= steps <= 50):
        out.append(
            {
                "loc": ["body", "steps"],
                "msg": "Input should be between 15 and 50",
                "type": "less_than_equal",
            }
        )
    guidance = body.get("guidance")
    if guidance is not None and not (isinstance(guidance, int | float) and 1.5 <= guidance <= 100):
        out.append(
            {
                "loc": ["body", "guidance"],
                "msg": "Input should be between 1.5 and 100",
                "type": "less_than_equal",
            }
        )
    if body.get("output_format", "jpeg") not in ("jpeg", "png"):
        out.append(
            {
                "loc": ["body", "output_format"],
                "msg": "Input should be 'jpeg' or 'png'",
                "type": "enum",
            }
        )
    return out, size or (0, 0), source
