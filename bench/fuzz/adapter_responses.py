"""Fuzz target: each hosted adapter facing arbitrary provider HTTP answers fails only as ProviderError."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from hypothesis import strategies as st
from PIL import Image

from imagegate.grpckit.deadline import Deadline
from imagegate.providerkit.adapter import Adapter
from imagegate.providerkit.errors import ProviderError
from imagegate.providerkit.types import GenerationRequest, GenerationResult, ModelSpec

KEY = "fuzz-not-a-real-key"
# Keys the adapters read from provider answers (services/*/adapter.py, wire.py), so generated
# bodies get past the first lookup often enough to reach the deeper parsing.
KEYS = [
    "id", "request_id", "status", "status_url", "response_url", "cancel_url", "queue_position",
    "images", "image", "url", "urls", "get", "cancel", "content_type", "width", "height", "seed",
    "polling_url", "result", "sample", "data", "b64_json", "output", "error", "detail", "message",
    "metrics", "predict_time", "usage", "input_tokens", "output_tokens", "timings", "inference",
    "has_nsfw_concepts", "logs", "created", "finish_reason", "code", "type", "model", "choices",
]  # fmt: skip
STATUSES = [200, 201, 202, 400, 401, 402, 403, 404, 408, 409, 413, 422, 429, 500, 502, 503, 504]


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


PNG = _png()
STATUS_WORDS = [
    "IN_QUEUE", "IN_PROGRESS", "COMPLETED", "succeeded", "failed", "canceled", "processing",
    "starting", "Ready", "Pending", "Error", "Content Moderated", "Request Moderated", "OK", "",
]  # fmt: skip


def _urls(hosts: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.builds(lambda h, p: f"https://{h}/{p}", st.sampled_from(hosts), st.text(max_size=12)),
        st.sampled_from(["", "not a url", "http://127.0.0.1:1/x", "file:///etc/passwd", "//x"]),
        st.text(max_size=30),
    )


def _leaves(hosts: list[str]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=20),
        st.sampled_from(STATUS_WORDS),
        _urls(hosts),
        st.just(base64.b64encode(PNG).decode()),
        st.just("data:image/png;base64," + base64.b64encode(PNG).decode()),
    )


def json_values(hosts: list[str]) -> st.SearchStrategy[Any]:
    """JSON built from the keys adapters read, with hostile leaves."""
    return st.recursive(
        _leaves(hosts),
        lambda inner: st.one_of(
            st.lists(inner, max_size=5),
            st.dictionaries(
                st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=6
            ),
        ),
        max_leaves=25,
    )


@dataclass(frozen=True)
class Answer:
    """One scripted HTTP answer."""

    status: int
    body: bytes
    content_type: str
    retry_after: str | None


def answers(hosts: list[str]) -> st.SearchStrategy[Answer]:
    """An HTTP answer: JSON, an image, or junk, with any status."""
    body = st.one_of(
        json_values(hosts).map(lambda v: json.dumps(v, allow_nan=True).encode()),
        st.just(PNG),
        st.binary(max_size=64),
        st.just(b""),
    )
    return st.builds(
        Answer,
        status=st.sampled_from(STATUSES),
        body=body,
        content_type=st.sampled_from(["application/json", "image/png", "text/html", ""]),
        retry_after=st.one_of(st.none(), st.sampled_from(["0", "0.01", "-1", "abc", "1e9"])),
    )


def _mock_client(base_url: str, headers: httpx.Headers, script: list[Answer]) -> httpx.AsyncClient:
    remaining = list(script)

    def handle(request: httpx.Request) -> httpx.Response:
        if not remaining:
            # Out of script: a terminal refusal, so polling loops end quickly.
            return httpx.Response(400, json={"detail": "fuzz script ended"})
        answer = remaining.pop(0)
        out_headers = {"content-type": answer.content_type} if answer.content_type else {}
        if answer.retry_after is not None:
            out_headers["retry-after"] = answer.retry_after
        return httpx.Response(answer.status, content=answer.body, headers=out_headers)

    return httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        transport=httpx.MockTransport(handle),
        follow_redirects=False,
        trust_env=False,
    )


# Set by `recorded()`: the emulator's address and credential, so URLs in recorded answers pass
# the adapters' host checks exactly as they did against the emulator.
_ENDPOINT: dict[str, tuple[str, str]] = {}
_BUILDING: list[str] = []


def _fast(settings_cls: Any) -> Any:
    base_url, key = _ENDPOINT.get(_BUILDING[-1], ("", KEY)) if _BUILDING else ("", KEY)
    extra = {"base_url": base_url} if base_url else {}
    return settings_cls(
        key=key, poll_interval_seconds=0.001, max_poll_interval_seconds=0.001, **extra
    )


def build(name: str) -> Adapter:
    """The adapter `name`, pointed where its happy path was recorded (if it was)."""
    _BUILDING.append(name)
    try:
        return ADAPTERS[name]()
    finally:
        _BUILDING.pop()


def _fal() -> Adapter:
    from services.fal.adapter import FalAdapter
    from services.fal.config import FalSettings

    return FalAdapter(_fast(FalSettings))


def _bfl() -> Adapter:
    from services.bfl.adapter import BflAdapter
    from services.bfl.config import BflSettings

    return BflAdapter(_fast(BflSettings))


def _replicate() -> Adapter:
    from services.replicate.adapter import ReplicateAdapter
    from services.replicate.config import ReplicateSettings

    return ReplicateAdapter(_fast(ReplicateSettings))


def _huggingface() -> Adapter:
    from services.huggingface.adapter import HuggingFaceAdapter
    from services.huggingface.config import HuggingFaceSettings

    return HuggingFaceAdapter(_fast(HuggingFaceSettings))


def _openai() -> Adapter:
    from services.openai.adapter import OpenAIAdapter
    from services.openai.config import OpenAISettings

    return OpenAIAdapter(_fast(OpenAISettings))


def _together() -> Adapter:
    from services.together.adapter import TogetherAdapter
    from services.together.config import TogetherSettings

    return TogetherAdapter(_fast(TogetherSettings))


ADAPTERS: dict[str, Callable[[], Adapter]] = {
    "fal": _fal,
    "bfl": _bfl,
    "replicate": _replicate,
    "huggingface": _huggingface,
    "openai": _openai,
    "together": _together,
}


def hosts_of(adapter: Adapter) -> list[str]:
    """Hosts an answer's URLs may point at: the API's own, the allowed result hosts, others."""
    client: httpx.AsyncClient = adapter._client  # type: ignore[attr-defined]
    own = client.base_url.host or "api.example"
    extra = list(getattr(adapter._settings, "result_hosts", ()) or ())  # type: ignore[attr-defined]
    return [own, *extra, "evil.example", "169.254.169.254"]


def _install(adapter: Adapter, script: list[Answer]) -> None:
    old: httpx.AsyncClient = adapter._client  # type: ignore[attr-defined]
    mock = _mock_client(str(old.base_url), old.headers, script)
    adapter._client = mock  # type: ignore[attr-defined]
    from services.together.adapter import TogetherAdapter

    if isinstance(adapter, TogetherAdapter):  # Together keeps the client in its call helper
        from services.together.adapter import GENERATIONS_PATH
        from services.together.client import TogetherCall

        settings = adapter._settings  # type: ignore[attr-defined]
        results_from = adapter._results_from(settings.result_hosts)  # type: ignore[attr-defined]
        adapter._call = TogetherCall(mock, GENERATIONS_PATH, results_from)  # type: ignore[attr-defined]


def _size(spec: ModelSpec) -> tuple[int, int]:
    """A size the model offers (the servicer refuses others before the adapter runs)."""
    rule = spec.sizes
    if rule.fixed:
        return rule.fixed[0]
    side = max(rule.min_side, min(512, rule.max_side))
    side -= side % max(rule.multiple, 1)
    return side, side


def requests(adapter: Adapter) -> st.SearchStrategy[GenerationRequest]:
    """Text-to-image requests the servicer would pass on, for any of the adapter's models (the
    servicer refuses a text-only request to an edit-only model before the adapter sees it)."""
    models = [spec for spec in adapter.models() if not spec.input_image_required]
    return st.sampled_from(models).flatmap(
        lambda spec: st.builds(
            GenerationRequest,
            request_id=st.just("fuzz-1"),
            model=st.just(spec.id),
            prompt=st.just("a red square"),
            width=st.just(_size(spec)[0]),
            height=st.just(_size(spec)[1]),
            num_images=st.integers(1, max(1, min(2, spec.max_images))),
            seed=st.one_of(st.none(), st.integers(0, 2**31 - 1)),
            allow_degradation=st.just(True),
        )
    )


def check_adapter(name: str, request: GenerationRequest, script: list[Answer]) -> str:
    """The property: a result of well-formed images, or a ProviderError; nothing else.

    Returns "ok", "count-guard" (a result the servicer refuses for its image count) or the error
    reason, so a run can say which paths it reached.
    """
    adapter = build(name)
    _install(adapter, script)

    async def run() -> GenerationResult | ProviderError:
        try:
            return await adapter.generate(request, Deadline.after(2.0), None)
        except ProviderError as err:
            return err
        finally:
            await adapter.aclose()

    outcome = asyncio.run(run())
    if isinstance(outcome, ProviderError):
        assert outcome.reason.startswith("PROVIDER_"), outcome.reason
        return outcome.reason
    if len(outcome.images) != request.num_images:
        # ProviderServicer turns this into PROVIDER_BAD_RESPONSE before it leaves the process
        # (first found by this fuzzer: Together's `data: []`, OpenAI's repeated items).
        return "count-guard"
    for image in outcome.images:
        assert image.data, "no empty image passes as a success"
    return "ok"


class _Recorder(httpx.AsyncBaseTransport):
    """Forwards to the real transport and keeps every answer."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.answers: list[Answer] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        resp = await self.inner.handle_async_request(request)
        body = await resp.aread()
        self.answers.append(
            Answer(resp.status_code, body, resp.headers.get("content-type", ""), None)
        )
        return httpx.Response(resp.status_code, headers=resp.headers, content=body)


