"""Input images (data URIs, remote URLs through a real local HTTP server) and PNG/MP4 output."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
from collections.abc import AsyncIterator

import av
import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web
from PIL import Image

from render_gateway.worker.media import (
    MAX_INPUT_PIXELS,
    MediaError,
    RemoteImagePolicy,
    decode_image,
    encode_mp4,
    encode_png,
    fetch_remote,
    load_image,
    parse_data_uri,
)

MAX_BYTES = 50_000


def _image_bytes(fmt: str, size: tuple[int, int] = (24, 16), mode: str = "RGB") -> bytes:
    image = Image.new(mode, size, color=(200, 30, 60) if mode == "RGB" else 0)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


PNG = _image_bytes("PNG")


# -------------------------------------------------------------------------------- decode_image


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_decode_accepted_formats(fmt: str) -> None:
    image = decode_image(_image_bytes(fmt), "image")
    assert image.size == (24, 16)
    assert image.mode == "RGB"
    red, green, blue = image.getpixel((0, 0))  # type: ignore[misc]
    assert red > 150 and green < 80 and blue < 110


@pytest.mark.parametrize("fmt", ["GIF", "BMP"])
def test_decode_refuses_other_formats(fmt: str) -> None:
    with pytest.raises(MediaError, match=f"mask is {fmt}; send PNG, JPEG or WebP"):
        decode_image(_image_bytes(fmt), "mask")


def test_decode_refuses_truncated_png() -> None:
    big = Image.frombytes("RGB", (64, 64), np.random.default_rng(0).bytes(64 * 64 * 3))
    data = encode_png(big)
    with pytest.raises(MediaError, match="image is not a valid PNG, JPEG or WebP image"):
        decode_image(data[: len(data) // 2], "image")


@pytest.mark.parametrize("data", [b"", b"\x00" * 10, np.random.default_rng(1).bytes(4096)])
def test_decode_refuses_random_bytes(data: bytes) -> None:
    with pytest.raises(MediaError, match="not a valid PNG, JPEG or WebP image"):
        decode_image(data, "image")


def test_decode_refuses_too_many_pixels() -> None:
    data = _image_bytes("PNG", size=(4097, 4096), mode="1")
    assert MAX_INPUT_PIXELS < 4097 * 4096
    with pytest.raises(MediaError, match="image is 4097x4096"):
        decode_image(data, "image")


# ------------------------------------------------------------------------------ parse_data_uri


@pytest.mark.parametrize("kind", ["png", "jpeg", "jpg", "webp"])
def test_parse_data_uri(kind: str) -> None:
    uri = f"data:image/{kind};base64," + base64.b64encode(PNG).decode()
    assert parse_data_uri(uri, "image") == PNG


@pytest.mark.parametrize(
    "uri",
    [
        "data:image/gif;base64,R0lGODlh",
        "data:text/plain;base64,aGVsbG8=",
        "data:image/png,rawdata",
        "https://example.com/a.png",
        "image/png;base64,aGVsbG8=",
    ],
)
def test_parse_data_uri_refuses_other_types(uri: str) -> None:
    with pytest.raises(MediaError, match=r"image must be data:image/\(png\|jpeg\|webp\)"):
        parse_data_uri(uri, "image")


@pytest.mark.parametrize("payload", ["not*base64", "aGVsbG8", "aGV sbG8="])
def test_parse_data_uri_refuses_bad_base64(payload: str) -> None:
    with pytest.raises(MediaError, match="mask has invalid base64 data"):
        parse_data_uri(f"data:image/png;base64,{payload}", "mask")


async def test_load_image_from_data_uri() -> None:
    uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    image = await load_image(uri, "image", RemoteImagePolicy(enabled=False))
    assert image.size == (24, 16)


async def test_load_image_data_uri_with_gif_payload() -> None:
    uri = "data:image/png;base64," + base64.b64encode(_image_bytes("GIF")).decode()
    with pytest.raises(MediaError, match="image is GIF"):
        await load_image(uri, "image", RemoteImagePolicy())


# --------------------------------------------------------------------------- PNG / MP4 output


def test_encode_png_round_trip() -> None:
    source = Image.frombytes("RGB", (33, 17), np.random.default_rng(2).bytes(33 * 17 * 3))
    data = encode_png(source)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as reopened:
        assert reopened.format == "PNG"
        assert reopened.size == (33, 17)
        assert reopened.tobytes() == source.tobytes()  # lossless


def _frames(count: int = 6, height: int = 48, width: int = 64) -> np.ndarray:
    frames = np.zeros((count, height, width, 3), dtype=np.uint8)
    for index in range(count):
        frames[index, :, : (index + 1) * width // count, 0] = 255
        frames[index, :, :, 1] = index * 40
    return frames


def test_encode_mp4_decodes_with_right_frame_count() -> None:
    frames = _frames()
    data = encode_mp4(frames, fps=8)
    assert data[4:8] == b"ftyp"
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (64, 48)
        decoded = list(container.decode(video=0))
    assert len(decoded) == len(frames)
    assert decoded[0].to_ndarray(format="rgb24").shape == (48, 64, 3)


def test_encode_mp4_differs_for_different_frames() -> None:
    assert encode_mp4(_frames(), fps=8) != encode_mp4(_frames()[::-1].copy(), fps=8)
    assert encode_mp4(_frames(), fps=8) != encode_mp4(_frames(), fps=12)


def test_encode_mp4_is_deterministic() -> None:
    # Twice is not enough to see it reliably; 300 encodes of a tiny clip take about 0.5 s.
    frames = _frames()
    first = encode_mp4(frames, fps=8)
    outputs = {encode_mp4(frames.copy(), fps=8) for _ in range(300)}
    assert outputs == {first}


# ------------------------------------------------------------------------------- fetch_remote

LOCAL = RemoteImagePolicy(
    allow_http=True, allow_private_addresses=True, max_bytes=MAX_BYTES, timeout_seconds=0.5
)


@pytest_asyncio.fixture
async def server() -> AsyncIterator[str]:
    release = asyncio.Event()

    async def png(_: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    async def big(_: web.Request) -> web.Response:
        return web.Response(body=b"\x00" * (MAX_BYTES + 1), content_type="image/png")

    async def big_chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(MAX_BYTES // 8192 + 2):
            await response.write(b"\x00" * 8192)
        await response.write_eof()
        return response

    async def slow(_: web.Request) -> web.Response:
        # Longer than the client's timeout; released at teardown so cleanup is quick.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), timeout=5)
        return web.Response(body=PNG, content_type="image/png")

    async def missing(_: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    async def redirect(_: web.Request) -> web.Response:
        raise web.HTTPFound("/png")

    app = web.Application()
    app.router.add_get("/png", png)
    app.router.add_get("/big", big)
    app.router.add_get("/big-chunked", big_chunked)
    app.router.add_get("/slow", slow)
    app.router.add_get("/missing", missing)
    app.router.add_get("/redirect", redirect)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        release.set()
        await runner.cleanup()


async def test_fetch_png(server: str) -> None:
    assert await fetch_remote(f"{server}/png", "image", LOCAL) == PNG
    image = await load_image(f"{server}/png", "image", LOCAL)
    assert image.size == (24, 16)
    assert image.getpixel((0, 0)) == (200, 30, 60)


async def test_fetch_too_big(server: str) -> None:
    with pytest.raises(MediaError, match=f"image is larger than {MAX_BYTES} bytes"):
        await fetch_remote(f"{server}/big", "image", LOCAL)


async def test_fetch_too_big_without_content_length(server: str) -> None:
    with pytest.raises(MediaError, match=f"image is larger than {MAX_BYTES} bytes"):
        await fetch_remote(f"{server}/big-chunked", "image", LOCAL)


async def test_fetch_exactly_max_bytes_is_allowed(server: str) -> None:
    policy = RemoteImagePolicy(
        allow_http=True, allow_private_addresses=True, max_bytes=len(PNG), timeout_seconds=2
    )
    assert await fetch_remote(f"{server}/png", "image", policy) == PNG


async def test_fetch_slow(server: str) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(MediaError, match=r"took longer than 0\.5s"):
        await fetch_remote(f"{server}/slow", "image", LOCAL)
    assert loop.time() - started < 3


async def test_fetch_404(server: str) -> None:
    with pytest.raises(MediaError, match="answered HTTP 404"):
        await fetch_remote(f"{server}/missing", "image", LOCAL)


async def test_fetch_redirect_not_followed(server: str) -> None:
    with pytest.raises(MediaError, match="answered HTTP 302"):
        await load_image(f"{server}/redirect", "image", LOCAL)


async def test_fetch_connection_refused() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port now.
    with pytest.raises(MediaError, match="failed"):
        await fetch_remote(f"http://127.0.0.1:{port}/png", "image", LOCAL)


async def test_http_refused_unless_allowed(server: str) -> None:
    policy = RemoteImagePolicy(allow_http=False, allow_private_addresses=True)
    with pytest.raises(MediaError, match="must be a data URI or an https URL"):
        await fetch_remote(f"{server}/png", "image", policy)


async def test_private_address_refused(server: str) -> None:
    policy = RemoteImagePolicy(allow_http=True, allow_private_addresses=False)
    with pytest.raises(MediaError, match=r"127\.0\.0\.1 resolves to a non-public address"):
        await fetch_remote(f"{server}/png", "image", policy)


@pytest.mark.parametrize(
    "host",
    ["localhost", "10.1.2.3", "169.254.169.254", "0.0.0.0", "[::1]", "[::ffff:127.0.0.1]"],
)
async def test_non_public_hosts_refused(host: str) -> None:
    with pytest.raises(MediaError, match="non-public address"):
        await fetch_remote(f"https://{host}/a.png", "image", RemoteImagePolicy())


@pytest.mark.parametrize("url", ["https://example.com/a.png", "http://127.0.0.1/a.png"])
async def test_disabled_policy_refuses_any_url(url: str) -> None:
    policy = RemoteImagePolicy(enabled=False, allow_http=True, allow_private_addresses=True)
    with pytest.raises(MediaError, match="does not fetch remote URLs"):
        await fetch_remote(url, "image", policy)


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "file:///etc/passwd", "https:///x"])
async def test_other_schemes_refused(url: str) -> None:
    with pytest.raises(MediaError, match="must be a data URI or an"):
        await load_image(url, "image", LOCAL)


async def test_out_of_range_port_is_media_error() -> None:
    with pytest.raises(MediaError):
        await fetch_remote("https://127.0.0.1:99999/a.png", "image", RemoteImagePolicy())
