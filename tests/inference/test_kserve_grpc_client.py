"""The gateway's KServe v2 gRPC client against a real reference worker (``--grpc-port``):
the same results as over HTTP, progress over ModelStreamInfer, the worker's codes read from
its trailer, and cancellation that stops the run and frees its slot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import orjson
import pytest

from render_gateway.inference.backend import BackendError, BackendResult, Progress
from render_gateway.inference.kserve_grpc_client import KServeGrpcClient

from support.worker_api import GrpcWorker, stats, wait_idle


@pytest.fixture
async def client(grpc_worker: GrpcWorker) -> AsyncIterator[KServeGrpcClient]:
    grpc_client = KServeGrpcClient("grpc://" + grpc_worker.grpc_address)
    yield grpc_client
    await grpc_client.close()
    wait_idle(grpc_worker.process)


def wait_running(worker: GrpcWorker, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while stats(worker.process)["in_flight"] == 0:
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.02)


def gen(**fields: object) -> bytes:
    return orjson.dumps({"prompt": "a harbour", **fields})


async def test_infer_returns_the_png_with_the_workers_parameters(client: KServeGrpcClient) -> None:
    assert await client.ready()
    result = await client.infer("demo", gen(seed=5, steps=2), "req_g1")
    assert result.outputs[0][:8] == b"\x89PNG\r\n\x1a\n" and result.content_type == "image/png"
    assert result.gpu_seconds is not None and result.gpu_seconds > 0
    assert result.parameters["seed"] == 5 and result.usage_claim is not None
    assert result.attributed_seconds is None


async def test_stream_yields_each_step_then_the_result(client: KServeGrpcClient) -> None:
    events = [e async for e in client.generate_stream("demo", gen(steps=3, seed=1), "req_g2")]
    assert [type(e) for e in events] == [Progress] * 3 + [BackendResult]
    assert [e.step for e in events if isinstance(e, Progress)] == [1, 2, 3]
    assert all(e.gpu_seconds is not None for e in events if isinstance(e, Progress))


async def test_a_refused_request_is_final_with_the_workers_code(client: KServeGrpcClient) -> None:
    with pytest.raises(BackendError) as refused:
        await client.infer("demo", gen(width=100, height=64), "req_g3")
    assert refused.value.code == "invalid_request" and refused.value.status == 400
    assert not refused.value.retriable and "multiple of" in str(refused.value)


async def test_cancelling_the_call_stops_the_run_and_frees_the_slot(
    client: KServeGrpcClient, grpc_worker: GrpcWorker
) -> None:
    before = stats(grpc_worker.process)["cancelled"]
    call = asyncio.create_task(client.infer("demo", gen(steps=400), "req_g4"))
    await asyncio.to_thread(wait_running, grpc_worker)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    idle = await asyncio.to_thread(wait_idle, grpc_worker.process)
    assert idle["cancelled"] == before + 1
    assert idle["steps_executed"] < 400 * 10  # far from running to its end
    result = await client.infer("demo", gen(steps=1), "req_g5")  # the slot is free at once
    assert result.outputs


async def test_closing_the_stream_stops_the_run(
    client: KServeGrpcClient, grpc_worker: GrpcWorker
) -> None:
    before = stats(grpc_worker.process)["cancelled"]
    stream = client.generate_stream("demo", gen(steps=400), "req_g6")
    first = await anext(stream)  # type: ignore[call-overload]
    assert isinstance(first, Progress)
    await stream.aclose()  # type: ignore[attr-defined]
    idle = await asyncio.to_thread(wait_idle, grpc_worker.process)
    assert idle["cancelled"] == before + 1


async def test_a_refusal_on_the_stream_is_final_with_the_workers_code(
    client: KServeGrpcClient,
) -> None:
    stream = client.generate_stream("demo", gen(width=100, height=64), "req_g7")
    with pytest.raises(BackendError) as refused:
        await anext(stream)  # type: ignore[call-overload]
    assert refused.value.code == "invalid_request" and not refused.value.retriable
    assert "multiple of" in str(refused.value)
