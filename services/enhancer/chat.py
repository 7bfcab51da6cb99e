"""One provider's OpenAI-compatible `POST /chat/completions` client and how its failures read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from imagegate.grpckit import reasons
from imagegate.providerkit.http import build_client, retry_after_from_headers
from imagegate.telemetry import Telemetry
from services.enhancer.config import TextProviderConfig


class ChatError(Exception):
    """A failed provider call, with a reason and, for 429/503, the provider's Retry-After."""

    def __init__(self, reason: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class ChatAnswer:
    """What a provider answered."""

    content: str
    """The assistant message text."""
    input_tokens: int
    """usage.prompt_tokens (0 when the provider sent none)."""
    output_tokens: int
    """usage.completion_tokens (0 when the provider sent none)."""
    model: str
    """The model id asked for (the price catalog's key)."""


def _status_error(resp: httpx.Response) -> ChatError:
    status = resp.status_code
    wait = retry_after_from_headers(resp.headers)
    # The body is never quoted: some providers echo the presented key in auth errors.
    if status == 429:
        return ChatError(reasons.PROVIDER_RATE_LIMITED, "rate limited (HTTP 429)", wait)
    if status in (401, 403):
        return ChatError(reasons.PROVIDER_AUTH_FAILED, f"credentials refused (HTTP {status})")
    if status == 402:
        return ChatError(reasons.PROVIDER_OUT_OF_CREDITS, "out of credits (HTTP 402)")
    if status >= 500:
        return ChatError(reasons.PROVIDER_UNAVAILABLE, f"provider error (HTTP {status})", wait)
    return ChatError(reasons.PROVIDER_INVALID_REQUEST, f"request refused (HTTP {status})")


def parse_answer(body: Any, asked_model: str) -> ChatAnswer:
    """The first choice's text and the usage; raises ChatError on a body without them."""
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ChatError(
            reasons.PROVIDER_BAD_RESPONSE, "answer without choices[0].message"
        ) from None
    if not isinstance(content, str) or not content.strip():
        raise ChatError(reasons.PROVIDER_BAD_RESPONSE, "answer with an empty message")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    tokens = [usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)]
    tokens = [t if isinstance(t, int) and t >= 0 else 0 for t in tokens]
    # Priced by the id we asked for: providers report theirs in varying spellings.
    return ChatAnswer(content, tokens[0], tokens[1], asked_model)


class ChatClient:
    """A pooled HTTP client for one provider (its key lives only in the client's headers)."""

    def __init__(
        self, config: TextProviderConfig, *, telemetry: Telemetry | None, max_connections: int = 8
    ) -> None:
        self.config = config
        key = config.key.get_secret_value().strip() if config.key is not None else ""
        self._client = build_client(
            base_url=config.base_url,
            headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
            max_connections=max_connections,
            telemetry=telemetry,
        )

    async def complete(
        self,
        messages: list[dict[str, str]],
        *,
        timeout: float,
        max_tokens: int,
        temperature: float,
    ) -> ChatAnswer:
        """One chat completion within `timeout` seconds; raises ChatError."""
        payload = {
            "model": self.config.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        try:
            resp = await self._client.post(
                "/chat/completions", content=json.dumps(payload), timeout=timeout
            )
            if resp.status_code != 200:
                raise _status_error(resp)
            body = resp.json()
        except httpx.TimeoutException:
            raise ChatError(reasons.PROVIDER_TIMEOUT, f"no answer within {timeout:.2f} s") from None
        except httpx.TransportError as err:
            raise ChatError(reasons.PROVIDER_UNAVAILABLE, type(err).__name__) from None
        except ValueError:
            raise ChatError(reasons.PROVIDER_BAD_RESPONSE, "answer is not JSON") from None
        return parse_answer(body, self.config.model)

    async def aclose(self) -> None:
        """Closes the connection pool."""
        await self._client.aclose()
