"""OpenTelemetry setup shared by every service: tracing, metrics and JSON logs."""

from imagegate.telemetry.setup import Telemetry, setup_telemetry

__all__ = ["Telemetry", "setup_telemetry"]
