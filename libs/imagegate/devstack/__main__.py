"""`python -m imagegate.devstack` (make run): the whole stack on embedded defaults."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from imagegate.devstack.bootstrap import ensure_admin_token, ensure_dev_key
from imagegate.devstack.emulated import start_emulators
from imagegate.devstack.services import default_env
from imagegate.devstack.supervisor import Stack, StackError
from imagegate.grpckit.security import transport_from_env


async def run(args: argparse.Namespace) -> int:
    """Starts everything, bootstraps the dev tenant, then waits for Ctrl-C or SIGTERM."""
    env = default_env()
    emulators = {}
    if args.emulators:
        emulators = await start_emulators(env, latency=args.emulator_latency)
    env.setdefault("IMAGEGATE_LOG_FORMAT", "text")
    env.setdefault("PYTHONUNBUFFERED", "1")
    data_dir = Path(env.setdefault("IMAGEGATE_DATA_DIR", ".imagegate")).resolve()
    env["IMAGEGATE_DATA_DIR"] = str(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    admin_token = ensure_admin_token(data_dir, env)
    stack = Stack(env)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        starting = asyncio.ensure_future(stack.start())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            starting.cancel()
            return 130
        starting.result()
        key_file, created = await ensure_dev_key(
            data_dir, stack.address("quota"), admin_token, transport=transport_from_env(stack.env)
        )
    except StackError as err:
        print(f"\nimagegate: {err}", file=sys.stderr)
        await stack.stop()
        return 1
    router = stack.address("router")
    hosted = [s.name for s in stack.specs if s.key_var]
    for name, emulator in emulators.items():
        print(
            f"  {name} emulator: {emulator.base_url} (faults: POST {emulator.base_url}/_emulator/faults)"
        )
    print(
        "\n"
        f"imagegate is up. Router: {router}\n"
        f"  providers: local{''.join(', ' + h for h in hosted)}"
        f"{'' if hosted else ' (no provider keys set: the local backend serves every model)'}\n"
        f"  dev API key: {key_file}{' (created)' if created else ''}\n"
        f"  data: {data_dir}\n\n"
        "Try, in another terminal:\n"
        '  .venv/bin/imagegate generate "isometric treasure chest, game asset" '
        "--size 512x512 -o chest.png\n"
        "  .venv/bin/imagegate usage && .venv/bin/imagegate quota\n\n"
        "Ctrl-C stops everything.\n",
        flush=True,
    )
    exited = asyncio.ensure_future(stack.wait_any_exit())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if exited.done():
        child = exited.result()
        print(
            f"\nimagegate: {child.spec.name} exited ({child.process.returncode}); stopping",
            file=sys.stderr,
        )
        code = 1
    else:
        exited.cancel()
    print("stopping services…", file=sys.stderr, flush=True)
    await stack.stop()
    for emulator in emulators.values():
        await emulator.stop()
    return code


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m imagegate.devstack", description=__doc__)
    parser.add_argument(
        "--emulators",
        action="store_true",
        help="stand in for every hosted provider with its in-repo HTTP emulator (no internet)",
    )
    parser.add_argument(
        "--emulator-latency", type=float, default=0.5, help="seconds each emulated generation takes"
    )
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
