"""The gateway's HTTP KServe client and dispatcher against backends that misbehave (a real
aiohttp server on 127.0.0.1 per test, answering what each test sets): every bad answer ends
as one BackendError with a code, final unless a retry could help, and nothing the customer
could be shown or billed goes wrong."""

from __future__ import annotations

import asyncio
import math
import random
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from render_gateway.inference.backend import BackendError, BackendResult, Cancelled, Progress
from render_gateway.inference.kserve_client import KServeClient
from render_gateway.scheduling.backend_pool import BackendPool, BackendSpec
from render_gateway.scheduling.dispatch import Dispatcher, RetryPolicy

from support.hostile_backends import (
    PNG,
    HostileHttpBackend,
    bytes_output,
    fp64,
    hostile_http_backend,
    infer_answer,
    raw_output,
    sse,
)

FAST = RetryPolicy(max_attempts=3, base_delay_seconds=0.01, max_delay_seconds=0.02)
GEN = orjson.dumps({"prompt": "a harbour"})
IMAGES_META = {"name": "demo", "outputs": [{"name": "images", "datatype": "BYTES", "shape": [-1]}]}


@pytest.fixture
async def backend() -> AsyncIterator[HostileHttpBackend]:
    async with hostile_http_backend() as serving:
        yield serving


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


@pytest.fixture
def client(backend: HostileHttpBackend, session: aiohttp.ClientSession) -> KServeClient:
    return KServeClient(session, backend.url)


def answering(*outputs: dict[str, Any], **header: Any) -> Any:
    async def handler(_request: web.Request) -> web.Response:
        return infer_answer(outputs, **header)

    return handler


def streaming(*chunks: bytes) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await sse(request, chunks)

    return handler


async def refused(client: KServeClient, *, stream: bool = False) -> BackendError:
    with pytest.raises(BackendError) as caught:
        if stream:
            async for _ in client.generate_stream("demo", GEN, "req_h"):
                pass
        else:
            await client.infer("demo", GEN, "req_h")
    return caught.value


# ------------------------------------------------------------------------------ infer answers


@pytest.mark.parametrize(
    "outputs",
    [
        (fp64("gpu_seconds", 1.0),),  # declares images, answers without
        (raw_output("images", "FP32", struct.pack("<f", 1.0), [1]),),  # images not BYTES
        (bytes_output("images", [], shape=[0]),),  # nothing in it
        (bytes_output("images", [b""]),),  # one empty image
        (bytes_output("images", [PNG], shape=[2**40, 2**40]),),  # huge shape, short data
    ],
    ids=["missing", "fp32", "shape-0", "empty-element", "huge-shape"],
)
async def test_a_media_output_that_is_not_there_is_one_final_protocol_error(
    backend: HostileHttpBackend, client: KServeClient, outputs: tuple[dict[str, Any], ...]
) -> None:
    backend.metadata = IMAGES_META
    backend.infer = answering(*outputs)
    error = await refused(client)
    assert error.code == "backend_protocol" and not error.retriable


async def test_bytes_length_prefixes_that_run_past_the_data_are_a_protocol_error(
    backend: HostileHttpBackend, client: KServeClient
) -> None:
    raw = struct.pack("<I", 10_000) + PNG  # says 10000 bytes, has 32
    backend.infer = answering(raw_output("images", "BYTES", raw, [1]))
    error = await refused(client)
    assert error.code == "backend_protocol" and not error.retriable


@pytest.mark.parametrize(
    "metadata",
    [{"outputs": "images"}, {"outputs": [{"name": 7}, "images", None]}, [1, 2], b"not json"],
    ids=["outputs-not-a-list", "names-not-strings", "not-an-object", "not-json"],
)
async def test_metadata_that_cannot_be_read_leaves_the_conventions_names(
    backend: HostileHttpBackend, client: KServeClient, metadata: Any
) -> None:
    backend.metadata = metadata
    backend.infer = answering(fp64("gpu_seconds", 0.5), bytes_output("images", [PNG]))
    result = await client.infer("demo", GEN, "req_h")
    assert result.outputs == [PNG] and result.content_type == "image/png"
    assert result.gpu_seconds == 0.5


