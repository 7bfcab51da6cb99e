"""`python -m bench.floor`: the cost of the Router's shape with no work in it (grpc.aio, uvloop).

Three echo processes stand in for the adapter, Quota and Metering; a proxy process stands in
for the Router and makes, per request, the calls the real one makes and nothing else:
- `hop`: the adapter call only (any gateway in front of an adapter process pays this);
- `shape`: reserve, then the adapter call, then commit and record sent after the reply (one
  call each, as the Router sends them with nobody else in flight);
- `batched`: `shape` with the Router's rounds: a reserve (commit, record) that finds one of
  its kind on its way waits and goes with the others of the next round as one call.
The figures are what a Router with zero Python work would cost on this machine: the floor
under `bench.probe`'s and `make bench`'s (scenario 1 drives `shape` and `batched` beside the
real Router); run alone, it prints serial added latency and CPU per request at 64 in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import os

import grpc

from bench.clients import channels, echo_call
from bench.context import Ctx, cleanup, new_ctx
from bench.echo import METHOD, OPTIONS, serve_until_signalled
from bench.procs import Proc, loopback, python_module, spawn, wait_port
from bench.scenarios.common import interleaved, start_echo
from bench.stats import RunStats
from imagegate.grpckit.loop import run as run_loop

# Bytes of a reserve/commit/record message and of a small image answer.
_SMALL = b"\x5a" * 120
_REPLY = b"\x5a" * 2_000
MODES = ("hop", "shape", "batched")
LEDGER_REPLY_BYTES = len(_SMALL)
"""Reply size of the echo processes standing in for Quota and Metering."""


class _Rounds:
    """The Router's rounds with no work in them: one call on its way; what arrives meanwhile
    goes in the next round as one call carrying every item."""

    def __init__(self, call: grpc.aio.UnaryUnaryMultiCallable) -> None:
        self._call = call
        self._waiting: list[asyncio.Future[None]] = []
        self._busy = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def send(self) -> None:
        if not self._busy:
            self._busy = True
            try:
                await self._call(_SMALL)
            finally:
                self._busy = False
                self._next()
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        await future

    def _next(self) -> None:
        if self._waiting and not self._busy:
            self._busy = True
            task = asyncio.create_task(self._rounds())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _rounds(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:256], self._waiting[256:]
                await self._call(_SMALL * len(batch))
                for future in batch:
                    future.set_result(None)
        finally:
            self._busy = False


async def serve_proxy(port: int, mode: str, adapter: str, quota: str, metering: str) -> None:
    """The zero-work Router: forwards each request as `mode` says until SIGTERM."""
    chans = [grpc.aio.insecure_channel(a, options=OPTIONS) for a in (adapter, quota, metering)]
    call_adapter, call_quota, call_metering = (c.unary_unary(METHOD) for c in chans)
    background: set[asyncio.Task[object]] = set()
    if mode == "batched":
        reserves, commits, records = (
            _Rounds(call_quota),
            _Rounds(call_quota),
            _Rounds(call_metering),
        )
        reserve, commit, record = reserves.send, commits.send, records.send
    else:

        async def reserve() -> None:
            await call_quota(_SMALL)

        async def commit() -> None:
            await call_quota(_SMALL)

        async def record() -> None:
            await call_metering(_SMALL)

    async def settle() -> None:
        await asyncio.gather(commit(), record())

    async def forward(request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        if mode != "hop":
            await reserve()
        reply: bytes = await call_adapter(request)
        if mode != "hop":
            task = asyncio.create_task(settle())
            background.add(task)
            task.add_done_callback(background.discard)
        return reply

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(forward)}
    )
    await serve_until_signalled([handler], port)
    for c in chans:
        await c.close()


async def start_floor(ctx: Ctx, mode: str, adapter: Proc, quota: Proc, metering: Proc) -> Proc:
    """The zero-work Router (`mode` "hop", "shape" or "batched") as its own process."""
    address = loopback()
    argv = python_module(
        "bench.floor",
        "--serve",
        mode,
        "--port",
        address.rsplit(":", 1)[1],
        "--downstream",
        adapter.address,
        quota.address,
        metering.address,
    )
    proc = await spawn(
        f"floor-{mode}", argv, env=dict(os.environ), address=address, log_dir=ctx.logs
    )
    await wait_port(proc)
    return proc


def _cpu_ms(stats: RunStats) -> float:
    return 1000 * sum(stats.cpu_seconds.values()) / max(1, stats.ok)


async def measure(concurrency: int, requests: int, serial: int) -> None:
    """Starts the echo processes and both proxies, then prints serial and loaded figures."""
    ctx = new_ctx(smoke=False)
    procs: list[Proc] = []
    try:
        adapter, quota, metering = [
            await start_echo(ctx, len(_REPLY), name=n) for n in ("adapter", "quota", "metering")
        ]
        procs += [adapter, quota, metering]
        proxies = {m: await start_floor(ctx, m, adapter, quota, metering) for m in MODES}
        procs += proxies.values()
        paths = {
            "direct": echo_call(channels(adapter.address, 1), _SMALL),
            **{m: echo_call(channels(p.address, 1), _SMALL) for m, p in proxies.items()},
        }
        downstream = [adapter, quota, metering]
        cpu = {"direct": [adapter], **{m: [p, *downstream] for m, p in proxies.items()}}
        s = await interleaved(
            paths, concurrency=1, requests=serial, rounds=4, warmup=50, cpu=cpu, alternate=True
        )
        print(f"load average {os.getloadavg()[0]:.2f}")
        d = s["direct"]
        for m in proxies:
            r = s[m]
            print(
                f"serial {m}: added p50 {r.pct_ms(50) - d.pct_ms(50):.2f} ms, p99 "
                f"{r.pct_ms(99) - d.pct_ms(99):.2f} ms (path {r.pct_ms(50):.2f}/{r.pct_ms(99):.2f}"
                f", direct {d.pct_ms(50):.2f}/{d.pct_ms(99):.2f}); CPU/request {_cpu_ms(r):.2f} ms"
            )
        load_paths = {m: echo_call(channels(p.address, 4), _SMALL) for m, p in proxies.items()}
        load = await interleaved(
            load_paths,
            concurrency=concurrency,
            requests=requests,
            rounds=4,
            warmup=concurrency * 2,
            cpu={m: cpu[m] for m in proxies},
            alternate=True,
        )
        for m, st in load.items():
            per = ", ".join(
                f"{k.removeprefix('floor-')} {1000 * v / max(1, st.ok):.2f}"
                for k, v in st.cpu_seconds.items()
            )
            print(
                f"c={concurrency} {m}: {st.rps:.0f} req/s, p99 {st.pct_ms(99):.1f} ms; "
                f"CPU ms/request {_cpu_ms(st):.2f} ({per})"
            )
        print(f"load average {os.getloadavg()[0]:.2f}")
    finally:
        for p in procs:
            await p.stop()
        cleanup(ctx)


def main() -> None:
    """Entry point (`--serve MODE` runs one proxy process)."""
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=8000)
    parser.add_argument("--serial", type=int, default=400)
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--downstream", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        run_loop(serve_proxy(args.port, args.serve, *args.downstream))
        return
    run_loop(measure(args.concurrency, args.requests, args.serial))


if __name__ == "__main__":
    main()
