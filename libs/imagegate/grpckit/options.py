"""Channel and server options that avoid grpcio's traps (4 MiB limit, silent port sharing)."""

from __future__ import annotations

# Four 2048x2048 PNGs exceed the 4 MiB default; both ends must raise the limit.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # SO_REUSEPORT is on by default: a second server would silently share the port.
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Reconnect quickly after a dependency restarts, so failover sees it come back.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.min_reconnect_backoff_ms", 200),
]


def reuse_port_options() -> list[tuple[str, int]]:
    """SERVER_OPTIONS with SO_REUSEPORT on: for processes meant to share one port (workers)."""
    return [*(o for o in SERVER_OPTIONS if o[0] != "grpc.so_reuseport"), ("grpc.so_reuseport", 1)]
