"""``POST /uploads`` and its signed PUT against a real gateway process and the real reference
worker: an uploaded PNG is the input of an i2i and an edit job that run to an output, and every
way of abusing the URL is refused (tampered, expired, replayed, wrong type or size, not an
image, another customer's asset, no credentials)."""

from __future__ import annotations

import io
import os
import socket
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
from PIL import Image

from support.gateway import (
    ONE_WORKER_CONFIG,
    GatewayProcess,
    bearer,
    start_gateway,
    stop_gateway,
    wait_done,
)
from support.processes import WorkerProcess
from support.worker_api import wait_idle

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def gateway(
    worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    process = start_gateway(
        tmp_path_factory.mktemp("uploads"), ONE_WORKER_CONFIG.format(worker=worker.url)
    )
    yield process
    stop_gateway(process)
    wait_idle(worker, timeout=120)


@pytest.fixture(scope="module")
def alice(gateway: GatewayProcess) -> dict[str, str]:
    return bearer(gateway.new_key("alice"))


@pytest.fixture(scope="module")
def bob(gateway: GatewayProcess) -> dict[str, str]:
    return bearer(gateway.new_key("bob"))


def png(
    color: tuple[int, int, int] = (200, 30, 30), mode: str = "RGB", compress_level: int = 6
) -> bytes:
    buffer = io.BytesIO()
    picture = Image.new(mode, (64, 64), color if mode == "RGB" else color[0])
    picture.save(buffer, "PNG", compress_level=compress_level)
    return buffer.getvalue()


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == code and body["message"] and body["request_id"].startswith("req_")
    assert "Traceback" not in response.text
    return body


def create(
    gateway: GatewayProcess, headers: dict[str, str], content_type: str, size: int
) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/uploads", json={"content_type": content_type, "bytes": size},
        headers=headers, timeout=30,
    )  # fmt: skip


def ticket_for(
    gateway: GatewayProcess, headers: dict[str, str], data: bytes, content_type: str = "image/png"
) -> dict[str, Any]:
    response = create(gateway, headers, content_type, len(data))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def put(url: str, data: Any, content_type: str | None = "image/png", **kw: Any) -> httpx.Response:
    headers = {"Content-Type": content_type} if content_type else {}
    return httpx.put(url, content=data, headers={**headers, **kw.pop("headers", {})}, timeout=60)


def upload(gateway: GatewayProcess, headers: dict[str, str], data: bytes) -> dict[str, Any]:
    ticket = ticket_for(gateway, headers, data)
    stored = put(ticket["upload_url"], data)
    assert stored.status_code == 201, stored.text
    return {**ticket, "stored": stored.json()}


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {**dict(parse_qsl(parts.query)), **changes}
    return parts._replace(query=urlencode(query)).geturl()


