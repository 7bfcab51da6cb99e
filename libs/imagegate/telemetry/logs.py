"""JSON-lines or text logging with trace ids and extra fields; never keys or image bytes."""

from __future__ import annotations

import json
import logging
import sys
import time

import orjson
from opentelemetry import trace

from imagegate.telemetry.redact import redact, scrub

# Attributes of LogRecord that are not user-supplied `extra` fields.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
# `extra` keys that hold secrets or payloads by name, whatever their value looks like.
_DROPPED_KEYS = frozenset(
    {"api_key", "provider_key", "authorization", "token", "password", "secret"}
)


def _scrub_args(record: logging.LogRecord) -> None:
    if isinstance(record.args, tuple):
        record.args = tuple(
            scrub(a) if isinstance(a, bytes | bytearray | memoryview) else a for a in record.args
        )
    elif isinstance(record.args, dict):
        record.args = {
            k: scrub(v) if isinstance(v, bytes | bytearray | memoryview) else v
            for k, v in record.args.items()
        }


class RedactingFilter(logging.Filter):
    """Rewrites a record in place so no handler can emit a credential or image bytes.

    Installed on every handler by `configure_logging`; attach it to any extra handler too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        _scrub_args(record)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        for key, value in list(vars(record).items()):
            if key in _STANDARD or key.startswith("_"):
                continue
            if key.lower() in _DROPPED_KEYS:
                setattr(record, key, "[REDACTED]")
            else:
                setattr(record, key, scrub(value))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, service, logger, message, trace ids, extras."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "msg": _message(record),
        }
        for key, value in _fields(record).items():
            out.setdefault(key, value)
        if record.exc_info or record.exc_text:
            text = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
            out["exc"] = redact(text)
        try:
            # orjson: a log line per request in every process; several times json's speed.
            return orjson.dumps(out, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except orjson.JSONEncodeError:  # e.g. an int beyond 64 bits
            return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`time service LEVEL message key=value ...`: the JSON line's fields, for a terminal."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        parts = [self.formatTime(record), self._service, record.levelname, _message(record)]
        parts.extend(f"{key}={_text_value(value)}" for key, value in _fields(record).items())
        line = " ".join(parts)
        if record.exc_info or record.exc_text:
            text = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
            line = f"{line}\n{redact(text)}"
        return line


def _fields(record: logging.LogRecord) -> dict[str, object]:
    """Trace ids of the current span, then the record's `extra` fields, redacted."""
    out: dict[str, object] = {}
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        out["trace_id"] = f"{ctx.trace_id:032x}"
        out["span_id"] = f"{ctx.span_id:016x}"
    for key, value in vars(record).items():
        if key in _STANDARD or key.startswith("_") or key in out:
            continue
        out[key] = "[REDACTED]" if key.lower() in _DROPPED_KEYS else scrub(value)
    return out


def _text_value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    # Quoted like logfmt when a bare value would be ambiguous to a reader or to grep.
    if text == "" or any(c.isspace() or c in '"=\\' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def _message(record: logging.LogRecord) -> str:
    _scrub_args(record)
    return redact(record.getMessage())


def configure_logging(service: str, *, level: str = "INFO", fmt: str = "json") -> None:
    """Routes the root logger to stderr in the chosen format, with redaction on the handler."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(TextFormatter(service))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs full URLs at INFO; some providers put tokens in query strings.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
