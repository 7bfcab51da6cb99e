"""How a process secures its ports and calls: TLS files, the service token, start-up refusals."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from imagegate.grpckit.service_auth import SERVICE_TOKEN_HEADER, ServiceGuard, service_methods
from imagegate.grpckit.tls import TlsFiles, channel_credentials, is_loopback, server_credentials

# Admin tokens that appear in examples, compose files and tests: never accepted outside dev mode.
WEAK_ADMIN_TOKENS = frozenset(
    {"admin", "adm", "bench", "changeme", "change-me", "dev", "password", "secret", "test", "token"}
)
MIN_SECRET_CHARS = 16


class InsecureConfigError(RuntimeError):
    """A setting that must not be used where this process runs; the message says which and why."""


@dataclass(frozen=True)
class Transport:
    """How one process listens and dials: TLS material and the service token (docs/security.md)."""

    tls: TlsFiles | None = None
    """Certificate, key and CA; None: plaintext (loopback only unless allow_plaintext)."""
    service_token: str = ""
    """Shared secret services send in SERVICE_TOKEN_HEADER when TLS is off."""
    peers: frozenset[str] = field(default_factory=lambda: frozenset({"router"}))
    """Certificate common names allowed to call internal RPCs."""
    allow_plaintext: bool = False
    """Permit plaintext on a non-loopback address (a mesh that encrypts for us)."""
    dev_mode: bool | None = None
    """Dev-mode leniency (weak secrets allowed); None: dev exactly when listening on loopback."""
    health_port: int = 0
    """With TLS: a plaintext port serving only grpc.health (kubelet probes speak no TLS); 0: none."""

    def is_dev(self, address: str) -> bool:
        """Whether dev-mode rules apply to a process listening on `address`."""
        return self.dev_mode if self.dev_mode is not None else is_loopback(address)

    def check_listen(self, address: str) -> None:
        """Refuses plaintext on a non-loopback address unless explicitly allowed."""
        if self.tls is None and not self.allow_plaintext and not is_loopback(address):
            raise InsecureConfigError(
                f"refusing plaintext gRPC on {address}: set IMAGEGATE_TLS_CERT/KEY/CA "
                "(make certs), or IMAGEGATE_ALLOW_PLAINTEXT=true behind a mesh that encrypts"
            )

    def server_credentials(self, *, client_auth: bool) -> grpc.ServerCredentials | None:
        """TLS credentials for a server (reloaded on change), or None for plaintext."""
        if self.tls is None:
            return None
        return server_credentials(self.tls, client_auth=client_auth and self.tls.ca is not None)

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """Credentials to dial another service (mTLS with our certificate), or None."""
        return channel_credentials(self.tls) if self.tls is not None else None

    @property
    def has_service_identity(self) -> bool:
        """Whether callers can be told apart: a service token, or mTLS with our CA."""
        return bool(self.service_token) or (self.tls is not None and self.tls.ca is not None)

    def outbound_metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata every internal call sends: the service token when one is set."""
        return ((SERVICE_TOKEN_HEADER, self.service_token),) if self.service_token else ()

    def guard(self, service: str, names: Iterable[str], *, domain: str) -> ServiceGuard:
        """A guard admitting only services to `names` of `service`."""
        return ServiceGuard(
            token=self.service_token,
            peers=self.peers if self.tls is not None and self.tls.ca is not None else (),
            methods=service_methods(service, names),
            domain=domain,
        )

    def require_service_identity(self, what: str) -> None:
        """Refuses to start an internal service no caller could authenticate to."""
        if not self.service_token and (self.tls is None or self.tls.ca is None):
            raise InsecureConfigError(
                f"{what} needs a way to authenticate services: set IMAGEGATE_SERVICE_TOKEN "
                "(the same value for the Router) or mTLS (IMAGEGATE_TLS_CERT/KEY/CA)"
            )
        if self.service_token and len(self.service_token) < MIN_SECRET_CHARS:
            raise InsecureConfigError(
                f"IMAGEGATE_SERVICE_TOKEN is shorter than {MIN_SECRET_CHARS} characters"
            )