def recorded(name: str, request: GenerationRequest) -> list[Answer]:
    """The answers of one successful generation against the provider's in-repo emulator."""
    from imagegate.devstack.emulated import PROVIDERS

    provider = next(p for p in PROVIDERS if p.name == name)

    async def run() -> list[Answer]:
        emulator = provider.emulator(latency=0.0, key=provider.key)
        base_url = await emulator.start()
        _ENDPOINT[name] = (base_url, provider.key)
        adapter = build(name)
        client: httpx.AsyncClient = adapter._client  # type: ignore[attr-defined]
        recorder = _Recorder(client._transport)
        client._transport = recorder
        try:
            await adapter.generate(request, Deadline.after(30.0), None)
        finally:
            await adapter.aclose()
            await emulator.stop()
        return recorder.answers

    return asyncio.run(run())


@st.composite
def mutated(draw: st.DrawFn, happy: list[Answer], hosts: list[str]) -> list[Answer]:
    """The happy path with some answers changed: status, a key dropped or replaced, junk body."""
    out: list[Answer] = []
    for answer in happy:
        how = draw(st.sampled_from(["keep", "keep", "keep", "status", "json", "junk", "stop"]))
        if how == "stop":
            break
        if how == "status":
            answer = Answer(draw(st.sampled_from(STATUSES)), answer.body, answer.content_type, None)
        elif how == "junk":
            answer = draw(answers(hosts))
        elif how == "json":
            try:
                value = json.loads(answer.body)
            except ValueError:
                value = None
            if isinstance(value, dict) and value:
                value = _mutate(draw, value, hosts)
                answer = Answer(
                    answer.status, json.dumps(value).encode(), answer.content_type, None
                )
        out.append(answer)
    return out


