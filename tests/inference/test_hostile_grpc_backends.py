"""The gateway's gRPC KServe client and dispatcher against gRPC servers that misbehave (a real
grpc.aio server on 127.0.0.1 per test): each bad answer is one BackendError with a code, final
unless a retry could help, and the run timeout ends a server that never answers."""

from __future__ import annotations

import asyncio
import math
import random
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
import pytest
from tritonclient.grpc import service_pb2 as pb

from render_gateway.inference.backend import BackendError, BackendResult, Progress
from render_gateway.inference.kserve_grpc_client import KServeGrpcClient
from render_gateway.kserve import codec
from render_gateway.scheduling.backend_pool import BackendPool, BackendSpec
from render_gateway.scheduling.dispatch import Dispatcher, RetryPolicy

from support.hostile_backends import PNG, HostileGrpcBackend, hostile_grpc_backend

GEN = orjson.dumps({"prompt": "a harbour"})


@pytest.fixture
async def backend() -> AsyncIterator[HostileGrpcBackend]:
    async with hostile_grpc_backend() as serving:
        yield serving


@pytest.fixture
async def client(backend: HostileGrpcBackend) -> AsyncIterator[KServeGrpcClient]:
    grpc_client = KServeGrpcClient(backend.endpoint)
    yield grpc_client
    await grpc_client.close()


def answer(*outputs: tuple[str, str, list[int], bytes], **params: Any) -> Any:
    """A ModelInferResponse of (name, datatype, shape, raw) outputs."""
    message = pb.ModelInferResponse(model_name="demo", id="req_g")
    for name, datatype, shape, raw in outputs:
        message.outputs.add(name=name, datatype=datatype, shape=shape)
        message.raw_output_contents.append(raw)
    for key, value in params.items():
        slot = message.parameters[key]
        if isinstance(value, str):
            slot.string_param = value
        elif isinstance(value, float):
            slot.double_param = value
        else:
            slot.int64_param = value
    return message


def image(data: bytes = PNG) -> tuple[str, str, list[int], bytes]:
    return ("images", "BYTES", [1], codec.pack_bytes_elements([data]))


def answering(message: Any) -> Any:
    async def handler(_request: Any, _context: Any) -> Any:
        return message

    return handler


def streaming(*messages: Any) -> Any:
    async def handler(_request: Any, _context: Any) -> AsyncIterator[Any]:
        for message in messages:
            yield message

    return handler


def streamed(response: Any = None, error: str = "") -> Any:
    message = pb.ModelStreamInferResponse(error_message=error)
    if response is not None:
        message.infer_response.CopyFrom(response)
    return message


async def refused(client: KServeGrpcClient, *, stream: bool = False) -> BackendError:
    with pytest.raises(BackendError) as caught:
        if stream:
            async for _ in client.generate_stream("demo", GEN, "req_g", run_seconds=10):
                pass
        else:
            await client.infer("demo", GEN, "req_g", run_seconds=10)
    return caught.value


async def test_a_server_that_never_answers_is_ended_by_the_run_timeout(
    backend: HostileGrpcBackend, client: KServeGrpcClient
) -> None:
    async def hang(_request: Any, _context: Any) -> Any:
        await backend.servicer.never.wait()

    backend.servicer.infer = hang
    started = time.perf_counter()
    with pytest.raises(BackendError) as caught:
        await client.infer("demo", GEN, "req_g", run_seconds=0.5)
    assert caught.value.code == "timeout" and not caught.value.retriable
    assert time.perf_counter() - started < 5


async def test_a_stream_that_stalls_is_ended_by_the_run_timeout(
    backend: HostileGrpcBackend, client: KServeGrpcClient
) -> None:
    async def stall(_request: Any, _context: Any) -> AsyncIterator[Any]:
        yield streamed(answer(step=1, steps=9))
        await backend.servicer.never.wait()

    backend.servicer.stream = stall
    events: list[object] = []
    with pytest.raises(BackendError) as caught:
        async for event in client.generate_stream("demo", GEN, "req_g", run_seconds=0.5):
            events.append(event)
    assert caught.value.code == "timeout" and not caught.value.retriable
    assert [type(e) for e in events] == [Progress]


