"""API keys: `ig_<prefix>_<secret>`, stored as HMAC-SHA-256 with a server pepper, never in clear."""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_SCHEME = "ig"


def new_key() -> tuple[str, str]:
    """A fresh key and its public id: 48 bits of prefix for lookup, 256 bits of secret."""
    key_id = f"{KEY_SCHEME}_{secrets.token_hex(6)}"
    return f"{key_id}_{secrets.token_urlsafe(32)}", key_id


def key_id_of(api_key: str) -> str | None:
    """The public id of a presented key, or None when it is not shaped like one of ours."""
    scheme, sep, rest = api_key.partition("_")
    prefix, sep2, secret = rest.partition("_")
    if scheme != KEY_SCHEME or not sep or not sep2 or len(prefix) != 12 or len(secret) < 16:
        return None
    return f"{scheme}_{prefix}"


def hash_key(api_key: str, pepper: bytes) -> str:
    """Hex HMAC-SHA-256 of the whole key; the only form that reaches the database."""
    return hmac.new(pepper, api_key.encode(), hashlib.sha256).hexdigest()


def matches(api_key: str, stored_hash: str, pepper: bytes) -> bool:
    """Constant-time comparison of a presented key with a stored hash."""
    return hmac.compare_digest(hash_key(api_key, pepper).encode(), stored_hash.encode())
