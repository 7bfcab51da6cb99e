"""Reading bearer credentials from call metadata without ever logging them."""

from __future__ import annotations

import hmac

import grpc

from imagegate.grpckit import reasons
from imagegate.grpckit.errors import ImagegateError


def bearer_token(context: grpc.aio.ServicerContext) -> str | None:
    """The token of an `authorization: Bearer <token>` header, or None."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


def require_bearer(context: grpc.aio.ServicerContext, *, domain: str) -> str:
    """The bearer token, or UNAUTHENTICATED with reason API_KEY_MISSING."""
    token = bearer_token(context)
    if token is None:
        raise ImagegateError(
            grpc.StatusCode.UNAUTHENTICATED,
            reasons.API_KEY_MISSING,
            "missing credentials: send metadata 'authorization: Bearer <api key>'",
            domain=domain,
        )
    return token


def require_admin(context: grpc.aio.ServicerContext, admin_token: str, *, domain: str) -> None:
    """Checks the admin token in constant time; UNAUTHENTICATED otherwise."""
    token = bearer_token(context) or ""
    if not admin_token or not hmac.compare_digest(token.encode(), admin_token.encode()):
        raise ImagegateError(
            grpc.StatusCode.UNAUTHENTICATED,
            reasons.ADMIN_TOKEN_INVALID,
            "this RPC needs 'authorization: Bearer <admin token>'",
            domain=domain,
        )