def test_an_uploaded_png_is_the_input_of_jobs_that_run(
    gateway: GatewayProcess, alice: dict[str, str], bob: dict[str, str]
) -> None:
    image = png()
    ticket = ticket_for(gateway, alice, image)
    asset_id = ticket["id"]
    assert asset_id.startswith("a_") and ticket["method"] == "PUT"
    assert ticket["upload_url"].startswith(f"{gateway.url}/uploads/{asset_id}?")
    assert ticket["asset_url"].startswith(f"{gateway.url}/assets/{asset_id}?expires=")
    assert (ticket["content_type"], ticket["bytes"]) == ("image/png", len(image))
    expires_at = datetime.fromisoformat(ticket["expires_at"].replace("Z", "+00:00"))
    assert abs(expires_at.timestamp() - (time.time() + 3600)) < 60  # the contract's hour
    assert httpx.get(ticket["asset_url"]).status_code == 404  # nothing until the PUT

    stored = put(ticket["upload_url"], image)  # no credentials: the URL is the credential
    assert stored.status_code == 201, stored.text
    assert stored.json()["id"] == asset_id and stored.json()["bytes"] == len(image)
    assert stored.headers["etag"]
    assert httpx.get(ticket["asset_url"]).content == image
    assert httpx.get(f"{gateway.url}/assets/{asset_id}", headers=alice).content == image
    assert_error(httpx.get(f"{gateway.url}/assets/{asset_id}", headers=bob), 404, "asset_not_found")

    # The absolute signed asset URL is an i2i input as is, on the sync tier…
    i2i = httpx.post(
        f"{gateway.url}/image/sd/tiny/i2i",
        json={"prompt": "a fox", "image": ticket["asset_url"], "strength": 0.5, "steps": 2},
        headers=alice, timeout=120,
    )  # fmt: skip
    assert i2i.status_code == 200, i2i.text
    Image.open(io.BytesIO(i2i.content)).verify()
    # …and the plain path an edit's image, with an uploaded mask, on the queue.
    mask = upload(gateway, alice, png((255, 0, 0), "L"))
    job = httpx.post(
        f"{gateway.url}/queue",
        json={"modality": "image", "family": "sd", "model": "tiny", "task": "edit",
              "prompt": "a fox", "image": f"/assets/{asset_id}",
              "mask": f"/assets/{mask['id']}", "steps": 2, "width": 64, "height": 64},
        headers=alice, timeout=30,
    )  # fmt: skip
    assert job.status_code == 202, job.text
    done = wait_done(gateway, alice, job.json()["id"])
    assert done["status"] == "complete", done
    assert done["request"]["generation"]["image"] == f"/assets/{asset_id}"  # the path, not bytes
    output = httpx.get(gateway.url + done["output"])
    assert output.status_code == 200
    Image.open(io.BytesIO(output.content)).verify()

    # Another customer cannot use it, by its id or plain path (400 naming the field, as for
    # any asset input not theirs) — nor read it (404 above).
    for field in ("image", "mask"):
        refused = httpx.post(
            f"{gateway.url}/queue",
            json={"modality": "image", "family": "sd", "model": "tiny", "task": "edit",
                  "prompt": "a fox", "image": f"/assets/{asset_id}",
                  "mask": f"/assets/{asset_id}", field: f"/assets/{asset_id}"},
            headers=bob, timeout=30,
        )  # fmt: skip
        body = assert_error(refused, 400, "invalid_request")
        assert body["details"]["asset_id"] == asset_id


def test_a_url_is_used_once(gateway: GatewayProcess, alice: dict[str, str]) -> None:
    image = png((1, 2, 3), compress_level=0)
    ticket = upload(gateway, alice, image)
    replay = put(ticket["upload_url"], image)
    assert_error(replay, 409, "upload_used")
    other = png((4, 5, 6), compress_level=0)  # uncompressed: the same size, other bytes
    assert len(other) == len(image)
    assert_error(put(ticket["upload_url"], other), 409, "upload_used")
    assert httpx.get(ticket["asset_url"]).content == image  # never overwritten


def test_tampered_and_forged_urls_are_refused(
    gateway: GatewayProcess, alice: dict[str, str]
) -> None:
    image = png((9, 9, 9))
    ticket = ticket_for(gateway, alice, image)
    url = ticket["upload_url"]
    signature = dict(parse_qsl(urlsplit(url).query))["signature"]
    forged = [
        with_query(url, owner="bob"),
        with_query(url, bytes=str(len(image) + 1)),
        with_query(url, type="image/jpeg"),
        with_query(url, expires=str(int(time.time()) + 86400 * 365)),
        with_query(url, signature=signature[::-1]),
        with_query(url, signature="A" * 43),
        url.replace(ticket["id"], "a_" + "A" * 17),
    ]
    for bad in forged:
        content_type = "image/jpeg" if "jpeg" in bad else "image/png"
        refused = put(bad, image, content_type)
        assert_error(refused, 403, "upload_url_invalid")
        assert refused.headers["connection"] == "close"  # the body is not drained
    missing = url.split("&signature=")[0]
    assert_error(put(missing, image), 400, "invalid_request")
    # Credentials change nothing: the signature is the credential, and only it.
    assert_error(put(with_query(url, owner="bob"), image, headers=alice), 403, "upload_url_invalid")
    assert put(url, image).status_code == 201  # the refusals did not spend the URL


def test_the_put_must_send_what_was_declared(
    gateway: GatewayProcess, alice: dict[str, str]
) -> None:
    image = png((20, 40, 60))
    ticket = ticket_for(gateway, alice, image)
    url = ticket["upload_url"]
    assert_error(put(url, image, "image/jpeg"), 400, "upload_content_type_mismatch")
    assert_error(put(url, image, None), 400, "upload_content_type_mismatch")
    assert_error(put(url, image + b"\0"), 400, "upload_size_mismatch")
    assert_error(put(url, image[:-1]), 400, "upload_size_mismatch")

    def chunked(data: bytes) -> Iterator[bytes]:
        yield data[:10]
        yield data[10:]

    assert_error(put(url, chunked(image[:-1])), 400, "upload_size_mismatch")
    assert_error(put(url, chunked(image + b"\0\0")), 400, "upload_size_mismatch")
    garbage = os.urandom(len(image))
    assert_error(put(url, garbage), 400, "upload_not_image")
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64)).save(jpeg, "JPEG")
    jpeg_ticket = ticket_for(gateway, alice, jpeg.getvalue(), "image/webp")
    refused = assert_error(put(jpeg_ticket["upload_url"], jpeg.getvalue(), "image/webp"), 400,
                           "upload_not_image")  # fmt: skip
    assert "image/jpeg" in refused["message"]
    assert httpx.get(ticket["asset_url"]).status_code == 404  # nothing was stored
    assert put(url, chunked(image)).status_code == 201