@pytest.mark.parametrize(
    "gpu_seconds",
    [
        fp64("gpu_seconds", math.nan),
        fp64("gpu_seconds", -1.0),
        fp64("gpu_seconds", math.inf),
        bytes_output("gpu_seconds", [b"1.5"]),
    ],
    ids=["nan", "negative", "inf", "bytes"],
)
async def test_a_gpu_seconds_that_is_no_number_of_seconds_is_attributed_instead(
    backend: HostileHttpBackend, client: KServeClient, gpu_seconds: dict[str, Any]
) -> None:
    backend.metadata = {"outputs": [{"name": "images"}, {"name": "gpu_seconds"}]}
    backend.infer = answering(bytes_output("images", [PNG]), gpu_seconds)
    started = time.perf_counter()
    result = await client.infer("demo", GEN, "req_h")
    wall = time.perf_counter() - started
    assert result.gpu_seconds is None
    # No statistics on this backend: nothing better than wall time is known (None), or a
    # figure within it.
    assert result.attributed_seconds is None or 0 <= result.attributed_seconds <= wall


@pytest.mark.parametrize(
    ("seed", "kept"),
    [
        ({"name": "seed", "datatype": "INT64", "shape": [1], "data": [1e30]}, None),
        ({"name": "seed", "datatype": "INT64", "shape": [1], "data": [-5]}, None),
        (raw_output("seed", "UINT64", struct.pack("<Q", 2**64 - 1), [1]), 2**64 - 1),
        ({"name": "seed", "datatype": "FP64", "shape": [1], "data": [7.5]}, None),
        ({"name": "seed", "datatype": "INT64", "shape": [1], "data": [7]}, 7),
    ],
    ids=["over-int64", "negative", "uint64-max", "float", "seven"],
)
async def test_a_seed_echo_is_kept_only_when_it_is_a_storable_seed(
    backend: HostileHttpBackend, client: KServeClient, seed: dict[str, Any], kept: int | None
) -> None:
    backend.metadata = {"outputs": [{"name": "images"}, {"name": "seed"}]}
    backend.infer = answering(bytes_output("images", [PNG]), seed)
    result = await client.infer("demo", GEN, "req_h")
    assert result.parameters.get("seed") == kept
    orjson.dumps(dict(result.parameters))  # what the job store will do with it


@pytest.mark.parametrize(
    "declared", ["text/html", "image/svg+xml", "image/png\r\nSet-Cookie: a=b", "", 7]
)
async def test_a_declared_content_type_unfit_to_serve_gives_way_to_the_bytes(
    backend: HostileHttpBackend, client: KServeClient, declared: Any
) -> None:
    images = bytes_output("images", [PNG])
    images["parameters"] = {**images["parameters"], "content_type": declared}
    backend.infer = answering(images)
    result = await client.infer("demo", GEN, "req_h")
    assert result.content_type == "image/png"


async def test_parameters_of_odd_types_are_a_protocol_error(
    backend: HostileHttpBackend, client: KServeClient
) -> None:
    backend.infer = answering(bytes_output("images", [PNG]), parameters={"gpu_seconds": [1]})
    error = await refused(client)
    assert error.code == "backend_protocol" and not error.retriable


def queue_stats(ns: object) -> dict[str, Any]:
    return {"model_stats": [{"inference_stats": {"queue": {"ns": ns}}}]}


