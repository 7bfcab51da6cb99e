"""Argument types that check each flag against the server's documented limits before any RPC."""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

# The Router's limits (services/router/validation.py, router.proto), checked here so a bad
# flag is one clear line before any connection instead of a protobuf overflow traceback.
MIN_SIDE, MAX_SIDE = 64, 4096
MAX_IMAGES = 4
MAX_STEPS = 150
MAX_GUIDANCE = 50.0
INT64_MAX = 2**63 - 1
MAX_PROMPT, MAX_NEGATIVE, MAX_REQUEST_ID = 4000, 2000, 128
MAX_TIMEOUT_SECONDS = 3600.0
MAX_LIMIT = 100_000
# Quota's limits for admin commands (services/quota/servicer.py).
MAX_ID, MAX_NAME = 255, 100

_SIZE = re.compile(r"(-?\d+)[xX](-?\d+)")
_MONTH = re.compile(r"\d{4}-(0[1-9]|1[0-2])")
# Long enough for any valid value; longer digit strings are rejected before int() parses them.
_MAX_DIGITS = 40


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "…")


def _integer(text: str, low: int, high: int, what: str) -> int:
    stripped = text.strip()
    body = stripped.removeprefix("-").removeprefix("+")
    if not body.isascii() or not body.isdigit() or len(body) > _MAX_DIGITS:
        raise argparse.ArgumentTypeError(f"must be {what}, got {_shown(text)}")
    value = int(stripped)
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be {what}, got {_shown(text)}")
    return value


def int_range(low: int, high: int) -> Callable[[str], int]:
    """A whole number from `low` to `high` inclusive."""

    def parse(text: str) -> int:
        return _integer(text, low, high, f"a whole number from {low} to {high}")

    return parse


def size(text: str) -> tuple[int, int]:
    """WIDTHxHEIGHT, each side within the Router's limits."""
    what = f"WIDTHxHEIGHT with each side {MIN_SIDE} to {MAX_SIDE}, e.g. 512x512"
    match = _SIZE.fullmatch(text.strip())
    if match is None or any(len(g.lstrip("-")) > _MAX_DIGITS for g in match.groups()):
        raise argparse.ArgumentTypeError(f"must be {what}, got {_shown(text)}")
    w, h = (int(g) for g in match.groups())
    if not (MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= h <= MAX_SIDE):
        raise argparse.ArgumentTypeError(f"must be {what}, got {_shown(text)}")
    return w, h


def _finite(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {_shown(text)}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {_shown(text)}")
    return value


def guidance(text: str) -> float:
    """Guidance scale, 0 to 50."""
    what = f"a number from 0 to {MAX_GUIDANCE:g}"
    value = _finite(text, what)
    if not 0.0 <= value <= MAX_GUIDANCE:
        raise argparse.ArgumentTypeError(f"must be {what}, got {_shown(text)}")
    return value


def timeout(text: str) -> float:
    """Seconds, more than 0 and at most an hour."""
    what = f"seconds, more than 0 and at most {MAX_TIMEOUT_SECONDS:g}"
    value = _finite(text, what)
    if not 0.0 < value <= MAX_TIMEOUT_SECONDS:
        raise argparse.ArgumentTypeError(f"must be {what}, got {_shown(text)}")
    return value


def max_cost(text: str) -> int:
    """US dollars, converted exactly to the micro-USD the Router takes; 0 means no ceiling."""
    top = Decimal(INT64_MAX) / 1_000_000
    what = f"US dollars from 0 (no ceiling) to {top}, e.g. 0.05"
    try:
        usd = Decimal(text.strip())
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"must be {what}, got {_shown(text)}") from None
    if not usd.is_finite() or not 0 <= usd <= top:
        raise argparse.ArgumentTypeError(f"must be {what}, got {_shown(text)}")
    micros = int(usd * 1_000_000)
    if usd and not micros:
        # A positive ceiling that rounds to 0 micro-USD would silently mean "no ceiling".
        raise argparse.ArgumentTypeError(f"must be 0 or at least 0.000001, got {_shown(text)}")
    return micros


def month(text: str) -> str:
    """A calendar month YYYY-MM."""
    if _MONTH.fullmatch(text.strip()) is None:
        raise argparse.ArgumentTypeError(
            f"must be a month YYYY-MM, e.g. 2026-11, got {_shown(text)}"
        )
    return text.strip()


def text(max_len: int, *, required: bool = True, exact: bool = False) -> Callable[[str], str]:
    """A string of at most `max_len` characters; `exact` forbids surrounding spaces."""

    def parse(value: str) -> str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise argparse.ArgumentTypeError("must be valid UTF-8 text") from None
        if required and not value.strip():
            raise argparse.ArgumentTypeError("must not be empty")
        if len(value) > max_len:
            raise argparse.ArgumentTypeError(
                f"must be at most {max_len} characters, got {len(value)}"
            )
        if exact and value != value.strip():
            raise argparse.ArgumentTypeError(f"must not start or end with spaces, got {value!r}")
        return value

    return parse
