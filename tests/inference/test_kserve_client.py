"""The gateway's KServe v2 client against a real reference worker process."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator

import aiohttp
import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from PIL import Image

from render_gateway.inference.backend import BackendError, BackendResult, Cancelled, Progress
from render_gateway.inference.kserve_client import KServeClient
from render_gateway.usage_claim import SignedClaim, verify_claim

from support.processes import WorkerProcess, free_port
from support.worker_api import stats, wait_idle


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
def client(worker: WorkerProcess, session: aiohttp.ClientSession) -> KServeClient:
    return KServeClient(session, worker.url)


@pytest.fixture(autouse=True)
def _idle_after(worker: WorkerProcess) -> object:
    yield
    wait_idle(worker)


def gen(**fields: object) -> bytes:
    return orjson.dumps({"prompt": "a harbour", **fields})


def node_key(worker: WorkerProcess) -> Ed25519PublicKey:
    raw = base64.b64decode(httpx.get(worker.url + "/v2/node").json()["public_key"])
    return Ed25519PublicKey.from_public_bytes(raw)


async def test_ready(client: KServeClient, session: aiohttp.ClientSession) -> None:
    assert await client.ready()
    assert not await KServeClient(session, f"http://127.0.0.1:{free_port()}").ready()


async def test_infer_returns_png_and_a_verifiable_claim(
    client: KServeClient, worker: WorkerProcess
) -> None:
    result = await client.infer("demo", gen(seed=11), "req_client1")
    assert result.request_id == "req_client1" and result.content_type == "image/png"
    Image.open(io.BytesIO(result.outputs[0])).verify()
    assert result.gpu_seconds is not None and result.gpu_seconds > 0
    assert result.usage_claim is not None
    claim = verify_claim(SignedClaim.from_text(result.usage_claim), node_key(worker))
    assert claim.request_id == "req_client1" and claim.gpu_seconds == result.gpu_seconds


async def test_stream_yields_each_step_then_the_result(client: KServeClient) -> None:
    events = [e async for e in client.generate_stream("demo", gen(steps=5, seed=1), "req_cs1")]
    assert [type(e) for e in events] == [Progress] * 5 + [BackendResult]
    assert [e.step for e in events if isinstance(e, Progress)] == [1, 2, 3, 4, 5]
    final = events[-1]
    assert isinstance(final, BackendResult) and final.outputs[0][:4] == b"\x89PNG"


async def test_stream_carries_results_larger_than_aiohttps_line_limit(client: KServeClient) -> None:
    request = gen(steps=1, seed=1, width=512, height=512, count=2)
    events = [e async for e in client.generate_stream("demo", request, "req_cs_big")]
    final = events[-1]
    assert isinstance(final, BackendResult) and len(final.outputs) == 2
    assert sum(len(o) for o in final.outputs) > 512 * 1024  # one SSE line over 512 KiB
    for output in final.outputs:
        Image.open(io.BytesIO(output)).verify()


async def test_closing_the_stream_early_cancels_the_run(
    client: KServeClient, worker: WorkerProcess
) -> None:
    before = stats(worker)
    stream = client.generate_stream("demo", gen(steps=500), "req_cs2")
    async for event in stream:
        assert isinstance(event, Progress)
        break
    await stream.aclose()  # type: ignore[attr-defined]
    after = await asyncio.to_thread(wait_idle, worker)
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["steps_executed"] - before["steps_executed"] < 500


async def test_cancel_ends_the_stream_with_a_signed_cancelled_claim(
    client: KServeClient, worker: WorkerProcess
) -> None:
    events = []
    async for event in client.generate_stream("demo", gen(steps=500), "req_cs3"):
        events.append(event)
        if len(events) == 2:
            assert await client.cancel("demo", "req_cs3")
    final = events[-1]
    assert isinstance(final, Cancelled)
    claim = verify_claim(
        SignedClaim.from_text(str(final.parameters["usage_claim"])), node_key(worker)
    )
    assert claim.status == "cancelled" and claim.steps_completed < 500
    assert not await client.cancel("demo", "req_cs3")


async def test_errors_say_whether_a_retry_can_help(
    client: KServeClient, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(BackendError) as missing:
        await client.infer("nope", gen(), "req_e1")
    assert missing.value.status == 404 and not missing.value.retriable
    assert missing.value.code == "model_not_found"
    with pytest.raises(BackendError) as bad:
        await client.infer("demo", gen(width=4096, height=64), "req_e2")
    assert bad.value.status == 400 and not bad.value.retriable
    with pytest.raises(BackendError) as bad_stream:
        async for _ in client.generate_stream("demo", gen(task="t2v"), "req_e3"):
            pass
    assert bad_stream.value.status == 400 and not bad_stream.value.retriable
    with pytest.raises(BackendError) as down:
        await KServeClient(session, f"http://127.0.0.1:{free_port()}").infer(
            "demo", gen(), "req_e4"
        )
    assert down.value.retriable and down.value.status is None


async def test_busy_backend_is_retriable_with_retry_after(client: KServeClient) -> None:
    stream = client.generate_stream("demo", gen(steps=500), "req_busy_c")
    first = await stream.__anext__()  # type: ignore[attr-defined]
    assert isinstance(first, Progress)
    try:
        with pytest.raises(BackendError) as busy:
            await client.infer("demo", gen(), "req_busy_c2")
        assert busy.value.status == 503 and busy.value.retriable
        assert busy.value.retry_after is not None and busy.value.retry_after >= 1
    finally:
        assert await client.cancel("demo", "req_busy_c")
        async for _ in stream:
            pass
