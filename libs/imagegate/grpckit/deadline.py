"""Deadline arithmetic: Python gRPC does not carry deadlines across hops by itself."""

from __future__ import annotations

import time

import grpc


class Deadline:
    """An absolute point in monotonic time, with what is left of it."""

    __slots__ = ("_at",)

    def __init__(self, at: float) -> None:
        self._at = at

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        """A deadline `seconds` from now."""
        return cls(time.monotonic() + seconds)

    @classmethod
    def from_context(cls, context: grpc.aio.ServicerContext, default: float) -> Deadline:
        """The caller's deadline, or `default` seconds when the caller set none."""
        remaining = context.time_remaining()
        if remaining is None:
            return cls.after(default)
        return cls.after(min(remaining, default * 100))

    @property
    def at(self) -> float:
        """Monotonic time of the deadline."""
        return self._at

    def remaining(self) -> float:
        """Seconds left; negative once passed."""
        return self._at - time.monotonic()

    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return self.remaining() <= 0
