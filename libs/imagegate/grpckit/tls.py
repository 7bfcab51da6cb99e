"""TLS material from files: server credentials that pick up a renewed certificate, client ones."""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsFiles:
    """Where a process's certificate, key and trusted CA live (PEM files)."""

    cert: Path
    """This process's certificate chain: served to callers, and shown to servers under mTLS."""
    key: Path
    """The private key of `cert`."""
    ca: Path | None = None
    """CA bundle that peers' certificates must chain to; None: the system roots (clients only)."""


def is_loopback(address: str) -> bool:
    """Whether a listen or dial address ("host:port", "[::1]:port", "localhost:0") stays on this host."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _ReloadingCertificate:
    """Hands gRPC a new certificate configuration when the files change on disk.

    gRPC asks on every TLS handshake (new connection, not per call), so a stat of two files
    is all a handshake pays; a half-written pair (mid-rotation) keeps the previous one.
    """

    def __init__(self, files: TlsFiles) -> None:
        self._files = files
        self._lock = threading.Lock()
        self._stamp = self._mtimes()
        self.initial = self._load()

    def _mtimes(self) -> tuple[int, int, int]:
        ca = self._files.ca
        return (
            os.stat(self._files.cert).st_mtime_ns,
            os.stat(self._files.key).st_mtime_ns,
            os.stat(ca).st_mtime_ns if ca is not None else 0,
        )

    def _load(self) -> grpc.ServerCertificateConfiguration:
        files = self._files
        return grpc.ssl_server_certificate_configuration(
            [(files.key.read_bytes(), files.cert.read_bytes())],
            root_certificates=files.ca.read_bytes() if files.ca is not None else None,
        )

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            stamp = self._mtimes()
        except OSError:
            return None
        with self._lock:
            if stamp == self._stamp:
                return None
            try:
                config = self._load()
            except (OSError, ValueError):
                log.warning("certificate files changed but could not be read; keeping the old")
                return None
            self._stamp = stamp
        log.info("certificate reloaded", extra={"cert": str(self._files.cert)})
        return config


def server_credentials(files: TlsFiles, *, client_auth: bool) -> grpc.ServerCredentials:
    """TLS server credentials reloaded on change; `client_auth`: callers need a cert from `ca`."""
    if client_auth and files.ca is None:
        raise ValueError("client certificate checks need a CA file")
    reloading = _ReloadingCertificate(files)
    return grpc.dynamic_ssl_server_credentials(
        reloading.initial, reloading, require_client_authentication=client_auth
    )


def channel_credentials(
    files: TlsFiles | None, *, ca: Path | None = None
) -> grpc.ChannelCredentials:
    """Client credentials: trust `ca` (or files.ca, or the system roots), present files.cert when given."""
    roots = ca or (files.ca if files is not None else None)
    return grpc.ssl_channel_credentials(
        root_certificates=roots.read_bytes() if roots is not None else None,
        private_key=files.key.read_bytes() if files is not None else None,
        certificate_chain=files.cert.read_bytes() if files is not None else None,
    )
