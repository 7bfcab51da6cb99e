"""`python -m imagegate.devcerts` (make certs): dev CA + service certificates in <data dir>/certs."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from imagegate.devcerts.issue import SERVICES, issue_all


def main() -> None:
    """Writes the certificates and prints the variables that turn TLS on."""
    parser = argparse.ArgumentParser(prog="python -m imagegate.devcerts", description=__doc__)
    default_out = Path(os.environ.get("IMAGEGATE_DATA_DIR", ".imagegate")) / "certs"
    parser.add_argument("--out", type=Path, default=default_out, help="output directory")
    parser.add_argument(
        "--host", action="append", default=[], help="extra DNS name or IP on every certificate"
    )
    parser.add_argument("--days", type=int, default=365, help="validity of service certificates")
    parser.add_argument("names", nargs="*", default=list(SERVICES), help="identities to issue")
    args = parser.parse_args()
    issued = issue_all(args.out, args.names, hosts=args.host, days=args.days)
    out = args.out.resolve()
    print(f"dev CA and {len(issued)} certificates in {out} (keys are mode 0600)")
    print("TLS for a process, e.g. quota:")
    print(f"  IMAGEGATE_TLS_CA={out}/ca.pem")
    print(f"  IMAGEGATE_TLS_CERT={out}/quota.pem IMAGEGATE_TLS_KEY={out}/quota-key.pem")


if __name__ == "__main__":
    main()