@pytest.mark.parametrize(
    "counters",
    [["lots"], [-4], [1e30], [None], [{"ns": 1}], [10**12, 5], [0, 10**15], [True, 2**70]],
    ids=["text", "negative", "huge", "null", "object", "backwards", "leap", "bool-then-huge"],
)
async def test_statistics_answering_garbage_never_bill_more_than_the_wall_time_nor_below_0(
    backend: HostileHttpBackend, client: KServeClient, counters: list[object]
) -> None:
    """The queue counter is read before and after the call, each read the next value."""
    backend.metadata = IMAGES_META
    backend.infer = answering(bytes_output("images", [PNG]))
    reads = iter(counters * 2)
    backend.stats = lambda: queue_stats(next(reads, counters[-1]))
    started = time.perf_counter()
    result = await client.infer("demo", GEN, "req_h")
    wall = time.perf_counter() - started
    seconds = result.attributed_seconds
    assert seconds is None or 0 <= seconds <= wall
    assert backend.hits["stats"] >= 1  # read after the call only when read before it


# ---------------------------------------------------------------------------------- streams


@pytest.mark.parametrize(
    "chunks",
    [
        (b"data: not json\n\n",),
        (b"data: [1, 2]\n\n",),
        (b'event: result\ndata: {"outputs": 3, "model_name": "demo"}\n\n',),
        (b'event: result\ndata: {"images": 5}\n\n',),  # a result without the media
    ],
    ids=["not-json", "array", "outputs-not-a-list", "no-media"],
)
async def test_a_stream_event_that_cannot_be_read_is_one_final_protocol_error(
    backend: HostileHttpBackend, client: KServeClient, chunks: tuple[bytes, ...]
) -> None:
    backend.stream = streaming(*chunks)
    error = await refused(client, stream=True)
    if error.code == "backend_error":  # a result-less end of stream: may go better elsewhere
        assert error.retriable and "without a result" in str(error)
    else:
        assert error.code == "backend_protocol" and not error.retriable


async def test_an_event_over_the_size_limit_ends_the_stream_however_it_is_split(
    backend: HostileHttpBackend, session: aiohttp.ClientSession
) -> None:
    client = KServeClient(session, backend.url, max_answer_bytes=64 * 1024)
    one_line = b"data: " + b"x" * 100_000 + b"\n\n"
    many_lines = b"data: xxxxxxxxxxxxxxxx\n" * 20_000 + b"\n"
    for chunk in (one_line, many_lines):
        backend.stream = streaming(chunk)
        error = await refused(client, stream=True)  # type: ignore[arg-type]
        assert error.code == "backend_protocol" and not error.retriable
        assert "size limit" in str(error)


async def test_a_triton_error_event_is_mapped_without_its_traceback(
    backend: HostileHttpBackend, client: KServeClient
) -> None:
    model_failed = orjson.dumps(
        {
            "error": "Failed to process the request(s) for model 'demo', message: "
            'Traceback (most recent call last):\n  File "/opt/models/demo/1/model.py", line 3'
        }
    )
    backend.stream = streaming(b"data: " + model_failed + b"\n\n")
    error = await refused(client, stream=True)
    assert error.code == "model_error" and not error.retriable
    assert "Traceback" not in str(error) and "/opt" not in str(error)
    backend.stream = streaming(b'data: {"error": "in /srv/x.py: boom"}\n\n')
    other = await refused(client, stream=True)
    assert "/srv" not in str(other) and other.code == "backend_error"


async def test_a_stream_that_ends_without_a_result_is_one_error(
    backend: HostileHttpBackend, client: KServeClient
) -> None:
    backend.stream = streaming(b'event: progress\ndata: {"step": 1, "steps": 4}\n\n')
    error = await refused(client, stream=True)
    assert "without a result" in str(error)


