"""Scrubs credentials and image payloads out of text before it reaches a log line or a span."""

from __future__ import annotations

import re

REDACTED = "[REDACTED]"

# Order matters: specific token shapes first, then the generic header/query forms.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-:]{6,}"), r"\1 " + REDACTED),
    # Our API keys are ig_<key id>_<secret>; the key id is not secret and helps support.
    (re.compile(r"\b(ig_[A-Za-z0-9]+)_[A-Za-z0-9_\-]{6,}"), r"\1_" + REDACTED),
    (re.compile(r"\br8_[A-Za-z0-9]{8,}"), "r8_" + REDACTED),
    (re.compile(r"\bhf_[A-Za-z0-9]{8,}"), "hf_" + REDACTED),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"), "sk-" + REDACTED),
    (re.compile(r"\btgp_v1_[A-Za-z0-9_\-]{8,}"), "tgp_v1_" + REDACTED),
    # fal sends "Key <id>:<secret>"; the digit and length keep ordinary prose untouched.
    (re.compile(r"\b(Key|Token)\s+(?=\S*\d)[A-Za-z0-9._~+/=\-:]{16,}"), r"\1 " + REDACTED),
    (
        re.compile(
            r"(?i)\b(x-key|x-api-key|api[_-]?key|access[_-]?token|"
            r"[a-z]+_api_(?:key|token)|fal_key|hf_token|secret|password)"
            r"([\"']?\s*[:=]\s*[\"']?)[^\s\"',;&}]{4,}"
        ),
        r"\1\2" + REDACTED,
    ),
    (re.compile(r"(?i)([?&](?:token|key|sig|signature)=)[^&\s\"']+"), r"\1" + REDACTED),
    (
        re.compile(r"data:image/[a-z+]+;base64,[A-Za-z0-9+/=]+"),
        "data:image/[base64 removed]",
    ),
    # Long unbroken base64 runs are image payloads (or keys); never useful in a log.
    (re.compile(r"[A-Za-z0-9+/]{200,}={0,2}"), "[base64 removed]"),
)


# Something every pattern above needs (a superset, case-insensitive): text without any of these
# is returned as is after one scan, instead of one scan per pattern (log lines are hot).
_MAYBE = re.compile(
    r"(?i)bearer|basic|ig_|r8_|hf_|sk-|tgp_v1_|key|token|secret|password|sig|data:image"
    r"|[A-Za-z0-9+/]{200}"
)


def redact(text: str) -> str:
    """`text` with every known credential shape and base64 image payload replaced."""
    if _MAYBE.search(text) is None:
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def scrub(value: object) -> object:
    """A loggable form of `value`: bytes become their length, strings are redacted."""
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bool | int | float) or value is None:
        return value
    return redact(repr(value) if isinstance(value, list | tuple | dict | set) else str(value))