async def test_an_error_message_in_the_stream_is_final_and_shows_no_traceback(
    backend: HostileGrpcBackend, client: KServeGrpcClient
) -> None:
    backend.servicer.stream = streaming(
        streamed(answer(step=1, steps=2)),
        streamed(error='Traceback (most recent call last):\n  File "/opt/m/model.py", line 9'),
    )
    error = await refused(client, stream=True)
    assert not error.retriable and "Traceback" not in str(error) and "/opt" not in str(error)
    backend.servicer.stream = streaming(
        streamed(error="Failed to process the request(s) for model 'demo', message: boom")
    )
    assert (await refused(client, stream=True)).code == "model_error"


async def test_a_stream_closed_without_a_final_response_is_one_error(
    backend: HostileGrpcBackend, client: KServeGrpcClient
) -> None:
    backend.servicer.stream = streaming(streamed(answer(step=1, steps=3)))
    error = await refused(client, stream=True)
    assert "without a result" in str(error)


@pytest.mark.parametrize(
    "message",
    [
        answer(image(), ("gpu_seconds", "FP64", [1], b"")),  # contents for 2, one short
        answer(("images", "BYTES", [1], struct.pack("<I", 99) + b"x")),  # prefix runs past
        answer(("images", "BF17", [1], b"x")),  # no such datatype
        answer(("images", "BYTES", [0], b"")),  # nothing in it
        answer(("images", "BYTES", [2**40], codec.pack_bytes_elements([PNG]))),  # huge shape
        answer(("images", "FP32", [1], b"\x00" * 4)),  # media not BYTES
    ],
    ids=["raw-short", "prefix-past", "datatype", "shape-0", "huge-shape", "fp32"],
)
async def test_an_answer_that_cannot_be_read_is_one_final_protocol_error(
    backend: HostileGrpcBackend, client: KServeGrpcClient, message: Any
) -> None:
    backend.servicer.infer = answering(message)
    error = await refused(client)
    assert error.code == "backend_protocol" and not error.retriable


async def test_raw_output_contents_fewer_than_the_outputs_is_a_protocol_error(
    backend: HostileGrpcBackend, client: KServeGrpcClient
) -> None:
    message = answer(image())
    message.outputs.add(name="gpu_seconds", datatype="FP64", shape=[1])
    backend.servicer.infer = answering(message)
    error = await refused(client)
    assert error.code == "backend_protocol" and not error.retriable
    backend.servicer.stream = streaming(streamed(message))
    assert (await refused(client, stream=True)).code == "backend_protocol"


async def test_an_answer_over_grpcios_default_4_mib_limit_arrives(
    backend: HostileGrpcBackend, client: KServeGrpcClient
) -> None:
    big = PNG + b"\x01" * (6 * 1024 * 1024)
    backend.servicer.infer = answering(answer(image(big)))
    result = await client.infer("demo", GEN, "req_g")
    assert result.outputs == [big] and result.content_type == "image/png"
    backend.servicer.stream = streaming(streamed(answer(image(big))))
    events = [e async for e in client.generate_stream("demo", GEN, "req_g")]
    assert isinstance(events[-1], BackendResult) and events[-1].outputs == [big]


@pytest.mark.parametrize("gpu_seconds", [math.nan, math.inf, -2.0])
async def test_a_gpu_seconds_parameter_that_is_no_reading_leaves_the_run_unmetered(
    backend: HostileGrpcBackend, client: KServeGrpcClient, gpu_seconds: float
) -> None:
    backend.servicer.infer = answering(answer(image(), gpu_seconds=gpu_seconds, seed=-3))
    result = await client.infer("demo", GEN, "req_g")
    assert result.gpu_seconds is None and "seed" not in result.parameters


async def test_progress_with_text_steps_is_no_progress_not_a_crash(
    backend: HostileGrpcBackend, client: KServeGrpcClient
) -> None:
    backend.servicer.stream = streaming(
        streamed(answer(step="three", steps="ten")),
        streamed(answer(step=2, steps=4, progress=math.nan)),
        streamed(answer(image())),
    )
    events = [e async for e in client.generate_stream("demo", GEN, "req_g")]
    assert events[:2] == [Progress(0, 0, 0.0), Progress(2, 4, 0.5)]
    assert isinstance(events[-1], BackendResult)


