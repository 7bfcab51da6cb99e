"""`python -m imagegate.devstack` (make run): the whole stack on embedded defaults."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from imagegate.cli.connection import DEFAULT_QUOTA_ADDR, DEFAULT_ROUTER_ADDR, record_data_dir
from imagegate.devstack.bootstrap import ensure_admin_token, ensure_dev_key
from imagegate.devstack.emulated import start_emulators
from imagegate.devstack.services import default_env
from imagegate.devstack.supervisor import Stack, StackError
from imagegate.grpckit.security import transport_from_env
from imagegate.textproviders import TEXT_PROVIDERS


def cli_path() -> str:
    """The `imagegate` command next to this interpreter (absolute: works from any directory)."""
    beside = Path(sys.executable).parent / "imagegate"
    return str(beside) if beside.exists() else "imagegate"


def try_hint(router: str, quota: str, cli: str) -> str:
    """The commands to paste into another terminal, carrying any moved address with them."""
    moved = ""
    if router != DEFAULT_ROUTER_ADDR:
        moved += f"IMAGEGATE_ROUTER_ADDR={router} "
    if quota != DEFAULT_QUOTA_ADDR:
        moved += f"IMAGEGATE_QUOTA_ADDR={quota} "
    lines = [
        "Try, in another terminal:",
        *(
            [f"  export {moved.strip()}   # this stack's addresses (not the defaults)"]
            if moved
            else []
        ),
        f'  {cli} generate "isometric treasure chest, game asset" --size 512x512 -o chest.png',
        f'  {cli} generate "knight" --style game-sprite --enhance -o knight.png',
        f"  {cli} usage && {cli} quota",
    ]
    return "\n".join(lines) + "\n"


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
    try:
        # The CLI reads it, so it finds the dev key from any directory.
        record_data_dir(data_dir, env)
    except OSError as err:
        print(f"imagegate: could not record the data directory ({err})", file=sys.stderr)
    try:
        stack = Stack(env)
    except ValueError as err:
        print(f"imagegate: {err}", file=sys.stderr)
        return 2
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
    text = [p.name for p in TEXT_PROVIDERS if env.get(p.key_var)]
    enhancer = (
        f"on ({', '.join(text)})"
        if any(s.name == "enhancer" for s in stack.specs)
        else "off (no text provider key set: --enhance sends the original prompt with a notice)"
    )
    for name, emulator in emulators.items():
        print(
            f"  {name} emulator: {emulator.base_url} (faults: POST {emulator.base_url}/_emulator/faults)"
        )
    print(
        "\n"
        f"imagegate is up. Router: {router}\n"
        f"  providers: local (zero-dependency placeholder: procedural images, no model)"
        f"{''.join(', ' + h for h in hosted)}"
        f"{'' if hosted else ' (no provider configured: the placeholder serves every model)'}\n"
        f"  prompt enhancer: {enhancer}\n"
        f"  dev API key: {key_file}{' (created)' if created else ''}\n"
        f"  data: {data_dir}\n\n"
        f"{try_hint(router, stack.address('quota'), cli_path())}\n"
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
