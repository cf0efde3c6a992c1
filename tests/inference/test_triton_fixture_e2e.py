"""The real-Triton fixture itself (issue 13): the convention's models answer as documented,
and a gRPC cancel reaches a raw Python-backend model, which stops running for that request."""

from __future__ import annotations

import json
import queue
import socket
import struct
import time
import uuid
import zlib
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from support.triton_server import TritonServer, ensure_triton_venv


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


def test_where_pytriton_cannot_install_the_fixture_skips_loudly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # ``make triton-env`` really runs, and fails: no venv can be made under /proc.
    monkeypatch.setenv("RENDER_TRITON_VENV", "/proc/no-triton-venv-here")
    with pytest.raises(pytest.skip.Exception, match="REAL-TRITON TESTS SKIPPED"):
        ensure_triton_venv()


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


# What Triton 2.51 itself answers, pinned here because the gateway's parsing depends on it.


def http_infer_body(text: str, name: str = "request") -> dict[str, Any]:
    return {"inputs": [{"name": name, "shape": [1], "datatype": "BYTES", "data": [text]}]}


def test_a_model_error_is_500_text_plain_with_the_traceback(triton_server: TritonServer) -> None:
    body = http_infer_body(json.dumps({"prompt": unique("broken")}))
    answer = httpx.post(f"{triton_server.http_url}/v2/models/broken/infer", json=body)
    assert answer.status_code == 500
    assert answer.headers["content-type"] == "text/plain"
    message = answer.json()["error"]  # the body is JSON although the type says text/plain
    assert "input 'request': field 'prompt' is not allowed here" in message
    assert "Traceback (most recent call last)" in message  # never for a customer's eyes
    client = grpcclient.InferenceServerClient(triton_server.grpc_target)
    try:
        client.infer("broken", [request_input(grpcclient, prompt=unique("broken"))])
    except InferenceServerException as error:
        assert error.status() == "StatusCode.INTERNAL"
        assert "Traceback" in str(error.message())
    else:
        raise AssertionError("the broken model answered")


def test_a_request_error_is_400_json_and_invalid_argument(triton_server: TritonServer) -> None:
    body = http_infer_body(json.dumps({"prompt": "x"}), name="prompt")
    answer = httpx.post(f"{triton_server.http_url}/v2/models/painter/infer", json=body)
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {"error": "unexpected inference input 'prompt' for model 'painter'"}
    client = grpcclient.InferenceServerClient(triton_server.grpc_target)
    wrong = grpcclient.InferInput("prompt", [1], "BYTES")
    wrong.set_data_from_numpy(np.array([b"{}"], dtype=np.object_))
    try:
        client.infer("painter", [wrong])
    except InferenceServerException as error:
        assert error.status() == "StatusCode.INVALID_ARGUMENT"
    else:
        raise AssertionError("Triton took an unknown input")


def test_generate_sends_the_png_as_raw_bytes_in_a_json_string(triton_server: TritonServer) -> None:
    """Not base64 and not UTF-8: bytes >= 0x80 go out as they are, control bytes as \\u00XX
    escapes, so decoding the body as Latin-1 gives back the exact PNG. ``id`` and
    ``parameters`` are accepted; both reach the model as request parameters."""
    prompt = unique("generate")
    fields = {"prompt": prompt, "seed": 9, "width": 5, "height": 3}
    body = {"request": json.dumps(fields), "id": "x", "parameters": {"foo": "bar"}}
    answer = httpx.post(f"{triton_server.http_url}/v2/models/painter/generate", json=body)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    with pytest.raises(UnicodeDecodeError):
        answer.content.decode("utf-8")
    document = json.loads(answer.content.decode("latin-1"))
    assert set(document) == {"id", "model_name", "model_version", "images", "gpu_seconds", "seed"}
    assert (document["id"], document["seed"]) == ("x", 9)
    assert png_size(document["images"].encode("latin-1")) == (5, 3)
    start = triton_server.events("painter", prompt=prompt, event="start")
    assert start[0]["parameters"] == {"id": "x", "foo": "bar"}