def _mutate(draw: st.DrawFn, value: Any, hosts: list[str]) -> Any:
    """One change somewhere inside a JSON value."""
    if isinstance(value, dict) and value:
        key = draw(st.sampled_from(sorted(value)))
        action = draw(st.sampled_from(["drop", "replace", "descend"]))
        copy = dict(value)
        if action == "drop":
            del copy[key]
        elif action == "replace":
            copy[key] = draw(json_values(hosts))
        else:
            copy[key] = _mutate(draw, value[key], hosts)
        return copy
    if isinstance(value, list) and value:
        index = draw(st.integers(0, len(value) - 1))
        action = draw(st.sampled_from(["drop", "replace", "descend", "duplicate"]))
        items = list(value)
        if action == "drop":
            del items[index]
        elif action == "replace":
            items[index] = draw(json_values(hosts))
        elif action == "duplicate":
            items.append(items[index])
        else:
            items[index] = _mutate(draw, value[index], hosts)
        return items
    return draw(_leaves(hosts))


def happy_request(adapter: Adapter) -> GenerationRequest:
    """The request whose happy path is recorded: the adapter's first model, one image."""
    spec = adapter.models()[0]
    width, height = _size(spec)
    return GenerationRequest(
        request_id="fuzz-1", model=spec.id, prompt="a red square", width=width, height=height
    )


def scripts(name: str) -> st.SearchStrategy[tuple[GenerationRequest, list[Answer]]]:
    """(request, answers): the recorded happy path mutated, or answers from scratch."""
    request = happy_request(build(name))
    happy = recorded(name, request)
    adapter = build(name)
    hosts = hosts_of(adapter)
    return st.one_of(
        st.tuples(st.just(request), mutated(happy, hosts)),
        st.tuples(requests(adapter), st.lists(answers(hosts), max_size=6)),
    )
