"""`python -m imagegate.emulators <provider> --port N [options]`: runs one provider emulator."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
import sys

from imagegate.emulators.base import FAULT_KINDS, Emulator, Fault
from imagegate.grpckit.loop import run as run_loop


def find_emulator(provider: str) -> type[Emulator]:
    """The Emulator subclass named `provider` in module imagegate.emulators.<provider>."""
    try:
        module = importlib.import_module(f"imagegate.emulators.{provider}")
    except ModuleNotFoundError as err:
        raise SystemExit(f"no emulator module for {provider!r}: {err}") from None
    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, Emulator) and value.name == provider:
            return value
    raise SystemExit(
        f"module imagegate.emulators.{provider} defines no Emulator named {provider!r}"
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m imagegate.emulators", description=__doc__)
    parser.add_argument(
        "provider", help="fal, replicate, bfl, huggingface, openai, together, chat or comfyui"
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="listen port (default: any free)")
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds added to each generation"
    )
    parser.add_argument(
        "--key", default=None, help="only accept this credential (default: any non-empty one)"
    )
    parser.add_argument(
        "--fault", choices=FAULT_KINDS, default=None, help="start with this fault switched on"
    )
    parser.add_argument("--retry-after", type=float, default=None, help="Retry-After for --fault")
    parser.add_argument(
        "--pictures",
        type=int,
        default=0,
        help="render at most N distinct pictures, each answer stamped with its seed (benchmarks:"
        " the emulator's PNG encoding stops competing with the gateway for CPU); 0: every seed",
    )
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    """Runs until SIGINT/SIGTERM."""
    emulator = find_emulator(args.provider)(latency=args.latency, key=args.key)
    emulator.pictures = max(0, args.pictures)
    if args.fault:
        emulator.faults.set(Fault(args.fault, retry_after=args.retry_after))
    base_url = await emulator.start(args.host, args.port)
    prefix = "IMAGEGATE_" + {"huggingface": "HF"}.get(args.provider, args.provider.upper())
    print(f"{args.provider} emulator on {base_url}", flush=True)
    if args.provider == "chat":
        hint = f"IMAGEGATE_ENHANCER_BASE_URLS=groq={base_url}/v1 GROQ_API_KEY=<any>"
        print(f"  point the enhancer at it: {hint}", flush=True)
    else:
        print(f"  point the adapter at it: {prefix}_BASE_URL={base_url}", flush=True)
    print(
        f'  faults: curl -X POST {base_url}/_emulator/faults -d \'{{"kind": "error_503"}}\'',
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await emulator.stop()


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    run_loop(run(parse_args(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