def test_generate_stream_of_stepper_stream_is_progress_then_images(
    triton_server: TritonServer,
) -> None:
    fields = {"prompt": unique("sse"), "steps": 2, "step_s": 0.01, "width": 2, "height": 1}
    answer = httpx.post(
        f"{triton_server.http_url}/v2/models/stepper_stream/generate_stream",
        json={"request": json.dumps(fields)},
        timeout=30,
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = [chunk for chunk in answer.content.split(b"\n\n") if chunk]
    assert all(event.startswith(b"data: ") for event in events)
    documents = [json.loads(event[6:].decode("latin-1")) for event in events]
    common = {"model_name": "stepper_stream", "model_version": "1"}
    assert documents[:2] == [common | {"step": 1, "steps": 2}, common | {"step": 2, "steps": 2}]
    assert png_size(documents[2]["images"].encode("latin-1")) == (2, 1)
    assert len(documents) == 3


def post_and_hang_up(server: TritonServer, path: str, body: dict[str, Any], prompt: str) -> None:
    """Send ``body`` on a raw socket and close it once the model has started on it."""
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", server.http_port)) as connection:
        connection.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        server.wait_for_event(lambda e: e["prompt"] == prompt and e["event"] == "step")


def test_an_http_hang_up_does_not_cancel_infer(triton_server: TritonServer) -> None:
    prompt = unique("hang-up-infer")
    body = http_infer_body(json.dumps({"prompt": prompt, "steps": 10, "step_s": 0.05}))
    post_and_hang_up(triton_server, "/v2/models/stepper/infer", body, prompt)
    end = triton_server.wait_for_event(
        lambda e: e["prompt"] == prompt and e["event"] in ("done", "cancelled")
    )
    assert end["event"] == "done"  # Triton's HTTP infer runs on after the client is gone


def test_an_http_hang_up_cancels_generate_stream(triton_server: TritonServer) -> None:
    prompt = unique("hang-up-stream")
    fields = {"prompt": prompt, "steps": 200, "step_s": 0.05}
    post_and_hang_up(
        triton_server,
        "/v2/models/stepper_stream/generate_stream",
        {"request": json.dumps(fields)},
        prompt,
    )
    end = triton_server.wait_for_event(
        lambda e: e["prompt"] == prompt and e["event"] in ("done", "cancelled")
    )
    assert end["event"] == "cancelled"
    assert end["step"] < 200


def test_a_queued_request_cancelled_over_grpc_does_no_work(triton_server: TritonServer) -> None:
    """Triton 2.51 does not drop it from its queue: ``execute`` gets it with ``is_cancelled()``
    already true, so the model must check before any work. (A cancel that beats the request
    to Triton, on a loaded machine, means the model never sees it at all.)"""
    client = grpcclient.InferenceServerClient(triton_server.grpc_target)
    first, queued = unique("running"), unique("queued")
    answers: queue.Queue[tuple[str, Any]] = queue.Queue()
    client.async_infer(
        "stepper",
        [request_input(grpcclient, prompt=first, steps=6, step_s=0.05)],
        callback=lambda result, error: answers.put((first, error)),
        request_id=first,
    )
    triton_server.wait_for_event(lambda e: e["id"] == first and e["event"] == "step")
    call = client.async_infer(
        "stepper",
        [request_input(grpcclient, prompt=queued, steps=6, step_s=0.05)],
        callback=lambda result, error: answers.put((queued, error)),
        request_id=queued,
    )
    call.cancel()
    name, error = answers.get(timeout=10)
    assert name == queued and "CANCELLED" in str(error.status())
    assert answers.get(timeout=10) == (first, None)
    # The model is free again only after the queued request has been dealt with: one more
    # request through the single instance orders this check after it.
    client.infer("stepper", [request_input(grpcclient, prompt=unique("after"), steps=1)])
    seen = [event["event"] for event in triton_server.events("stepper", id=queued)]
    assert seen in ([], ["start", "cancelled"])
    if seen:
        assert triton_server.events("stepper", id=queued, event="cancelled")[0]["step"] == 0


def test_statistics_fill_queue_and_compute_durations(triton_server: TritonServer) -> None:
    client = httpclient.InferenceServerClient(triton_server.http_host)
    client.infer("plain", [request_input(httpclient, prompt=unique("stats"), sleep_s=0.05)])
    answer = httpx.get(f"{triton_server.http_url}/v2/models/plain/stats")
    assert answer.status_code == 200
    (stats,) = answer.json()["model_stats"]
    assert stats["name"] == "plain" and stats["inference_count"] >= 1
    durations = stats["inference_stats"]
    for kind in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert durations[kind]["count"] >= 1 and durations[kind]["ns"] > 0
    assert durations["compute_infer"]["ns"] >= 50_000_000


def test_triton_killed_mid_run_then_restarted(triton_server: TritonServer) -> None:
    """Kept last: it kills the session's Triton, and brings it back on the same ports."""
    client = grpcclient.InferenceServerClient(triton_server.grpc_target)
    prompt = unique("killed")
    errors: queue.Queue[Any] = queue.Queue()
    client.async_infer(
        "stepper",
        [request_input(grpcclient, prompt=prompt, steps=200, step_s=0.05)],
        callback=lambda result, error: errors.put(error),
        request_id=prompt,
    )
    triton_server.wait_for_event(lambda e: e["id"] == prompt and e["event"] == "step")
    triton_server.kill()
    error = errors.get(timeout=10)
    assert error.status() == "StatusCode.UNAVAILABLE"
    triton_server.restart()
    after = client.infer("plain", [request_input(grpcclient, prompt=unique("back"))])
    assert png_size(after.as_numpy("images")[0]) == (64, 64)
