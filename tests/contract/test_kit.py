"""The provider kit's HTTP pieces: error table, Retry-After, redaction, polling, safe downloads."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime

import httpx
import pytest

from imagegate.emulators.base import Emulator, Fault
from imagegate.grpckit import reasons
from imagegate.grpckit.deadline import Deadline
from imagegate.providerkit.download import check_result_url, download_image, host_allowed
from imagegate.providerkit.errors import ProviderError
from imagegate.providerkit.http import (
    Pending,
    build_client,
    error_from_status,
    json_body,
    parse_retry_after,
    poll_until,
    retry_after_from_headers,
    send,
)
from imagegate.providerkit.types import OutputFormat

SECRET = "sk-very-secret-123456"


def _resp(
    status: int, body: object = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    request = httpx.Request(
        "POST", "https://api.example.com/v1/x", headers={"authorization": f"Bearer {SECRET}"}
    )
    content = json.dumps(body).encode() if body is not None else b""
    return httpx.Response(status, content=content, headers=headers, request=request)


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (400, reasons.PROVIDER_INVALID_REQUEST),
        (401, reasons.PROVIDER_AUTH_FAILED),
        (402, reasons.PROVIDER_OUT_OF_CREDITS),
        (403, reasons.PROVIDER_AUTH_FAILED),
        (404, reasons.PROVIDER_INVALID_REQUEST),
        (408, reasons.PROVIDER_TIMEOUT),
        (413, reasons.PROVIDER_INVALID_REQUEST),
        (422, reasons.PROVIDER_INVALID_REQUEST),
        (429, reasons.PROVIDER_RATE_LIMITED),
        (500, reasons.PROVIDER_UNAVAILABLE),
        (502, reasons.PROVIDER_UNAVAILABLE),
        (503, reasons.PROVIDER_UNAVAILABLE),
        (504, reasons.PROVIDER_TIMEOUT),
        (418, reasons.PROVIDER_BAD_RESPONSE),
        (520, reasons.PROVIDER_UNAVAILABLE),
    ],
)
def test_generic_error_table(status: int, reason: str) -> None:
    err = error_from_status(_resp(status, {"detail": "nope"}), message="create failed")
    assert err.reason == reason
    assert err.http_status == status
    assert err.message == f"create failed: HTTP {status}: nope"


def test_retry_after_kept_on_429_and_5xx_only() -> None:
    assert (
        error_from_status(
            _resp(429, headers={"Retry-After": "12"}), message="m"
        ).retry_after_seconds
        == 12
    )
    assert (
        error_from_status(_resp(503, headers={"Retry-After": "3"}), message="m").retry_after_seconds
        == 3
    )
    assert (
        error_from_status(_resp(400, headers={"Retry-After": "3"}), message="m").retry_after_seconds
        is None
    )


def test_parse_retry_after_forms() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7", now=now) == 7
    assert parse_retry_after("1.5", now=now) == 1.5
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now=now) == 30
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == 0
    assert parse_retry_after("-4", now=now) == 0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None) is None
    headers = httpx.Headers({"retry-after-ms": "250", "retry-after": "9"})
    assert retry_after_from_headers(headers) == 0.25


def test_error_bodies_understood_and_key_scrubbed() -> None:
    shapes: list[object] = [
        {"detail": [{"loc": ["body", "prompt"], "msg": "bad prompt", "type": "x"}]},
        {"title": "Insufficient credit", "detail": "top up", "status": 402},
        {"error": {"message": f"Incorrect API key provided: {SECRET}", "type": "auth"}},
        {"error": ["one", "two"]},
        {"errors": [{"message": "first"}]},
        {"message": "plain"},
    ]
    texts = [error_from_status(_resp(400, s), message="m").message for s in shapes]
    assert texts[0].endswith("bad prompt")
    assert texts[1].endswith("Insufficient credit: top up")
    assert SECRET not in texts[2] and "[redacted]" in texts[2]
    assert texts[3].endswith("one: two")
    assert texts[4].endswith("first") and texts[5].endswith("plain")


def test_truncated_json_is_bad_response() -> None:
    resp = httpx.Response(200, content=b'{"id": "abc", "sta')
    with pytest.raises(ProviderError) as info:
        json_body(resp, billable=True, job_id="abc")
    assert info.value.reason == reasons.PROVIDER_BAD_RESPONSE
    assert info.value.billable and info.value.provider_job_id == "abc"


def test_result_url_rules() -> None:
    hosts = (".fal.media",)
    assert check_result_url(
        "https://v3.fal.media/files/a.png", allowed_hosts=hosts, loopback_ok=False
    )
    assert host_allowed("fal.media", hosts)
    assert not host_allowed("evilfal.media", hosts)
    for bad in (
        "http://v3.fal.media/files/a.png",
        "https://fal.media.evil.com/a.png",
        "http://127.0.0.1:8000/a.png",
        "file:///etc/passwd",
    ):
        with pytest.raises(ProviderError):
            check_result_url(bad, allowed_hosts=hosts, loopback_ok=False)
    assert check_result_url("http://127.0.0.1:8000/a.png", allowed_hosts=hosts, loopback_ok=True)
    with pytest.raises(ProviderError):
        check_result_url("http://10.0.0.8/a.png", allowed_hosts=hosts, loopback_ok=True)


class _Files(Emulator):
    name = "files"

    def add_routes(self, app: object) -> None:
        return None


@pytest.fixture
async def files() -> object:
    e = _Files()
    await e.start()
    client = httpx.AsyncClient(headers={"authorization": f"Bearer {SECRET}"})
    try:
        yield e, client
    finally:
        await client.aclose()
        await e.stop()


async def test_download_caps_size_strips_credentials_and_sniffs(
    files: tuple[_Files, httpx.AsyncClient],
) -> None:
    e, client = files
    e.faults.set(Fault("wrong_content_type", count=1))
    data, declared, actual = e.result_image(64, 48, OutputFormat.PNG, 1)
    assert (declared, actual) == ("image/png", OutputFormat.JPEG)
    url = e.store_file(data, declared)
    img = await download_image(
        client,
        url,
        deadline=Deadline.after(5),
        allowed_hosts=(),
        loopback_ok=True,
        max_bytes=1_000_000,
        wanted=OutputFormat.PNG,
    )
    assert (img.width, img.height, img.format) == (64, 48, OutputFormat.PNG)
    assert img.data.startswith(b"\x89PNG")
    assert "authorization" not in e.cdn_calls[0].headers
    with pytest.raises(ProviderError) as info:
        await download_image(
            client,
            url,
            deadline=Deadline.after(5),
            allowed_hosts=(),
            loopback_ok=True,
            max_bytes=100,
            wanted=OutputFormat.PNG,
            job_id="j1",
        )
    assert info.value.reason == reasons.PROVIDER_BAD_RESPONSE
    assert "cap" in info.value.message and info.value.billable
    assert info.value.provider_job_id == "j1"


async def test_send_maps_transport_errors() -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(ProviderError) as info:
            await send(client, "GET", "http://127.0.0.1:9/", deadline=Deadline.after(2))
    assert info.value.reason == reasons.PROVIDER_UNAVAILABLE
    assert info.value.extra["request_sent"] == "false"


async def test_poll_until_cancels_before_the_deadline() -> None:
    cancelled: list[float] = []
    deadline = Deadline.after(0.6)

    async def step(d: Deadline) -> str | Pending:
        return Pending()

    async def cancel(d: Deadline) -> None:
        cancelled.append(d.remaining())

    with pytest.raises(ProviderError) as info:
        await poll_until(deadline, 0.05, step, on_timeout=cancel, job_id="j9")
    assert info.value.reason == reasons.PROVIDER_TIMEOUT
    assert info.value.provider_job_id == "j9" and info.value.billable
    assert len(cancelled) == 1 and cancelled[0] > 0, "cancel ran while time was left"


async def test_poll_until_returns_result_and_honours_after() -> None:
    calls: list[int] = []

    async def step(d: Deadline) -> str | Pending:
        calls.append(1)
        return "done" if len(calls) == 3 else Pending(after=0.01)

    assert await poll_until(Deadline.after(5), 10.0, step) == "done"
    assert len(calls) == 3


async def test_emulator_runs_standalone_with_http_fault_switch() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "imagegate.emulators",
        "fal",
        "--port",
        "0",
        "--latency",
        "0.1",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        base_url = line.strip().rsplit(" ", 1)[-1]
        assert base_url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient(base_url=base_url) as client:
            r = await client.post("/_emulator/faults", json={"kind": "error_503", "count": 1})
            assert r.json()["fault"]["kind"] == "error_503"
            r = await client.post(
                "/fal-ai/flux/schnell", json={"prompt": "x"}, headers={"Authorization": "Key k"}
            )
            assert r.status_code == 503
            r = await client.post(
                "/fal-ai/flux/schnell", json={"prompt": "x"}, headers={"Authorization": "Key k"}
            )
            assert r.status_code == 200 and r.json()["status_url"].startswith(base_url)
            calls = (await client.get("/_emulator/calls")).json()["calls"]
            assert [c["headers"]["authorization"] for c in calls] == ["***", "***"]
            bad = await client.post("/_emulator/faults", json={"kind": "nope"})
            assert bad.status_code == 400
    finally:
        proc.terminate()
        await proc.wait()


async def test_adapter_client_says_never_sent_only_when_the_connect_failed() -> None:
    client = build_client(
        base_url="http://127.0.0.1:9", headers={}, max_connections=4, telemetry=None
    )
    async with client:
        with pytest.raises(ProviderError) as refused:
            await send(client, "POST", "/x", json={"a": 1}, deadline=Deadline.after(2))
    assert refused.value.reason == reasons.PROVIDER_UNAVAILABLE
    assert refused.value.extra["request_sent"] == "false"

    got: list[bytes] = []

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got.append(await reader.readuntil(b"\r\n\r\n"))
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = build_client(
        base_url=f"http://127.0.0.1:{port}", headers={}, max_connections=4, telemetry=None
    )
    try:
        async with client:
            with pytest.raises(ProviderError) as dropped:
                await send(client, "POST", "/x", json={"a": 1}, deadline=Deadline.after(2))
    finally:
        server.close()
        await server.wait_closed()
    assert got, "the request reached the server"
    assert dropped.value.reason == reasons.PROVIDER_UNAVAILABLE
    assert dropped.value.extra["request_sent"] == "unknown"
