"""The manifest of a stored result: who it belongs to, when it expires and the digest and size of
each of its parts. Both stores write it last and read it first, so a result without a manifest
does not exist."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime

from imagegate.results.model import ResultCorruptedError, StoredResult

FORMAT = 1


@dataclass(frozen=True)
class Blob:
    """One part of a result (the response or an image) by content."""

    sha256: str
    """Hex SHA-256 of the bytes."""
    size: int
    """Length in bytes."""

    @classmethod
    def of(cls, data: bytes) -> Blob:
        """The reference of `data`."""
        return cls(hashlib.sha256(data).hexdigest(), len(data))

    def check(self, data: bytes, what: str) -> bytes:
        """`data` when it is these bytes; ResultCorruptedError otherwise."""
        if len(data) != self.size or hashlib.sha256(data).hexdigest() != self.sha256:
            raise ResultCorruptedError(f"{what} does not match its manifest")
        return data


@dataclass(frozen=True)
class Manifest:
    """What a stored result says about itself."""

    tenant_id: str
    """Tenant of the request (also guards against a key collision)."""
    request_id: str
    """The request's idempotency key, as the caller sent it."""
    created_at: datetime
    """When it was stored."""
    expires_at: datetime
    """When it stops counting."""
    response: Blob
    """The serialized response."""
    images: tuple[Blob, ...]
    """The images, in order."""
    location: str = ""
    """Where the parts live, relative to the result's key (S3: the folder of this put)."""

    @classmethod
    def build(
        cls,
        tenant_id: str,
        request_id: str,
        response: bytes,
        images: list[bytes],
        *,
        created_at: datetime,
        expires_at: datetime,
        location: str = "",
    ) -> Manifest:
        """The manifest of a result about to be stored."""
        return cls(
            tenant_id,
            request_id,
            created_at,
            expires_at,
            Blob.of(response),
            tuple(Blob.of(image) for image in images),
            location,
        )

    def belongs_to(self, tenant_id: str, request_id: str) -> bool:
        """True when this is the result of that request."""
        return (self.tenant_id, self.request_id) == (tenant_id, request_id)

    def expired(self, now: datetime) -> bool:
        """True when the result no longer counts at `now`."""
        return now >= self.expires_at

    def same_content(self, other: Manifest) -> bool:
        """True when both describe the same response and images (times aside)."""
        return (self.response, self.images) == (other.response, other.images)

    def result(self, response: bytes, images: list[bytes]) -> StoredResult:
        """The StoredResult of these parts, each checked against its digest."""
        if len(images) != len(self.images):
            raise ResultCorruptedError("the number of images does not match the manifest")
        return StoredResult(
            response=self.response.check(response, "response"),
            images=[
                blob.check(data, f"image {i}")
                for i, (blob, data) in enumerate(zip(self.images, images, strict=True))
            ],
            created_at=self.created_at,
            expires_at=self.expires_at,
        )

    def encode(self) -> bytes:
        """Canonical JSON bytes."""
        return json.dumps(
            {
                "format": FORMAT,
                "tenant_id": self.tenant_id,
                "request_id": self.request_id,
                "created_at": self.created_at.isoformat(),
                "expires_at": self.expires_at.isoformat(),
                "response": [self.response.sha256, self.response.size],
                "images": [[b.sha256, b.size] for b in self.images],
                "location": self.location,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Manifest:
        """The manifest of `encode`'s bytes; ResultCorruptedError when they are not one."""
        try:
            data = json.loads(raw)
            if data["format"] != FORMAT:
                raise ValueError(f"unknown manifest format {data['format']!r}")
            return cls(
                tenant_id=data["tenant_id"],
                request_id=data["request_id"],
                created_at=datetime.fromisoformat(data["created_at"]),
                expires_at=datetime.fromisoformat(data["expires_at"]),
                response=Blob(*data["response"]),
                images=tuple(Blob(sha, size) for sha, size in data["images"]),
                location=data["location"],
            )
        except (ValueError, KeyError, TypeError) as err:
            raise ResultCorruptedError(f"not a result manifest: {err}") from err
