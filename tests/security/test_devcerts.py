"""`make certs`: a CA kept across runs, per-service certificates usable both ways, private keys 0600."""

from __future__ import annotations

import ipaddress
import stat
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from imagegate.devcerts.issue import SERVICES, issue_all

ROOT = Path(__file__).resolve().parents[2]


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_each_service_gets_a_certificate_named_after_it_for_server_and_client_use(tmp_path: Path):
    issue_all(tmp_path, hosts=["quota.imagegate.svc"])
    ca = _cert(tmp_path / "ca.pem")
    for name in SERVICES:
        cert = _cert(tmp_path / f"{name}.pem")
        cert.verify_directly_issued_by(ca)
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert cn == name
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert name in san.get_values_for_type(x509.DNSName)
        assert "quota.imagegate.svc" in san.get_values_for_type(x509.DNSName)
        assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.SERVER_AUTH in usage
        assert ExtendedKeyUsageOID.CLIENT_AUTH in usage
        assert stat.S_IMODE((tmp_path / f"{name}-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "ca-key.pem").stat().st_mode) == 0o600


def test_a_second_run_keeps_the_ca_and_renews_the_certificates(tmp_path: Path):
    issue_all(tmp_path, ["quota"])
    ca_before = (tmp_path / "ca.pem").read_bytes()
    cert_before = (tmp_path / "quota.pem").read_bytes()
    issue_all(tmp_path, ["quota"])
    assert (tmp_path / "ca.pem").read_bytes() == ca_before
    assert (tmp_path / "quota.pem").read_bytes() != cert_before
    _cert(tmp_path / "quota.pem").verify_directly_issued_by(_cert(tmp_path / "ca.pem"))


def test_the_command_writes_into_the_data_directory(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "imagegate.devcerts", "router"],
        cwd=ROOT,
        env={"IMAGEGATE_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", **_pythonpath()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "certs" / "router.pem").exists()
    assert "IMAGEGATE_TLS_CA=" in done.stdout


def _pythonpath() -> dict[str, str]:
    import os

    return {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}