async def test_progress_with_garbled_steps_is_shown_as_no_progress_not_a_failure(
    backend: HostileHttpBackend, client: KServeClient
) -> None:
    garbled = [
        b'{"step": "three", "steps": "ten"}',
        b"{}",
        b'{"step": NaN, "steps": Infinity, "progress": NaN, "gpu_seconds": Infinity}',
        b'{"step": 1e400, "steps": -2, "progress": 7}',
    ]
    result = b'event: result\ndata: {"images": "png", "parameters": {"gpu_seconds": 0.1}}\n\n'
    backend.stream = streaming(*(b"event: progress\ndata: " + g + b"\n\n" for g in garbled), result)
    events = [e async for e in client.generate_stream("demo", GEN, "req_h")]
    progress = [e for e in events if isinstance(e, Progress)]
    assert len(progress) == 4 and isinstance(events[-1], BackendResult)
    for event in progress:
        assert event.step >= 0 and event.steps >= 0 and 0.0 <= event.progress <= 1.0
        assert event.gpu_seconds is None or math.isfinite(event.gpu_seconds)


async def test_invalid_utf8_in_render_shaped_events_never_reaches_what_is_stored(
    backend: HostileHttpBackend, client: KServeClient
) -> None:
    claim = (
        b'event: cancelled\ndata: {"parameters": {"usage_claim": "claim\xff\xfe", "x": "\xc3"}}\n\n'
    )
    backend.stream = streaming(claim)
    events = [e async for e in client.generate_stream("demo", GEN, "req_h")]
    assert isinstance(events[-1], Cancelled)
    orjson.dumps(dict(events[-1].parameters))  # the job and usage record will be stored so
    backend.stream = streaming(
        b'event: result\ndata: {"id": "r\xff", "images": "\x89PNG\xff", '
        b'"parameters": {"device_uuid": "GPU-\xff"}}\n\n'
    )
    result = [e async for e in client.generate_stream("demo", GEN, "req_h")][-1]
    assert isinstance(result, BackendResult) and result.outputs == [b"\x89PNG\xff"]
    orjson.dumps({"id": result.request_id, **result.parameters})
    backend.stream = streaming(
        b'event: error\ndata: {"code": "invalid_request", "message": "bad \xff prompt"}\n\n'
    )
    error = await refused(client, stream=True)
    assert error.code == "invalid_request" and not error.retriable
    orjson.dumps(str(error))


# ------------------------------------------------------------------------------- dispatcher


def dispatcher(
    backend: HostileHttpBackend, session: aiohttp.ClientSession, **policy: Any
) -> Dispatcher:
    spec = BackendSpec(
        "h", backend.url, "sd", {"tiny": "demo"}, streaming=policy.pop("streaming", False)
    )
    return Dispatcher(
        BackendPool([spec]),
        lambda s: KServeClient(session, s.endpoint),
        RetryPolicy(**{**FAST.__dict__, **policy}),
        random.Random(1),
    )


async def test_a_backend_that_never_answers_is_ended_by_the_run_timeout_once(
    backend: HostileHttpBackend, session: aiohttp.ClientSession
) -> None:
    async def hang(_request: web.Request) -> web.Response:
        await backend.never.wait()
        return web.Response(status=500)

    backend.infer = hang
    started = time.perf_counter()
    with pytest.raises(BackendError) as caught:
        await dispatcher(backend, session, run_timeout_seconds=0.5).run("sd", "tiny", GEN, "req_d1")
    assert caught.value.code == "timeout" and not caught.value.retriable
    assert time.perf_counter() - started < 0.5 + 2 * 5.0  # + the metadata/stats probes at most
    assert backend.hits["infer"] == 1


async def test_a_stream_that_stalls_after_progress_is_ended_by_the_run_timeout(
    backend: HostileHttpBackend, session: aiohttp.ClientSession
) -> None:
    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'event: progress\ndata: {"step": 1, "steps": 9}\n\n')
        await backend.never.wait()
        return response

    backend.stream = stall
    seen: list[Progress] = []

    async def on_progress(event: Progress) -> None:
        seen.append(event)

    run = dispatcher(backend, session, run_timeout_seconds=0.5, streaming=True)
    with pytest.raises(BackendError) as caught:
        await asyncio.wait_for(run.run("sd", "tiny", GEN, "req_d2", on_progress), 15)
    assert caught.value.code == "timeout" and [e.step for e in seen] == [1]
    assert backend.hits["stream"] == 1


