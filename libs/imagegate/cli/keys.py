"""`imagegate admin key-list / key-rotate / key-revoke --after`: API keys, never their secrets."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from imagegate.cli.output import table
from imagegate.quota.v1 import quota_pb2, quota_pb2_grpc

_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
KEY_ACTIONS = ("key-list", "key-rotate", "key-revoke")


def duration(text: str) -> int:
    """Seconds of "90s", "15m", "24h" or "7d" (argparse type)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError("a duration like 90s, 15m, 24h or 7d")
    return int(match.group(1)) * _UNIT[match.group(2)]


def add_key_parsers(asub: argparse._SubParsersAction[Any], ident: Callable[[str], str]) -> None:
    """The key subcommands of `imagegate admin`."""
    kl = asub.add_parser("key-list", help="key prefixes, labels, creation, last use, revocation")
    kl.add_argument("--tenant", dest="tenant_id", type=ident, default=None)
    rot = asub.add_parser(
        "key-rotate", help="create a successor key; the old one keeps working for --overlap"
    )
    rot.add_argument("key_id", type=ident)
    rot.add_argument("--overlap", type=duration, default=24 * 3600, help="default 24h")
    rot.add_argument("--label", default=None, help="label of the new key (default: the old one's)")
    kr = asub.add_parser("key-revoke", help="revoke a key now, or --after a grace period")
    kr.add_argument("key_id", type=ident)
    kr.add_argument("--after", type=duration, default=0, help="e.g. 1h; default: now")


def _when(ts: Timestamp, present: bool) -> str:
    if not present:
        return "-"
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%SZ")


async def cmd_keys(
    args: argparse.Namespace,
    stub: quota_pb2_grpc.QuotaServiceStub,
    meta: tuple[tuple[str, str], ...],
) -> int:
    """Runs one key subcommand against Quota with the admin token."""
    action = args.admin_action
    if action == "key-list":
        resp = await stub.ListApiKeys(
            quota_pb2.ListApiKeysRequest(tenant_id=args.tenant_id or ""), metadata=meta, timeout=10
        )
        print(
            table(
                ["key prefix", "tenant", "label", "created", "last use", "revoked"],
                [
                    [
                        k.key_id,
                        k.tenant_id,
                        k.label,
                        _when(k.create_time, True),
                        _when(k.last_use_time, k.HasField("last_use_time")),
                        _when(k.revoke_time, k.HasField("revoke_time")),
                    ]
                    for k in resp.keys
                ],
            )
        )
        return 0
    if action == "key-rotate":
        listed = await stub.ListApiKeys(quota_pb2.ListApiKeysRequest(), metadata=meta, timeout=10)
        old = next((k for k in listed.keys if k.key_id == args.key_id), None)
        if old is None:
            print(f"no API key {args.key_id}")
            return 1
        new = await stub.CreateApiKey(
            quota_pb2.CreateApiKeyRequest(
                tenant_id=old.tenant_id, label=old.label if args.label is None else args.label
            ),
            metadata=meta,
            timeout=10,
        )
        print(f"new key id {new.key_id}")
        print(f"api key (shown once): {new.api_key}")
    old_id = args.key_id
    seconds = args.overlap if action == "key-rotate" else args.after
    revoked = await stub.RevokeApiKey(
        quota_pb2.RevokeApiKeyRequest(key_id=old_id, grace_period=Duration(seconds=seconds)),
        metadata=meta,
        timeout=10,
    )
    at: datetime = revoked.revoke_time.ToDatetime()
    print(f"{old_id} {'stops working at' if seconds else 'revoked at'} {at:%Y-%m-%d %H:%M:%SZ}")
    return 0
