"""OpenTelemetry setup shared by every service: tracing, metrics and JSON logs."""

from imagegate.telemetry.setup import (
    DEFAULT_METRICS_ADDRS,
    Telemetry,
    TelemetrySettings,
    current_trace_id,
    metrics_address,
    setup_telemetry,
)

__all__ = [
    "DEFAULT_METRICS_ADDRS",
    "Telemetry",
    "TelemetrySettings",
    "current_trace_id",
    "metrics_address",
    "setup_telemetry",
]
