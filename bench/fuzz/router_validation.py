"""Fuzz target: the Router's GenerateImageRequest validation must refuse cleanly or normalize safely."""

from __future__ import annotations

from typing import Any

import grpc
from hypothesis import strategies as st

from imagegate.common.v1 import image_pb2
from imagegate.grpckit.errors import ImagegateError
from imagegate.router.v1 import router_pb2
from services.router.catalog import Catalog, load_catalog
from services.router.validation import (
    MAX_NEGATIVE,
    MAX_PROMPT,
    MAX_REQUEST_ID,
    MAX_SIDE,
    MIN_SIDE,
    REQUEST_ID_CHARS,
    normalize,
)

# gRPC peers refuse header blocks past 8 KiB by default: an error status (message and details,
# carried in the trailers) must stay well under that whatever the caller sent.
MAX_STATUS_BYTES = 4096

_CATALOG: dict[str, Catalog] = {}


def catalog() -> Catalog:
    """The bundled catalog, loaded once per process."""
    if "c" not in _CATALOG:
        _CATALOG["c"] = load_catalog()
    return _CATALOG["c"]


def _texts(limit: int) -> st.SearchStrategy[str]:
    """Short and long, printable and hostile strings (NUL, newlines, RTL marks, emoji)."""
    hostile = st.sampled_from(["\x00", "\n", "\r\n", "\t", "\u202e", "\ufeff", "😀", ",", '"'])
    return st.one_of(
        st.text(max_size=40),
        st.text(alphabet=st.characters(codec="ascii"), max_size=40),
        st.builds(lambda a, h, b: a + h + b, st.text(max_size=10), hostile, st.text(max_size=10)),
        st.integers(limit - 2, limit + 2).map(lambda n: "x" * max(n, 0)),
        st.integers(0, 3).map(lambda n: "y" * (10_000 * n)),
    )


def _known_or_random(values: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(values or [""]), _texts(64))


def requests() -> st.SearchStrategy[router_pb2.GenerateImageRequest]:
    """GenerateImageRequests with every field free, including unset optionals and odd enums."""
    cat = catalog()
    int32 = st.integers(-(2**31), 2**31 - 1)
    side = st.one_of(st.integers(MIN_SIDE - 2, MAX_SIDE + 2), int32)
    fields: dict[str, st.SearchStrategy[Any]] = {
        "request_id": _texts(MAX_REQUEST_ID),
        "prompt": _texts(MAX_PROMPT),
        "negative_prompt": _texts(MAX_NEGATIVE),
        "model": _known_or_random(list(cat.models)),
        "style": _known_or_random(list(cat.styles)),
        "num_images": int32,
        "width": side,
        "height": side,
        "steps": int32,
        "guidance_scale": st.floats(allow_nan=True, allow_infinity=True, width=32),
        "seed": st.integers(-(2**63), 2**63 - 1),
        "max_cost_micros": st.integers(-(2**63), 2**63 - 1),
        "preference": int32,
        "output_format": int32,
        "allow_degradation": st.booleans(),
    }
    settable = {name: st.one_of(st.none(), strategy) for name, strategy in fields.items()}
    return st.fixed_dictionaries(settable).map(_build)


def _build(values: dict[str, Any]) -> router_pb2.GenerateImageRequest:
    req = router_pb2.GenerateImageRequest()
    for name, value in values.items():
        if value is None:
            continue
        field = req.DESCRIPTOR.fields_by_name.get(name)
        if field is None:
            continue
        setattr(req, name, value)
    return req


def check_request(req: router_pb2.GenerateImageRequest) -> str:
    """The property: INVALID_ARGUMENT with a small status, or a request safe to send onwards.

    Returns "ok" or the refusal's reason, so a run can say which paths it reached.
    """
    try:
        norm = normalize(req, catalog())
    except ImagegateError as err:
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT, err
        assert err.field_violations, "an invalid request names the fields at fault"
        size = len(err.to_status_proto().SerializeToString())
        assert size <= MAX_STATUS_BYTES, f"error status of {size} bytes echoes caller input"
        return err.reason
    t = norm.template
    assert not req.request_id or (
        len(req.request_id) <= MAX_REQUEST_ID and REQUEST_ID_CHARS.fullmatch(req.request_id)
    )
    assert 1 <= norm.num_images <= 4
    assert MIN_SIDE <= t.width <= MAX_SIDE and MIN_SIDE <= t.height <= MAX_SIDE
    assert t.prompt.strip()
    assert t.output_format in image_pb2.ImageFormat.values()
    assert norm.megapixels > 0
    assert norm.aliases, "a valid request has somewhere to go"
    return "ok"


def check_wire(data: bytes) -> str:
    """Arbitrary bytes that parse as a GenerateImageRequest obey the same property."""
    from google.protobuf.message import DecodeError

    try:
        req = router_pb2.GenerateImageRequest.FromString(data)
    except DecodeError:
        return "undecodable"  # grpc refuses it before any of our code runs
    return check_request(req)
