"""The upload use case without a server: signed PUT URLs (tampering, expiry on a clock the test
moves), the declared type and size, streamed bodies cut off past the declared size, bytes that
must be the image declared, and one write per URL — on a real asset store in a directory. The
gateway process tests are in tests/api/test_uploads_e2e.py."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from PIL import Image

from render_gateway.application.asset_urls import AssetUrlSigner
from render_gateway.application.refusals import RefusalKind, Refused
from render_gateway.application.uploads import MAX_UPLOAD_BYTES, Uploads, image_problem
from render_gateway.auth.principal import Principal
from render_gateway.stores.assets import AssetNotFound, AssetStore
from render_gateway.stores.object_assets import open_asset_store

from support.clock import FakeClock

ALICE = Principal("alice", "default", "api_key")


def image_bytes(kind: str = "PNG", size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, kind)
    return buffer.getvalue()


PNG = image_bytes()


@pytest.fixture
def store(tmp_path: Path) -> AssetStore:
    return open_asset_store((tmp_path / "assets").as_uri())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000_000.0)


@pytest.fixture
def uploads(store: AssetStore, clock: FakeClock) -> Uploads:
    signer = AssetUrlSigner(b"k" * 32, ttl_seconds=7 * 24 * 3600, clock=clock)
    return Uploads(store, signer, ttl_seconds=3600, timeout_seconds=5.0, clock=clock)


def split(path: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(path)
    return parts.path.removeprefix("/uploads/"), dict(parse_qsl(parts.query))


async def chunks(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def refusal(excinfo: pytest.ExceptionInfo[Refused]) -> tuple[RefusalKind, str]:
    return excinfo.value.kind, excinfo.value.code


async def put(
    uploads: Uploads,
    path: str,
    data: bytes,
    content_type: str | None = "image/png",
    content_length: str | None = "auto",
    parts: Iterable[bytes] | None = None,
) -> object:
    asset_id, query = split(path)
    length = str(len(data)) if content_length == "auto" else content_length
    return await uploads.receive(
        asset_id, query, content_type, length, chunks(parts if parts is not None else [data])
    )


async def test_a_signed_url_stores_the_bytes_once_for_their_owner(
    uploads: Uploads, store: AssetStore
) -> None:
    ticket = uploads.create(ALICE, "image/png", len(PNG))
    assert ticket.grant.expires == 1_000_000 + 3600  # the contract's hour
    assert ticket.upload_path.startswith(f"/uploads/{ticket.grant.asset_id}?owner=alice&")
    assert ticket.asset_path.startswith(f"/assets/{ticket.grant.asset_id}?expires=")
    with pytest.raises(AssetNotFound):
        await store.describe(ticket.grant.asset_id)  # nothing is stored before the PUT
    # Chunked (no Content-Length), in pieces: assembled as sent.
    pieces = [PNG[:5], PNG[5:40], PNG[40:]]
    asset = await put(uploads, ticket.upload_path, PNG, content_length=None, parts=pieces)
    assert await store.get(ticket.grant.asset_id) == (asset, PNG)
    found = await store.describe(ticket.grant.asset_id)
    assert (found.owner, found.content_type, found.size) == ("alice", "image/png", len(PNG))
    with pytest.raises(Refused) as replay:
        await put(uploads, ticket.upload_path, PNG)
    assert refusal(replay) == (RefusalKind.conflict, "upload_used")


async def test_every_signed_field_is_bound(uploads: Uploads) -> None:
    ticket = uploads.create(ALICE, "image/png", len(PNG))
    asset_id, query = split(ticket.upload_path)
    other = uploads.create(ALICE, "image/png", len(PNG)).grant.asset_id
    signature = query["signature"]
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    tampered = [
        (asset_id, {**query, "owner": "bob"}),
        (asset_id, {**query, "type": "image/jpeg"}),
        (asset_id, {**query, "bytes": str(len(PNG) + 1)}),
        (asset_id, {**query, "expires": str(int(query["expires"]) + 3600)}),
        (asset_id, {**query, "signature": flipped}),
        (asset_id, {**query, "signature": ""}),
        (asset_id, {k: v for k, v in query.items() if k != "owner"}),
        (other, query),  # another upload's id
        ("a_../records/xx", query),
        (asset_id, {**query, "bytes": "1e3"}),
    ]
    for tampered_id, tampered_query in tampered:
        with pytest.raises(Refused) as refused:
            await uploads.receive(
                tampered_id, tampered_query, "image/png", str(len(PNG)), chunks([PNG])
            )
        assert refusal(refused) == (RefusalKind.forbidden, "upload_url_invalid"), tampered_query


async def test_a_url_signed_under_another_key_is_refused(
    uploads: Uploads, store: AssetStore, clock: FakeClock
) -> None:
    forger = Uploads(store, AssetUrlSigner(b"x" * 32, 3600, clock), 3600, 5.0, clock)
    forged = forger.create(ALICE, "image/png", len(PNG))
    with pytest.raises(Refused) as refused:
        await put(uploads, forged.upload_path, PNG)
    assert refusal(refused) == (RefusalKind.forbidden, "upload_url_invalid")


async def test_an_expired_url_is_gone_and_stores_nothing(
    uploads: Uploads, store: AssetStore, clock: FakeClock
) -> None:
    ticket = uploads.create(ALICE, "image/png", len(PNG))
    clock.advance(3599.5)
    uploads.grant_of(*split(ticket.upload_path))  # still valid half a second before
    clock.advance(0.5)
    with pytest.raises(Refused) as refused:
        await put(uploads, ticket.upload_path, PNG)
    assert refusal(refused) == (RefusalKind.gone, "upload_url_expired")
    with pytest.raises(AssetNotFound):
        await store.describe(ticket.grant.asset_id)


@pytest.mark.parametrize(
    ("content_type", "size", "field"),
    [
        ("image/gif", 10, "content_type"),
        ("image/svg+xml", 10, "content_type"),
        ("IMAGE/PNG", 10, "content_type"),
        (None, 10, "content_type"),
        ("image/png", 0, "bytes"),
        ("image/png", -1, "bytes"),
        ("image/png", MAX_UPLOAD_BYTES + 1, "bytes"),
        ("image/png", True, "bytes"),
        ("image/png", "10", "bytes"),
    ],
)
def test_only_images_up_to_the_limit_are_declared(
    uploads: Uploads, content_type: object, size: object, field: str
) -> None:
    with pytest.raises(Refused) as refused:
        uploads.create(ALICE, content_type, size)
    assert refusal(refused) == (RefusalKind.invalid, "invalid_request")
    assert refused.value.details["field"] == field
    assert uploads.create(ALICE, "image/webp", MAX_UPLOAD_BYTES).grant.size == MAX_UPLOAD_BYTES


async def test_the_content_type_must_be_the_declared_one(uploads: Uploads) -> None:
    ticket = uploads.create(ALICE, "image/png", len(PNG))
    for sent in ("image/jpeg", None, "application/octet-stream", "image/png-x"):
        with pytest.raises(Refused) as refused:
            await put(uploads, ticket.upload_path, PNG, content_type=sent)
        assert refusal(refused) == (RefusalKind.invalid, "upload_content_type_mismatch")
    # Parameters and case do not matter; the URL was not spent by the refusals.
    await put(uploads, ticket.upload_path, PNG, content_type="Image/PNG; charset=binary")


async def test_the_body_must_be_exactly_the_declared_size(
    uploads: Uploads, store: AssetStore
) -> None:
    ticket = uploads.create(ALICE, "image/png", len(PNG))
    for length in (str(len(PNG) + 1), str(len(PNG) - 1), "0", "abc"):
        with pytest.raises(Refused) as refused:
            await put(uploads, ticket.upload_path, PNG, content_length=length)
        assert refusal(refused) == (RefusalKind.invalid, "upload_size_mismatch")
    # Chunked: shorter, and longer — reading stops at the first chunk past the size.
    with pytest.raises(Refused) as short:
        await put(uploads, ticket.upload_path, PNG[:-1], content_length=None)
    assert refusal(short) == (RefusalKind.invalid, "upload_size_mismatch")
    read: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        while True:
            read.append(1)
            yield b"\0" * 64

    asset_id, query = split(ticket.upload_path)
    with pytest.raises(Refused) as long:
        await uploads.receive(asset_id, query, "image/png", None, endless())
    assert refusal(long) == (RefusalKind.invalid, "upload_size_mismatch")
    assert len(read) * 64 <= len(PNG) + 64  # never past the declared size and one chunk
    with pytest.raises(AssetNotFound):
        await store.describe(ticket.grant.asset_id)


async def test_a_slow_body_times_out(store: AssetStore, clock: FakeClock) -> None:
    uploads = Uploads(store, AssetUrlSigner(b"k" * 32, 3600, clock), 3600, 0.2, clock)
    ticket = uploads.create(ALICE, "image/png", len(PNG))

    async def trickle() -> AsyncIterator[bytes]:
        yield PNG[:4]
        await asyncio.sleep(5)
        yield PNG[4:]

    asset_id, query = split(ticket.upload_path)
    with pytest.raises(Refused) as refused:
        await uploads.receive(asset_id, query, "image/png", None, trickle())
    assert refusal(refused) == (RefusalKind.timeout, "request_timeout")


@pytest.mark.parametrize(
    ("declared", "data"),
    [
        ("image/png", b"not an image at all"),
        ("image/png", image_bytes("JPEG")),  # a real image, of another type
        ("image/jpeg", PNG),
        ("image/webp", PNG),
        ("image/png", PNG[:-20]),  # cut: its last chunks are missing
        ("image/png", PNG[:30] + bytes([PNG[30] ^ 0xFF]) + PNG[31:]),  # a flipped byte (CRC)
        ("image/png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64),  # the magic alone
        ("image/webp", b"RIFF\0\0\0\0WEBP" + b"\0" * 32),
    ],
    ids=[
        "text",
        "jpeg-as-png",
        "png-as-jpeg",
        "png-as-webp",
        "truncated",
        "bad-crc",
        "magic-only",
        "webp-magic-only",
    ],
)
async def test_the_bytes_must_be_the_declared_image(
    uploads: Uploads, store: AssetStore, declared: str, data: bytes
) -> None:
    assert image_problem(data, declared) is not None
    ticket = uploads.create(ALICE, declared, len(data))
    with pytest.raises(Refused) as refused:
        await put(uploads, ticket.upload_path, data, content_type=declared)
    assert refusal(refused) == (RefusalKind.invalid, "upload_not_image")
    with pytest.raises(AssetNotFound):
        await store.describe(ticket.grant.asset_id)


@pytest.mark.parametrize("kind", ["PNG", "JPEG", "WEBP"])
def test_real_images_of_each_type_pass(kind: str) -> None:
    assert image_problem(image_bytes(kind), f"image/{kind.lower()}") is None


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_a_decompression_bomb_is_refused() -> None:
    # A valid PNG header saying 20000 × 20000 (400 Mpx, over Pillow's limit) in 60 bytes.
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b"")
    problem = image_problem(bomb, "image/png")
    assert problem is not None and "pixels" in problem


async def test_racing_puts_store_one_asset(uploads: Uploads, store: AssetStore) -> None:
    ticket = uploads.create(ALICE, "image/png", len(PNG))
    results = await asyncio.gather(
        *(put(uploads, ticket.upload_path, PNG) for _ in range(6)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, Refused)]
    assert len(refused) == 5 and {r.code for r in refused} == {"upload_used"}
    assert (await store.describe(ticket.grant.asset_id)).owner == "alice"
