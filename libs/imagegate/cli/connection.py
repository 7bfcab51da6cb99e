"""Where the CLI connects and which credentials it sends (never printed)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from imagegate.grpckit.address import check_address
from imagegate.grpckit.errors import ImagegateError
from imagegate.grpckit.security import transport_from_env

DEFAULT_ROUTER_ADDR = "127.0.0.1:50051"
DEFAULT_QUOTA_ADDR = "127.0.0.1:50052"
DEFAULT_METERING_ADDR = "127.0.0.1:50053"
# The file `make run` writes with the absolute data directory it uses, so the CLI finds the
# dev key from any working directory.
DATA_DIR_POINTER = "data-dir"


def state_dir(env: Mapping[str, str]) -> Path:
    """$XDG_STATE_HOME/imagegate, else ~/.local/state/imagegate."""
    base = env.get("XDG_STATE_HOME", "").strip()
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "state"
    return root / "imagegate"


def record_data_dir(data_dir: Path, env: Mapping[str, str]) -> Path:
    """Writes the absolute `data_dir` where the CLI looks for it; returns the pointer file."""
    pointer = state_dir(env) / DATA_DIR_POINTER
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.write_text(f"{data_dir.resolve()}\n")
    return pointer


def default_data_dir(env: Mapping[str, str]) -> Path:
    """IMAGEGATE_DATA_DIR, else the one the last `make run` recorded, else ./.imagegate (absolute)."""
    explicit = env.get("IMAGEGATE_DATA_DIR", "").strip()
    if explicit:
        return Path(explicit).expanduser().resolve()
    pointer = state_dir(env) / DATA_DIR_POINTER
    try:
        recorded = pointer.read_text().strip()
    except OSError:
        recorded = ""
    if recorded and Path(recorded).is_absolute() and Path(recorded).is_dir():
        return Path(recorded)
    return Path(".imagegate").resolve()


@dataclass(frozen=True)
class Connection:
    """Addresses and credentials, read from the environment and the data directory."""

    router_addr: str
    """Router address."""
    quota_addr: str
    """Quota address (admin commands only)."""
    metering_addr: str
    """Metering address (`admin prices` and `admin margin`)."""
    data_dir: Path
    """Where the dev key and admin token files live (absolute)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Connection:
        """IMAGEGATE_ROUTER_ADDR, IMAGEGATE_QUOTA_ADDR, IMAGEGATE_METERING_ADDR, IMAGEGATE_DATA_DIR
        (checked, never wrapped)."""
        e = os.environ if env is None else env
        return cls(
            router_addr=check_address(
                e.get("IMAGEGATE_ROUTER_ADDR", DEFAULT_ROUTER_ADDR),
                variable="IMAGEGATE_ROUTER_ADDR",
            ),
            quota_addr=check_address(
                e.get("IMAGEGATE_QUOTA_ADDR", DEFAULT_QUOTA_ADDR), variable="IMAGEGATE_QUOTA_ADDR"
            ),
            metering_addr=check_address(
                e.get("IMAGEGATE_METERING_ADDR", DEFAULT_METERING_ADDR),
                variable="IMAGEGATE_METERING_ADDR",
            ),
            data_dir=default_data_dir(e),
        )

    def api_key(self) -> str:
        """IMAGEGATE_API_KEY, else the dev key file written by `make run`."""
        return _secret("IMAGEGATE_API_KEY", self.data_dir / "dev-api-key", "API key")

    def admin_token(self) -> str:
        """IMAGEGATE_ADMIN_TOKEN, else the admin token file written by `make run`."""
        return _secret("IMAGEGATE_ADMIN_TOKEN", self.data_dir / "admin-token", "admin token")

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS when IMAGEGATE_TLS_DIR or IMAGEGATE_TLS_CA is set; None: plaintext.

        With a certificate directory the CLI shows the `admin` identity of `make certs`
        (Quota's admin RPCs under mTLS); with only a CA it verifies the Router's public port.
        """
        transport = transport_from_env(os.environ, "admin")
        if transport.tls is not None:
            return transport.channel_credentials()
        ca = os.environ.get("IMAGEGATE_TLS_CA", "").strip()
        if ca:
            return grpc.ssl_channel_credentials(root_certificates=Path(ca).read_bytes())
        return None

    def api_metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying the API key."""
        return (("authorization", f"Bearer {self.api_key()}"),)

    def admin_metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying the admin token."""
        return (("authorization", f"Bearer {self.admin_token()}"),)


def _secret(var: str, path: Path, what: str) -> str:
    value = os.environ.get(var, "").strip()
    if value:
        return value
    if path.exists():
        return path.read_text().strip()
    raise ImagegateError(
        grpc.StatusCode.UNAUTHENTICATED,
        "CREDENTIALS_NOT_FOUND",
        f"no {what}: set {var} or start the stack with `make run` (it writes {path})",
    )
