"""Entry point of the `imagegate` command: parse, run one sub-command, print errors as one line."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from imagegate.cli.args import build_parser, parse
from imagegate.cli.connection import Connection
from imagegate.grpckit import reasons
from imagegate.grpckit.errors import ImagegateError, parse_rpc_error

__all__ = ["build_parser", "main", "run"]

Command = Callable[[argparse.Namespace, Connection], Awaitable[int]]


def run(argv: list[str] | None = None) -> int:
    """Parses arguments, runs the command, prints errors without tracebacks."""
    args = parse(argv)
    command: Command = args.func
    try:
        return asyncio.run(_run_command(command, args))
    except grpc.aio.AioRpcError as err:
        return _print_error(parse_rpc_error(err))
    except ImagegateError as err:
        print(f"error: {error_head(err.code.name, err.reason)}: {err.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # the last line of defence: a bug is one line, not a traceback
        if os.environ.get("IMAGEGATE_DEBUG"):
            traceback.print_exc()
        else:
            print(
                f"error: unexpected {type(err).__name__}: {err} "
                "(set IMAGEGATE_DEBUG=1 for the traceback)",
                file=sys.stderr,
            )
        return 1


def error_head(code: str, reason: str) -> str:
    """`CODE REASON`, or `CODE` alone when the reason only repeats it (INVALID_ARGUMENT)."""
    return f"{code} {reason}" if reason and reason != code else code


def _print_error(parsed: Any) -> int:
    code = parsed.code.name if hasattr(parsed.code, "name") else str(parsed.code)
    print(f"error: {error_head(code, parsed.reason)}: {parsed.message}", file=sys.stderr)
    for v in parsed.field_violations:
        print(f"  field {v.field}: {v.description}", file=sys.stderr)
    for q in parsed.quota_violations:
        print(f"  quota {q.subject}: {q.description}", file=sys.stderr)
    if parsed.retry_after_seconds is not None:
        print(f"  retry after {parsed.retry_after_seconds:.1f}s", file=sys.stderr)
    cost = int(parsed.metadata.get(reasons.META_COST_MICROS, "0") or 0)
    if cost:
        print(f"  charged ${cost / 1e6:.6f} for attempts the provider bills", file=sys.stderr)
    if parsed.metadata.get(reasons.META_TRACE_ID):
        print(f"  trace {parsed.metadata[reasons.META_TRACE_ID]}", file=sys.stderr)
    if parsed.code == grpc.StatusCode.UNAVAILABLE and not parsed.reason:
        print("  is the stack running? start it with `make run`", file=sys.stderr)
    return 1


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())


async def _run_command(command: Command, args: argparse.Namespace) -> int:
    return await command(args, Connection.from_env())


if __name__ == "__main__":
    main()
