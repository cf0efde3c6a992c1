"""The gateway's KServe v2 clients (HTTP and gRPC) against a real Triton (tests/support/
triton_server.py): the backend convention read, Triton's errors mapped, cancellation that
reaches the model, binary-safe streaming, and honest seconds for a model that meters nothing."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from PIL import Image

from render_gateway.inference.backend import (
    BackendError,
    BackendResult,
    InferenceBackend,
    Progress,
)
from render_gateway.inference.kserve_client import KServeClient
from render_gateway.inference.kserve_grpc_client import KServeGrpcClient

from support.triton_server import TritonServer

LEAKS = ("Traceback", 'File "', "/tmp/", "/root/", "model.py", '.py"')


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
async def http(triton_server: TritonServer, session: aiohttp.ClientSession) -> KServeClient:
    return KServeClient(session, triton_server.http_url)


@pytest.fixture
async def grpc_client(triton_server: TritonServer) -> AsyncIterator[KServeGrpcClient]:
    client = KServeGrpcClient("grpc://" + triton_server.grpc_target)
    yield client
    await client.close()


@pytest.fixture(params=["http", "grpc"])
def client(
    request: pytest.FixtureRequest, http: KServeClient, grpc_client: KServeGrpcClient
) -> Any:
    return http if request.param == "http" else grpc_client


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def gen(**fields: Any) -> bytes:
    return orjson.dumps(fields)


def png_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    image.verify()
    return image.size


async def test_painter_follows_the_convention(client: InferenceBackend) -> None:
    """Outputs by name (not outputs[0]), the type from the bytes, gpu_seconds and seed from
    their outputs (Triton's Python backend cannot send response parameters)."""
    assert await client.ready()
    result = await client.infer(
        "painter", gen(prompt=unique("paint"), seed=7, width=12, height=5), "req_paint1"
    )
    assert png_size(result.outputs[0]) == (12, 5)
    assert result.content_type == "image/png"
    assert result.gpu_seconds is not None and result.gpu_seconds >= 0
    assert result.parameters["seed"] == 7
    assert result.attributed_seconds is None  # it measured itself


async def test_a_model_that_meters_nothing_gets_attributed_seconds(
    client: InferenceBackend,
) -> None:
    started = time.perf_counter()
    result = await client.infer("plain", gen(prompt=unique("plain"), sleep_s=0.3), "req_plain1")
    wall = time.perf_counter() - started
    assert result.gpu_seconds is None
    assert result.attributed_seconds is not None
    assert 0.25 <= result.attributed_seconds <= wall


async def test_a_model_error_is_final_and_leaks_nothing(client: InferenceBackend) -> None:
    with pytest.raises(BackendError) as failed:
        await client.infer("broken", gen(prompt=unique("broken")), "req_broken1")
    assert failed.value.code == "model_error" and not failed.value.retriable
    assert str(failed.value) == "the model failed on this request"


async def test_an_unknown_model_is_a_final_refusal(client: InferenceBackend) -> None:
    with pytest.raises(BackendError) as refused:
        await client.infer("no-such-model", gen(prompt="x"), "req_nomodel")
    assert refused.value.status in (400, 404) and not refused.value.retriable
    for leak in LEAKS:
        assert leak not in str(refused.value)


async def test_cancelling_a_grpc_call_stops_the_model(
    grpc_client: KServeGrpcClient, triton_server: TritonServer
) -> None:
    prompt = unique("cancel")
    call = asyncio.create_task(
        grpc_client.infer("stepper", gen(prompt=prompt, steps=200, step_s=0.05), "req_cancel1")
    )
    await asyncio.to_thread(
        triton_server.wait_for_event, lambda e: e["prompt"] == prompt and e["event"] == "step"
    )
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    stopped = await asyncio.to_thread(
        triton_server.wait_for_event, lambda e: e["prompt"] == prompt and e["event"] == "cancelled"
    )
    assert stopped["model"] == "stepper"
    assert not triton_server.events("stepper", prompt=prompt, event="done")
    steps = triton_server.events("stepper", prompt=prompt, event="step")
    assert len(steps) < 50  # stopped within a step or two of the cancel, not run to 200


async def test_a_grpc_deadline_is_a_final_timeout_that_stops_the_model(
    grpc_client: KServeGrpcClient, triton_server: TritonServer
) -> None:
    prompt = unique("deadline")
    with pytest.raises(BackendError) as timed_out:
        await grpc_client.infer(
            "stepper", gen(prompt=prompt, steps=200, step_s=0.05), "req_deadline1", 0.6
        )
    assert timed_out.value.code == "timeout" and not timed_out.value.retriable
    await asyncio.to_thread(
        triton_server.wait_for_event, lambda e: e["prompt"] == prompt and e["event"] == "cancelled"
    )
    assert not triton_server.events("stepper", prompt=prompt, event="done")


async def test_streaming_gives_progress_then_the_intact_png(client: InferenceBackend) -> None:
    """HTTP generate_stream writes the PNG's raw bytes into its JSON (issue 13: a
    UnicodeDecodeError); gRPC ModelStreamInfer carries them as bytes."""
    events = [
        e
        async for e in client.generate_stream(
            "stepper_stream",
            gen(prompt=unique("stream"), steps=3, step_s=0.01, width=40, height=24),
            "req_stream1",
        )
    ]
    progress = [e for e in events if isinstance(e, Progress)]
    assert [(p.step, p.steps) for p in progress] == [(1, 3), (2, 3), (3, 3)]
    assert progress[-1].progress == 1.0
    final = events[-1]
    assert isinstance(final, BackendResult) and final.content_type == "image/png"
    assert png_size(final.outputs[0]) == (40, 24)
    assert final.gpu_seconds is None and final.attributed_seconds is not None


async def test_closing_a_grpc_stream_stops_the_model(
    grpc_client: KServeGrpcClient, triton_server: TritonServer
) -> None:
    prompt = unique("streamcancel")
    stream = grpc_client.generate_stream(
        "stepper_stream", gen(prompt=prompt, steps=200, step_s=0.05), "req_streamcancel"
    )
    first = await anext(stream)  # type: ignore[call-overload]
    assert isinstance(first, Progress) and first.step == 1
    await stream.aclose()  # type: ignore[attr-defined]
    await asyncio.to_thread(
        triton_server.wait_for_event,
        lambda e: e["prompt"] == prompt and e["event"] == "cancelled",
    )
    assert not triton_server.events("stepper_stream", prompt=prompt, event="done")


async def test_time_queued_behind_a_run_http_could_not_stop_is_not_attributed(
    http: KServeClient, triton_server: TritonServer
) -> None:
    """Issue 13's billing bug: a run abandoned over HTTP keeps Triton busy (HTTP cannot cancel
    in Triton), so the next request waits inside Triton. Its attributed seconds leave that wait
    out: the wall time less the queue time of the model's statistics."""
    first = unique("abandoned")
    abandoned = asyncio.create_task(
        http.infer("plain", gen(prompt=first, sleep_s=1.5), "req_abandoned")
    )
    await asyncio.to_thread(
        triton_server.wait_for_event, lambda e: e["prompt"] == first and e["event"] == "start"
    )
    abandoned.cancel()  # the gateway hangs up; Triton runs it to the end anyway
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    second = unique("next")
    started = time.perf_counter()
    result = await http.infer("plain", gen(prompt=second, sleep_s=0.1), "req_next")
    wall = time.perf_counter() - started
    starts = triton_server.events("plain", prompt=second, event="start")
    first_done = triton_server.events("plain", prompt=first, event="done")
    assert first_done and starts and starts[0]["t"] >= first_done[0]["t"] - 0.05  # it waited
    assert wall > 0.9
    assert result.attributed_seconds is not None
    assert 0.05 <= result.attributed_seconds < 0.6, (result.attributed_seconds, wall)