def refuse_weak_secrets(
    *, dev: bool, pepper: str | None = None, admin_token: str | None = None
) -> None:
    """Outside dev mode: no empty API-key pepper, no default or short admin token."""
    if dev:
        return
    if pepper is not None and len(pepper) < MIN_SECRET_CHARS:
        raise InsecureConfigError(
            f"IMAGEGATE_QUOTA_KEY_PEPPER must be set (at least {MIN_SECRET_CHARS} characters) "
            "outside dev mode: it keys the API-key hashes"
        )
    if admin_token and (
        admin_token.lower() in WEAK_ADMIN_TOKENS or len(admin_token) < MIN_SECRET_CHARS
    ):
        raise InsecureConfigError(
            f"IMAGEGATE_ADMIN_TOKEN is a default or shorter than {MIN_SECRET_CHARS} characters; "
            "generate one (e.g. `openssl rand -base64 32`) or leave it empty to refuse admin RPCs"
        )


class SecuritySettings(BaseSettings):
    """IMAGEGATE_TLS_*, IMAGEGATE_SERVICE_TOKEN and friends; shared by every service."""

    model_config = SettingsConfigDict(env_prefix="IMAGEGATE_", extra="ignore", frozen=True)

    dev_mode: bool | None = Field(
        None, description="Dev-mode leniency; unset: on exactly when listening on loopback."
    )
    tls_dir: Path | None = Field(
        None,
        description="Directory laid out like `make certs` output: ca.pem, <name>.pem, "
        "<name>-key.pem; each process picks its own name (one setting for a whole stack).",
    )
    tls_cert: Path | None = Field(None, description="PEM certificate chain of this process.")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert.")
    tls_ca: Path | None = Field(
        None,
        description="PEM CA bundle peers chain to; set: internal servers require client certs.",
    )
    allow_plaintext: bool = Field(False, description="Permit plaintext on non-loopback addresses.")
    service_token: str = Field("", description="Shared internal-call secret when TLS is off.")
    service_peers: str = Field(
        "router", description="Comma-separated certificate names allowed to call internal RPCs."
    )
    health_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="With TLS: plaintext port with only the health service, for kubelet probes.",
    )

    def transport(self, name: str) -> Transport:
        """The Transport these settings describe for the process called `name` ("quota")."""
        tls = None
        if self.tls_dir is not None and self.tls_cert is None and self.tls_key is None:
            tls = TlsFiles(
                cert=self.tls_dir / f"{name}.pem",
                key=self.tls_dir / f"{name}-key.pem",
                ca=self.tls_ca or self.tls_dir / "ca.pem",
            )
        elif self.tls_cert is not None or self.tls_key is not None:
            if self.tls_cert is None or self.tls_key is None:
                raise InsecureConfigError("set both IMAGEGATE_TLS_CERT and IMAGEGATE_TLS_KEY")
            tls = TlsFiles(cert=self.tls_cert, key=self.tls_key, ca=self.tls_ca)
        return Transport(
            tls=tls,
            service_token=self.service_token.strip(),
            peers=frozenset(p.strip() for p in self.service_peers.split(",") if p.strip()),
            allow_plaintext=self.allow_plaintext,
            dev_mode=self.dev_mode,
            health_port=self.health_port,
        )


def transport_from_env(env: Mapping[str, str], name: str = "admin") -> Transport:
    """The Transport process `name` would build from `env` (stacks, tests, bootstrap)."""
    values = {
        name: env[f"IMAGEGATE_{name.upper()}"]
        for name in SecuritySettings.model_fields
        if f"IMAGEGATE_{name.upper()}" in env
    }
    return SecuritySettings.model_validate(values).transport(name)


def startup_transport(
    address: str,
    what: str,
    *,
    internal: bool,
    pepper: str | None = None,
    admin_token: str | None = None,
) -> Transport:
    """The process's Transport from the environment, or exit with the reason it is unsafe.

    `internal`: a service whose RPCs only other services call (Quota, Metering), which must
    be able to authenticate them even in dev mode; outside dev mode every process must (the
    Router to present it, adapters to check it). Checked before anything opens, so a
    misconfigured replica never joins the pool.
    """
    try:
        transport = SecuritySettings().transport(what)
        transport.check_listen(address)
        if internal or not transport.is_dev(address):
            transport.require_service_identity(what)
        refuse_weak_secrets(dev=transport.is_dev(address), pepper=pepper, admin_token=admin_token)
    except InsecureConfigError as err:
        raise SystemExit(f"imagegate {what}: refusing to start: {err}") from None
    return transport