async def test_a_garbled_answer_is_not_sent_again(
    backend: HostileHttpBackend, session: aiohttp.ClientSession
) -> None:
    backend.infer = answering(bytes_output("images", [], shape=[0]))
    with pytest.raises(BackendError) as caught:
        await dispatcher(backend, session).run("sd", "tiny", GEN, "req_d3")
    assert caught.value.code == "backend_protocol" and backend.hits["infer"] == 1


# ------------------------------------------------------------------------------------ sizes


async def test_an_infer_answer_over_the_size_limit_is_cut_off_not_buffered(
    backend: HostileHttpBackend, session: aiohttp.ClientSession
) -> None:
    client = KServeClient(session, backend.url, max_answer_bytes=256 * 1024)
    big = bytes_output("images", [PNG + b"\x00" * (1024 * 1024)])
    backend.infer = answering(big)  # with a Content-Length

    async def chunked(request: web.Request) -> web.StreamResponse:  # without one
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        while not backend.never.is_set():
            await response.write(b"\x00" * 65536)
        return response

    for handler in (answering(big), chunked):
        backend.infer = handler
        error = await asyncio.wait_for(refused(client), 15)
        assert error.code == "backend_protocol" and not error.retriable
        assert "size limit" in str(error)


async def test_an_endless_error_body_is_read_only_as_far_as_the_log_needs(
    backend: HostileHttpBackend, client: KServeClient
) -> None:
    sent = 0

    async def endless_500(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse(status=500)
        response.enable_chunked_encoding()
        await response.prepare(request)
        while not backend.never.is_set() and sent < 2**31:
            await response.write(b"Traceback " * 6554)
            sent += 65540
        return response

    backend.infer = endless_500
    error = await asyncio.wait_for(refused(client), 15)
    assert error.retriable and error.status == 500 and "Traceback" not in str(error)
    assert sent < 64 * 1024 * 1024  # the client hung up; it did not drain the body


async def test_a_cancel_the_gateway_never_asked_for_is_an_error_not_the_customers_cancel(
    backend: HostileHttpBackend, session: aiohttp.ClientSession
) -> None:
    backend.stream = streaming(
        b'event: progress\ndata: {"step": 1, "steps": 4}\n\n',
        b'event: cancelled\ndata: {"parameters": {"gpu_seconds": 40.0}}\n\n',
    )
    run = dispatcher(backend, session, streaming=True, max_attempts=2)
    with pytest.raises(BackendError) as caught:
        await run.run("sd", "tiny", GEN, "req_d4")
    assert caught.value.code == "backend_cancelled" and caught.value.retriable
    assert backend.hits["stream"] == 2  # retried: another run may finish


@pytest.mark.parametrize("length", ["abc", "-1", "99999999", "١٢"])
async def test_a_header_length_that_is_no_length_is_a_protocol_error(
    backend: HostileHttpBackend, client: KServeClient, length: str
) -> None:
    async def lying_length(_request: web.Request) -> web.Response:
        answer = infer_answer([bytes_output("images", [PNG])])
        answer.headers["Inference-Header-Content-Length"] = length
        return answer

    backend.infer = lying_length
    error = await refused(client)
    assert error.code == "backend_protocol" and not error.retriable


async def test_a_redirect_is_not_followed_anywhere(
    backend: HostileHttpBackend, client: KServeClient
) -> None:
    async with hostile_http_backend() as elsewhere:
        elsewhere.infer = answering(bytes_output("images", [PNG]))
        elsewhere.stream = streaming(b'event: result\ndata: {"images": "png"}\n\n')

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect(elsewhere.url + request.path)

        backend.infer = backend.stream = redirect
        backend.metadata = backend.stats = None
        assert (await refused(client)).status == 307
        assert (await refused(client, stream=True)).status == 307
        assert elsewhere.hits == {}
