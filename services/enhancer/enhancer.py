"""The rewrite itself: cache, then providers in priority order, each behind its breaker."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import grpc
from opentelemetry import metrics

from imagegate.common.v1 import image_pb2
from imagegate.enhancer.v1 import enhancer_pb2
from imagegate.grpckit import reasons
from imagegate.grpckit.deadline import Deadline
from imagegate.grpckit.errors import ImagegateError
from services.enhancer.breaker import ProviderBreaker
from services.enhancer.cache import RewriteCache, cache_key
from services.enhancer.chat import ChatClient, ChatError
from services.enhancer.config import EnhancerSettings
from services.enhancer.instructions import messages_for, read_answer

log = logging.getLogger("services.enhancer")
DOMAIN = "imagegate.enhancer"
# A provider call gets at least this long, or it is not started.
MIN_ATTEMPT_SECONDS = 0.05
# With another provider left to try, one call may use at most this share of what remains.
FOLLOWER_SHARE = 0.6


class PromptEnhancer:
    """Rewrites prompts; owns the provider clients, their breakers and the cache."""

    def __init__(
        self,
        settings: EnhancerSettings,
        clients: list[ChatClient],
        *,
        clock: Callable[[], float] = time.monotonic,
        meter: metrics.Meter | None = None,
    ) -> None:
        self.settings = settings
        meter = meter or metrics.get_meter("services.enhancer")
        self._calls = meter.create_counter(
            "imagegate.enhancer.provider.calls",
            description="Text provider calls by provider and outcome (ok or the failure reason).",
        )
        self._cache = meter.create_counter(
            "imagegate.enhancer.cache.lookups",
            description="Rewrite cache lookups by result (hit or miss).",
        )
        self._tokens = meter.create_counter(
            "imagegate.enhancer.tokens",
            description="Tokens spent, by provider and direction (input or output).",
        )
        self.clients = clients
        self.breakers = {
            c.config.name: ProviderBreaker(
                failures=settings.breaker_failures,
                open_seconds=settings.breaker_open_seconds,
                max_retry_after=settings.max_retry_after_seconds,
                clock=clock,
            )
            for c in clients
        }
        self.cache = RewriteCache(
            ttl=settings.cache_ttl_seconds, max_entries=settings.cache_max_entries, clock=clock
        )
        self.upstream_calls = 0

    @property
    def enabled(self) -> list[ChatClient]:
        """Clients with a key, in priority order."""
        return [c for c in self.clients if c.config.enabled]

    async def enhance(
        self, request: enhancer_pb2.EnhancePromptRequest, deadline: Deadline
    ) -> enhancer_pb2.EnhancePromptResponse:
        """The rewrite of a valid request; raises ImagegateError when no provider could."""
        key = cache_key(request)
        cached = self.cache.get(key)
        self._cache.add(1, {"result": "miss" if cached is None else "hit"})
        if cached is not None:
            cached.cached = True
            cached.usage.CopyFrom(image_pb2.Usage())
            del cached.failures[:]
            return cached
        enabled = self.enabled
        if not enabled:
            raise ImagegateError(
                grpc.StatusCode.FAILED_PRECONDITION,
                reasons.ENHANCER_NOT_CONFIGURED,
                "no text provider key is configured; set one of GROQ_API_KEY, CEREBRAS_API_KEY, ...",
                domain=DOMAIN,
            )
        messages = messages_for(request)
        failures: list[enhancer_pb2.ProviderFailure] = []
        for index, client in enumerate(enabled):
            name = client.config.name
            breaker = self.breakers[name]
            if not breaker.allows():
                failures.append(
                    enhancer_pb2.ProviderFailure(
                        provider=name,
                        reason=reasons.BREAKER_OPEN,
                        message=f"skipped for {breaker.retry_in():.1f} s more",
                    )
                )
                continue
            remaining = deadline.remaining()
            if remaining < MIN_ATTEMPT_SECONDS:
                break
            followers = any(self.breakers[c.config.name].allows() for c in enabled[index + 1 :])
            budget = min(
                self.settings.attempt_timeout_seconds,
                remaining * FOLLOWER_SHARE if followers else remaining,
            )
            started = time.perf_counter()
            self.upstream_calls += 1
            try:
                answer = await client.complete(
                    messages,
                    timeout=budget,
                    max_tokens=self.settings.max_output_tokens,
                    temperature=self.settings.temperature,
                )
                parsed = read_answer(answer.content, request)
                if parsed is None:
                    raise ChatError(reasons.PROVIDER_BAD_RESPONSE, "answer is not a usable prompt")
            except ChatError as err:
                self._calls.add(1, {"provider": name, "outcome": err.reason})
                breaker.failure(err.retry_after)
                log.warning(
                    "text provider failed",
                    extra={"provider": name, "reason": err.reason, "detail": err.message},
                )
                failures.append(
                    enhancer_pb2.ProviderFailure(
                        provider=name, reason=err.reason, message=err.message
                    )
                )
                continue
            breaker.success()
            self._calls.add(1, {"provider": name, "outcome": "ok"})
            self._tokens.add(answer.input_tokens, {"provider": name, "direction": "input"})
            self._tokens.add(answer.output_tokens, {"provider": name, "direction": "output"})
            response = enhancer_pb2.EnhancePromptResponse(
                prompt=parsed[0],
                negative_prompt=parsed[1],
                provider=name,
                provider_model=answer.model,
                usage=image_pb2.Usage(
                    input_tokens=answer.input_tokens,
                    output_tokens=answer.output_tokens,
                    wall_seconds=time.perf_counter() - started,
                ),
            )
            self.cache.put(key, response)
            response.failures.extend(failures)
            return response
        retry_in = min((self.breakers[c.config.name].retry_in() for c in enabled), default=0.0)
        summary = "; ".join(f"{f.provider}: {f.reason}" for f in failures) or "no time left"
        raise ImagegateError(
            grpc.StatusCode.UNAVAILABLE,
            reasons.ENHANCER_UNAVAILABLE,
            f"no text provider could rewrite the prompt ({summary})",
            domain=DOMAIN,
            metadata={"failures": summary},
            retry_after_seconds=retry_in or None,
        )

    async def aclose(self) -> None:
        """Closes every provider client."""
        for client in self.clients:
            await client.aclose()
