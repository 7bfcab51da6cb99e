"""Creates the dev CA and the certificates it signs, as PEM files in one directory."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Every process of the stack, plus `admin` (the CLI's client certificate for Quota's admin RPCs).
SERVICES = (
    "router",
    "quota",
    "metering",
    "local",
    "fal",
    "huggingface",
    "replicate",
    "bfl",
    "openai",
    "together",
    "diffusers",
    "comfyui",
    "enhancer",
    "admin",
)
CA_NAME = "imagegate dev CA"


@dataclass(frozen=True)
class IssuedFiles:
    """Where one identity's certificate and key were written."""

    cert: Path
    """PEM certificate."""
    key: Path
    """PEM private key (mode 0600)."""


def _write(path: Path, data: bytes, *, secret: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "imagegate dev"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def load_or_create_ca(
    out: Path, *, days: int = 3650
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA in `out` (ca.pem, ca-key.pem), created on first use."""
    cert_path, key_path = out / "ca.pem", out / "ca-key.pem"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path} is not an EC key")
        return cert, key
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(CA_NAME))
        .issuer_name(_name(CA_NAME))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, _key_pem(key), secret=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), secret=False)
    return cert, key


def issue(
    out: Path,
    name: str,
    *,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    hosts: Sequence[str] = (),
    days: int = 365,
) -> IssuedFiles:
    """A certificate for `name` (its common name: the identity services check) signed by `ca`.

    Valid as server and client (mTLS both ways) for `name`, localhost, 127.0.0.1, ::1 and `hosts`.
    """
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    alt: list[x509.GeneralName] = []
    for host in dict.fromkeys([name, "localhost", "127.0.0.1", "::1", *hosts]):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = IssuedFiles(cert=out / f"{name}.pem", key=out / f"{name}-key.pem")
    _write(files.key, _key_pem(key), secret=True)
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), secret=False)
    return files


def issue_all(
    out: Path, names: Sequence[str] = SERVICES, *, hosts: Sequence[str] = (), days: int = 365
) -> dict[str, IssuedFiles]:
    """The CA (kept if present) and a fresh certificate for each of `names`."""
    ca = load_or_create_ca(out)
    return {name: issue(out, name, ca=ca, hosts=hosts, days=days) for name in names}