@pytest.mark.parametrize("status", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INVALID_ARGUMENT])
async def test_a_stream_refused_at_once_keeps_the_servers_status(
    backend: HostileGrpcBackend, client: KServeGrpcClient, status: grpc.StatusCode
) -> None:
    async def abort(_request: Any, context: Any) -> AsyncIterator[Any]:
        await context.abort(status, "not now")
        yield streamed()  # never reached

    backend.servicer.stream = abort
    for _ in range(5):  # the abort races the client's write
        error = await refused(client, stream=True)
        assert error.code != "backend_protocol"
        assert error.retriable is (status is grpc.StatusCode.UNAVAILABLE)


async def test_an_answer_no_protobuf_library_would_write_is_final() -> None:
    async def garbage(_request: bytes, _context: Any) -> bytes:
        return b"\x0a\x03\xff\xfe\xfd"  # field 1 (model_name, a string) not UTF-8

    async def garbage_stream(requests: AsyncIterator[bytes], _context: Any) -> AsyncIterator[bytes]:
        async for _request in requests:
            yield b"\x12\x02\xff\xfe"  # field 2 (error_message, a string) not UTF-8

    async with hostile_grpc_backend(raw_infer=garbage, raw_stream=garbage_stream) as backend:
        client = KServeGrpcClient(backend.endpoint)
        try:
            error = await refused(client)
            stream_error = await refused(client, stream=True)
        finally:
            await client.close()
    assert error.code == "backend_protocol" and not error.retriable
    assert stream_error.code == "backend_protocol" and not stream_error.retriable


async def test_the_dispatcher_sends_a_garbled_answer_once(backend: HostileGrpcBackend) -> None:
    backend.servicer.infer = answering(answer(("images", "BYTES", [0], b"")))
    grpc_client = KServeGrpcClient(backend.endpoint)
    spec = BackendSpec("g", backend.endpoint, "sd", {"tiny": "demo"}, streaming=False)
    policy = RetryPolicy(max_attempts=3, base_delay_seconds=0.01, max_delay_seconds=0.02)
    run = Dispatcher(BackendPool([spec]), lambda _s: grpc_client, policy, random.Random(1))
    try:
        with pytest.raises(BackendError) as caught:
            await asyncio.wait_for(run.run("sd", "tiny", GEN, "req_gd"), 15)
    finally:
        await grpc_client.close()
    assert caught.value.code == "backend_protocol" and backend.servicer.hits["infer"] == 1


def queue_stats(ns: int) -> Any:
    stats = pb.ModelStatisticsResponse()
    stats.model_stats.add(name="demo").inference_stats.queue.ns = ns
    return stats


@pytest.mark.parametrize(
    "counters", [[10**12, 5], [0, 2**63], [7, 7]], ids=["backwards", "leap", "still"]
)
async def test_statistics_answering_garbage_never_bill_more_than_the_wall_time_nor_below_0(
    backend: HostileGrpcBackend, client: KServeGrpcClient, counters: list[int]
) -> None:
    reads = iter(counters)
    backend.servicer.stats = lambda: queue_stats(next(reads, counters[-1]))
    backend.servicer.infer = answering(answer(image()))
    started = time.perf_counter()
    result = await client.infer("demo", GEN, "req_g")
    wall = time.perf_counter() - started
    seconds = result.attributed_seconds
    assert seconds is None or 0 <= seconds <= wall
    assert backend.servicer.hits["stats"] == 2


async def test_an_answer_over_the_receive_limit_is_final_not_a_busy_server(
    backend: HostileGrpcBackend,
) -> None:
    small = KServeGrpcClient(backend.endpoint, max_message_bytes=1024 * 1024)
    backend.servicer.infer = answering(answer(image(PNG + b"\x00" * (2 * 1024 * 1024))))
    try:
        error = await refused(small)
    finally:
        await small.close()
    assert error.code == "backend_protocol" and not error.retriable
    assert "size limit" in str(error)