def test_an_endless_body_is_cut_off_at_the_declared_size(
    gateway: GatewayProcess, alice: dict[str, str]
) -> None:
    """A chunked body that never ends: the gateway stops reading after the declared size,
    answers 400 and closes the connection (the bytes are never buffered)."""
    image = png((7, 7, 7))
    ticket = ticket_for(gateway, alice, image)
    target = urlsplit(ticket["upload_url"])
    host, port = target.hostname, target.port
    assert host is not None and port is not None
    sent = 0
    with socket.create_connection((host, port), timeout=30) as conn:
        conn.sendall(
            f"PUT {target.path}?{target.query} HTTP/1.1\r\nHost: {target.netloc}\r\n"
            "Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        chunk = os.urandom(64 * 1024)
        try:
            while sent < 64 * MIB:  # far past the declared size; the server stops first
                conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        try:
            while part := conn.recv(65536):
                answer += part
        except ConnectionResetError:
            pass
    assert sent < 64 * MIB, "the gateway read the whole endless body"
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), answer[:300]
    assert b"upload_size_mismatch" in body


def test_declarations_are_checked_and_need_credentials(
    gateway: GatewayProcess, alice: dict[str, str]
) -> None:
    assert_error(create(gateway, {}, "image/png", 10), 401, "missing_credentials")
    assert_error(create(gateway, bearer("rk_not_a_key"), "image/png", 10), 401, "invalid_api_key")
    for content_type, size in (("image/gif", 10), ("text/html", 10), ("image/png", 0),
                               ("image/png", -5), ("image/png", 50 * MIB + 1)):  # fmt: skip
        assert_error(create(gateway, alice, content_type, size), 400, "invalid_request")
    for size in (True, "10", 10.5):  # a size is a JSON integer, nothing read as one
        refused = httpx.post(
            f"{gateway.url}/uploads", json={"content_type": "image/png", "bytes": size},
            headers=alice,
        )  # fmt: skip
        assert_error(refused, 400, "invalid_request")
    extra = httpx.post(
        f"{gateway.url}/uploads",
        json={"content_type": "image/png", "bytes": 10, "owner": "bob"}, headers=alice,
    )  # fmt: skip
    assert_error(extra, 400, "invalid_request")
    assert create(gateway, alice, "image/webp", 50 * MIB).status_code == 200


def test_an_upload_over_max_body_bytes_goes_through(
    gateway: GatewayProcess, alice: dict[str, str]
) -> None:
    """The 10 MiB body guard is for JSON bodies; an upload streams up to its declared size."""
    side = 2048
    noise = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    buffer = io.BytesIO()
    noise.save(buffer, "PNG", compress_level=0)
    big = buffer.getvalue()
    assert 10 * MIB < len(big) < 50 * MIB
    ticket = upload(gateway, alice, big)
    assert ticket["stored"]["bytes"] == len(big)
    assert httpx.get(ticket["asset_url"], timeout=60).content == big


def test_an_expired_url_is_gone(
    worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    config = ONE_WORKER_CONFIG.format(worker=worker.url).replace(
        "local_demo_worker = false", "local_demo_worker = false\nupload_url_ttl_seconds = 2"
    )
    short = start_gateway(tmp_path_factory.mktemp("short-uploads"), config)
    try:
        headers = bearer(short.new_key("carol"))
        image = png((3, 3, 3))
        ticket = ticket_for(short, headers, image)
        time.sleep(3.1)
        assert_error(put(ticket["upload_url"], image), 410, "upload_url_expired")
        assert httpx.get(ticket["asset_url"]).status_code == 404
        fresh = ticket_for(short, headers, image)
        assert put(fresh["upload_url"], image).status_code == 201
    finally:
        stop_gateway(short)
