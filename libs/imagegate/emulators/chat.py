"""Emulator of the OpenAI-compatible `POST /v1/chat/completions` that the text providers share."""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any

from aiohttp import web

from imagegate.emulators.base import Emulator, new_id

_KNOWN_FIELDS = frozenset(
    {
        "model",
        "messages",
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "stream",
        "stop",
        "seed",
        "response_format",
        "user",
        "frequency_penalty",
        "presence_penalty",
    }
)
_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})
# The enhancer's request carries the caller's prompt between these markers; the emulator echoes it
# back enriched so tests can see the enhanced prompt travel on to the image provider.
_PROMPT_RE = re.compile(r"<prompt>(.*?)</prompt>", re.S)
_KEYWORDS_RE = re.compile(r"<style_keywords>(.*?)</style_keywords>", re.S)
_NEGATIVE_RE = re.compile(r"<negative>(.*?)</negative>", re.S)


def error(
    message: str,
    status: int,
    *,
    kind: str,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The OpenAI-style `{"error": {message, type, code}}` body these providers answer with."""
    payload = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return Emulator.json_response(payload, status, headers=headers)


def count_tokens(text: str) -> int:
    """A stand-in tokenizer: about four characters per token."""
    return max(1, math.ceil(len(text) / 4))


def enhanced_answer(messages: list[dict[str, Any]]) -> str:
    """The emulated model's reply: a JSON object with an enriched prompt and negative prompt."""
    text = "\n".join(str(m.get("content", "")) for m in messages)
    found = _PROMPT_RE.search(text)
    prompt = found.group(1).strip() if found else text.strip()[:200]
    keywords = _KEYWORDS_RE.search(text)
    extra = keywords.group(1).strip() if keywords and keywords.group(1).strip() else ""
    negative = _NEGATIVE_RE.search(text)
    enhanced = f"{prompt}, highly detailed, clear composition, consistent lighting"
    if extra:
        enhanced = f"{enhanced}, {extra}"
    body = {
        "prompt": enhanced,
        "negative_prompt": (negative.group(1).strip() if negative else ""),
    }
    return json.dumps(body)


class ChatEmulator(Emulator):
    """One OpenAI-compatible chat provider: Bearer auth, usage tokens, switchable faults.

    Faults: rate_limit (429 + Retry-After), error_500/502/503, hang, malformed_json, slow_body,
    auth_failed, out_of_credits. A test runs one instance per provider it wants to tell apart.
    """

    name = "chat"

    def __init__(self, *, latency: float = 0.0, key: str | None = None) -> None:
        super().__init__(latency=latency, key=key)
        self.models: frozenset[str] | None = None
        """Model ids accepted; None accepts any non-empty one."""

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._complete)

    def authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.credential_ok(token)

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        rid = {"x-request-id": new_id("req_")}
        if not self.authorized(request) or self.faults.take("auth_failed"):
            return error(
                "Invalid API Key", 401, kind="invalid_request_error", code="invalid_api_key"
            )
        if self.faults.take("out_of_credits"):
            return error("You exceeded your current quota.", 402, kind="billing_error", headers=rid)
        if f := self.faults.take("rate_limit"):
            wait = f.retry_after if f.retry_after is not None else 7.0
            return error(
                f"Rate limit reached for requests. Please try again in {wait:g}s.",
                429,
                kind="requests",
                code="rate_limit_exceeded",
                headers={**rid, "retry-after": f"{wait:g}"},
            )
        if self.faults.take("error_500"):
            return error("Internal server error", 500, kind="server_error", headers=rid)
        if self.faults.take("error_502"):
            return web.Response(
                status=502, text="<html>502 Bad Gateway</html>", content_type="text/html"
            )
        if f := self.faults.take("error_503"):
            return error(
                "Service is overloaded",
                503,
                kind="server_error",
                headers={**rid, **self.retry_after_headers(f)},
            )
        if self.faults.take("hang", "never_complete"):
            return await self.hang()
        try:
            body = await request.json()
        except ValueError:
            return error(
                "We could not parse the JSON body of your request.",
                400,
                kind="invalid_request_error",
            )
        problem = self._validate(body)
        if problem is not None:
            return problem
        await self.generation_delay()
        content = enhanced_answer(body["messages"])
        prompt_tokens = sum(count_tokens(str(m.get("content", ""))) for m in body["messages"])
        completion_tokens = count_tokens(content)
        payload = {
            "id": new_id("chatcmpl-"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        if self.faults.take("malformed_json"):
            return self.malformed_json(headers=rid)
        if self.faults.take("slow_body"):
            return await self.slow(request, json.dumps(payload).encode(), headers=rid)
        return self.json_response(payload, headers=rid)

    def _validate(self, body: Any) -> web.Response | None:
        if not isinstance(body, dict):
            return error("Request body must be an object.", 400, kind="invalid_request_error")
        unknown = sorted(set(body) - _KNOWN_FIELDS)
        if unknown:
            return error(
                f"Unrecognized request argument supplied: {unknown[0]}",
                400,
                kind="invalid_request_error",
                code="unknown_parameter",
            )
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return error("'model' is a required property", 400, kind="invalid_request_error")
        if self.models is not None and model not in self.models:
            return error(
                f"The model `{model}` does not exist or you do not have access to it.",
                404,
                kind="invalid_request_error",
                code="model_not_found",
            )
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return error("'messages' must be a non-empty array", 400, kind="invalid_request_error")
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in _ROLES:
                return error("each message needs a valid 'role'", 400, kind="invalid_request_error")
            if not isinstance(m.get("content"), str):
                return error(
                    "each message needs string 'content'", 400, kind="invalid_request_error"
                )
        if body.get("stream"):
            return error("this emulator does not stream", 400, kind="invalid_request_error")
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens", 1))
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return error(
                "'max_tokens' must be a positive integer", 400, kind="invalid_request_error"
            )
        return None
