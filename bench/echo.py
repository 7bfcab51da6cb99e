"""`python -m bench.echo --port N --reply-bytes B`: a minimal grpc.aio unary echo (the physical limit)."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence

import grpc

from imagegate.grpckit.loop import run as run_loop
from imagegate.grpckit.options import MAX_MESSAGE_BYTES

METHOD = "/bench.Echo/Echo"


def handler(reply: bytes) -> grpc.GenericRpcHandler:
    """One unary method that ignores the request body and answers `reply`, no (de)serialisation."""

    async def echo(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        return reply

    return grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )


# Message limits on both ends (grpcio's default receive limit is 4 MiB); no silent port sharing.
OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
]


async def serve_until_signalled(handlers: Sequence[grpc.GenericRpcHandler], port: int) -> None:
    """Serves `handlers` on 127.0.0.1:`port` until SIGINT or SIGTERM."""
    server = grpc.aio.server(options=OPTIONS)
    server.add_generic_rpc_handlers(handlers)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


async def serve(port: int, reply_bytes: int) -> None:
    """Serves until SIGTERM."""
    await serve_until_signalled([handler(b"\x5a" * reply_bytes)], port)


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.echo")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--reply-bytes", type=int, default=100)
    args = parser.parse_args()
    run_loop(serve(args.port, args.reply_bytes))


if __name__ == "__main__":
    main()
