"""Where the CLI connects and which credentials it sends (never printed)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from imagegate.grpckit.errors import ImagegateError
from imagegate.grpckit.security import transport_from_env


@dataclass(frozen=True)
class Connection:
    """Addresses and credentials, read from the environment and the data directory."""

    router_addr: str
    """Router address."""
    quota_addr: str
    """Quota address (admin commands only)."""
    data_dir: Path
    """Where the dev key and admin token files live."""

    @classmethod
    def from_env(cls) -> Connection:
        """IMAGEGATE_ROUTER_ADDR, IMAGEGATE_QUOTA_ADDR, IMAGEGATE_DATA_DIR."""
        return cls(
            router_addr=os.environ.get("IMAGEGATE_ROUTER_ADDR", "127.0.0.1:50051"),
            quota_addr=os.environ.get("IMAGEGATE_QUOTA_ADDR", "127.0.0.1:50052"),
            data_dir=Path(os.environ.get("IMAGEGATE_DATA_DIR", ".imagegate")),
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
