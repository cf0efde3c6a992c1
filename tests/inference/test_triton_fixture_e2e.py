"""The real-Triton fixture itself (issue 13): the convention's models answer as documented,
and a gRPC cancel reaches a raw Python-backend model, which stops running for that request."""

from __future__ import annotations

import json
import queue
import struct
import time
import uuid
import zlib
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from support.triton_server import TritonServer


def request_input(module: Any, **fields: Any) -> Any:
    tensor = module.InferInput("request", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([json.dumps(fields).encode()], dtype=np.object_))
    return tensor


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG, after checking its signature, chunk CRCs and pixel data."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks = 8, {}
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc
        chunks[kind] = body
        position += 12 + length
    width, height = struct.unpack(">II", chunks[b"IHDR"][:8])
    assert len(zlib.decompress(chunks[b"IDAT"])) == height * (1 + 3 * width)
    return width, height


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def test_painter_returns_a_png_its_gpu_seconds_and_the_seed(triton_server: TritonServer) -> None:
    client = httpclient.InferenceServerClient(triton_server.http_host)
    prompt = unique("painter")
    result = client.infer(
        "painter",
        [request_input(httpclient, prompt=prompt, seed=7, width=24, height=16, sleep_s=0.05)],
    )
    names = [output["name"] for output in result.get_response()["outputs"]]
    assert sorted(names) == ["gpu_seconds", "images", "seed"]
    assert png_size(result.as_numpy("images")[0]) == (24, 16)
    gpu_seconds = float(result.as_numpy("gpu_seconds")[0])
    assert 0.05 <= gpu_seconds < 5
    assert int(result.as_numpy("seed")[0]) == 7
    assert [e["event"] for e in triton_server.events("painter", prompt=prompt)] == [
        "start",
        "done",
    ]


def test_plain_returns_only_images_at_the_default_size(triton_server: TritonServer) -> None:
    client = grpcclient.InferenceServerClient(triton_server.grpc_target)
    result = client.infer("plain", [request_input(grpcclient, prompt=unique("plain"), seed=1)])
    assert [output.name for output in result.get_response().outputs] == ["images"]
    assert png_size(result.as_numpy("images")[0]) == (64, 64)


def test_broken_is_a_model_error_naming_the_input(triton_server: TritonServer) -> None:
    client = httpclient.InferenceServerClient(triton_server.http_host)
    try:
        client.infer("broken", [request_input(httpclient, prompt=unique("broken"))])
    except InferenceServerException as error:
        assert "input 'request'" in str(error.message())
    else:
        raise AssertionError("the broken model answered")


def test_a_grpc_cancel_stops_stepper_and_frees_it(triton_server: TritonServer) -> None:
    client = grpcclient.InferenceServerClient(triton_server.grpc_target)
    request_id = unique("cancel-me")
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    call = client.async_infer(
        "stepper",
        [request_input(grpcclient, prompt=request_id, steps=200, step_s=0.05)],
        callback=lambda result, error: answers.put((result, error)),
        request_id=request_id,
    )
    triton_server.wait_for_event(lambda e: e["id"] == request_id and e["event"] == "step")
    call.cancel()
    result, error = answers.get(timeout=10)
    assert result is None
    assert "CANCELLED" in str(error.status())
    cancelled = triton_server.wait_for_event(
        lambda e: e["id"] == request_id and e["event"] == "cancelled"
    )
    assert cancelled["step"] < 200
    # The model is free at once: a short request runs now, not after the cancelled one's steps.
    started = time.monotonic()
    after = client.infer("stepper", [request_input(grpcclient, prompt=unique("next"), steps=1)])
    assert png_size(after.as_numpy("images")[0]) == (64, 64)
    assert time.monotonic() - started < 3
    assert not triton_server.events("stepper", id=request_id, event="done")


def test_stepper_stream_sends_progress_then_images(triton_server: TritonServer) -> None:
    client = grpcclient.InferenceServerClient(triton_server.grpc_target)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer(
            "stepper_stream",
            [request_input(grpcclient, prompt=unique("stream"), steps=3, step_s=0.01, seed=3)],
            request_id=unique("stream"),
            enable_empty_final_response=True,
        )
        progress: list[tuple[int, int]] = []
        images: list[bytes] = []
        while True:
            result, error = answers.get(timeout=30)
            assert error is None
            response = result.get_response()
            if response.outputs:
                names = {output.name for output in response.outputs}
                if "images" in names:
                    images.append(result.as_numpy("images")[0])
                else:
                    step = int(result.as_numpy("step")[0])
                    progress.append((step, int(result.as_numpy("steps")[0])))
            if response.parameters["triton_final_response"].bool_param:
                break
    finally:
        client.stop_stream()
    assert progress == [(1, 3), (2, 3), (3, 3)]
    assert len(images) == 1
    assert png_size(images[0]) == (64, 64)
