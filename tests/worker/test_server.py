"""The reference worker as a real process on 127.0.0.1, driven over HTTP."""

from __future__ import annotations

import base64
import dataclasses
import io
import stat
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import blake3
import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from PIL import Image

from render_gateway.kserve import codec
from render_gateway.usage_claim import InvalidClaim, SignedClaim, verify_claim
from render_gateway.worker.pipelines import preview_steps

from support.processes import WorkerProcess
from support.worker_api import stats, wait_idle

LONG_STEPS = 500  # ~8 ms a step at 64 px on one CPU core: a run of a few seconds


# ------------------------------------------------------------------------------ helpers


def infer_body(
    request: dict[str, Any], request_id: str | None = None, binary: bool = False
) -> bytes:
    payload: dict[str, Any] = {
        "inputs": [
            {
                "name": "request",
                "datatype": "BYTES",
                "shape": [1],
                "data": [orjson.dumps(request).decode()],
            }
        ]
    }
    if request_id is not None:
        payload["id"] = request_id
    if binary:
        payload["outputs"] = [{"name": "images", "parameters": {"binary_data": True}}]
    return orjson.dumps(payload)


def infer(worker: WorkerProcess, request: dict[str, Any], **kwargs: Any) -> httpx.Response:
    return httpx.post(
        worker.url + "/v2/models/demo/infer", content=infer_body(request, **kwargs), timeout=60
    )


def decode(response: httpx.Response) -> codec.InferResponse:
    length = codec.parse_header_length(response.headers.get(codec.HEADER_LENGTH))
    return codec.decode_response(response.content, length)


def png_of(response: httpx.Response, index: int = 0) -> bytes:
    assert response.status_code == 200, response.text
    data = decode(response).output("images").data
    assert isinstance(data, list)
    return bytes(data[index])


def open_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image


def node_key(worker: WorkerProcess) -> Ed25519PublicKey:
    node = httpx.get(worker.url + "/v2/node").json()
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(node["public_key"]))


def sse_events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    event, data = "message", []
    for line in response.iter_lines():
        if line.startswith(":"):
            continue
        if line == "":
            if data:
                yield event, orjson.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


@pytest.fixture(autouse=True)
def _idle_after(worker: WorkerProcess) -> Iterator[None]:
    yield
    wait_idle(worker)


# --------------------------------------------------------------------- protocol surface


def test_health_and_metadata(worker: WorkerProcess) -> None:
    assert httpx.get(worker.url + "/v2/health/live").json() == {"live": True}
    assert httpx.get(worker.url + "/v2/health/ready").status_code == 200
    server = httpx.get(worker.url + "/v2").json()
    assert "binary_tensor_data" in server["extensions"]
    assert httpx.get(worker.url + "/v2/node").json()["grpc_port"] is None  # no --grpc-port: off
    meta = httpx.get(worker.url + "/v2/models/demo").json()
    assert meta["name"] == "demo" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "request", "datatype": "BYTES", "shape": [1]}]
    assert meta["outputs"][0]["name"] == "images"
    assert set(meta["parameters"]["tasks"].split(",")) == {"t2i", "i2i", "edit"}
    assert httpx.get(worker.url + "/v2/models/demo/ready").json()["ready"] is True
    assert httpx.get(worker.url + "/v2/models/demo/versions/1").status_code == 200
    missing = httpx.get(worker.url + "/v2/models/demo/versions/2")
    assert missing.status_code == 404 and missing.json()["code"] == "model_not_found"


def test_node_key_file_is_private(worker: WorkerProcess) -> None:
    key_file = worker.data_dir / "node.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_infer_json_returns_png_with_metering(worker: WorkerProcess) -> None:
    response = infer(worker, {"prompt": "a red fox", "seed": 7}, request_id="req_json1")
    png = png_of(response)
    image = open_png(png)
    assert image.size == (64, 64)
    result = decode(response)
    params = result.parameters
    assert result.id == "req_json1"
    assert params["seed"] == 7 and params["steps"] == 4 and params["steps_completed"] == 4
    assert params["device_kind"] == "cpu" and str(params["device_uuid"]).startswith("cpu-")
    assert params["meter"] == "thread_cpu_time"
    assert 0 < float(params["gpu_seconds"]) <= float(params["pipeline_seconds"]) * 1.05 + 0.01
    assert params["output_blake3"] == blake3.blake3(png).hexdigest()


def test_infer_binary_extension_returns_png(worker: WorkerProcess) -> None:
    response = infer(worker, {"prompt": "a red fox", "seed": 8}, binary=True)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == codec.BINARY_CONTENT_TYPE
    header_length = int(response.headers[codec.HEADER_LENGTH])
    header = orjson.loads(response.content[:header_length])
    size = header["outputs"][0]["parameters"]["binary_data_size"]
    assert header_length + size == len(response.content)
    open_png(png_of(response))


def test_infer_binary_input_is_accepted(worker: WorkerProcess) -> None:
    request = codec.InferRequest(
        inputs=(
            codec.Tensor("request", "BYTES", (1,), [orjson.dumps({"prompt": "x", "seed": 1})]),
        ),
        outputs=(codec.RequestedOutput("images", binary=True),),
    )
    body, length = codec.encode_request(request, binary_inputs=True)
    assert length is not None
    response = httpx.post(
        worker.url + "/v2/models/demo/infer",
        content=body,
        headers={codec.HEADER_LENGTH: str(length)},
        timeout=60,
    )
    open_png(png_of(response))


def test_same_seed_gives_identical_bytes(worker: WorkerProcess) -> None:
    first = png_of(infer(worker, {"prompt": "a lighthouse", "seed": 123}))
    second = png_of(infer(worker, {"prompt": "a lighthouse", "seed": 123}))
    other = png_of(infer(worker, {"prompt": "a lighthouse", "seed": 124}))
    assert first == second
    assert first != other


def test_seed_is_drawn_and_returned_when_absent(worker: WorkerProcess) -> None:
    response = infer(worker, {"prompt": "a lighthouse"})
    seed = decode(response).parameters["seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**32
    again = infer(worker, {"prompt": "a lighthouse", "seed": seed})
    assert png_of(again) == png_of(response)


def test_count_and_size(worker: WorkerProcess) -> None:
    response = infer(worker, {"prompt": "two", "count": 2, "width": 128, "height": 96, "seed": 5})
    result = decode(response)
    tensor = result.output("images")
    assert tensor.shape == (2,)
    images = [open_png(bytes(d)) for d in tensor.data]
    assert [i.size for i in images] == [(128, 96), (128, 96)]
    assert images[0].tobytes() != images[1].tobytes()
    assert len(str(result.parameters["output_blake3"]).split(",")) == 2


def _data_uri(image: Image.Image, kind: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=kind)
    media = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}[kind]
    return f"data:image/{media};base64," + base64.b64encode(buffer.getvalue()).decode()


def test_image_to_image_and_edit(worker: WorkerProcess) -> None:
    source = Image.new("RGB", (64, 64), (200, 30, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    i2i = infer(
        worker, {"task": "i2i", "prompt": "x", "image": _data_uri(source, "JPEG"), "strength": 0.5}
    )
    assert decode(i2i).parameters["steps_completed"] == 2  # strength 0.5 of 4 steps
    open_png(png_of(i2i))
    edit = infer(
        worker,
        {
            "task": "edit",
            "prompt": "x",
            "image": _data_uri(source, "WEBP"),
            "mask": _data_uri(mask),
        },
    )
    open_png(png_of(edit))


# ------------------------------------------------------------------ streaming, cancelling


def test_generate_stream_one_progress_event_per_step(worker: WorkerProcess) -> None:
    body = {"request": {"prompt": "a fox", "seed": 3, "steps": 6}, "id": "req_stream1"}
    with httpx.stream(
        "POST", worker.url + "/v2/models/demo/generate_stream", json=body, timeout=60
    ) as response:
        assert response.status_code == 200
        events = list(sse_events(response))
    kinds = [kind for kind, _ in events]
    assert kinds == ["progress"] * 6 + ["result"]
    steps = [data["step"] for _, data in events[:-1]]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert all(data["steps"] == 6 for _, data in events[:-1])
    assert [data["progress"] for _, data in events[:-1]][-1] == 1.0
    result = codec.response_from_json(events[-1][1])
    assert result.id == "req_stream1"
    open_png(bytes(result.output("images").data[0]))
    # Each step reports the run's device time so far (what a gateway charges a budget with):
    # growing, and never more than the run's final metered figure.
    used = [data["gpu_seconds"] for _, data in events[:-1]]
    assert used[0] > 0 and used == sorted(used)
    assert used[-1] <= float(result.parameters["gpu_seconds"])


def test_generate_stream_sends_the_previews_asked_for(worker: WorkerProcess) -> None:
    """previews: 2 of a 6-step run: the latents decoded after steps 2 and 4 (spread evenly,
    never the last), as base64 PNGs on those progress events; none on the others."""
    body = {"request": {"prompt": "a fox", "seed": 3, "steps": 6, "previews": 2}}
    with httpx.stream(
        "POST", worker.url + "/v2/models/demo/generate_stream", json=body, timeout=60
    ) as response:
        assert response.status_code == 200
        events = list(sse_events(response))
    with_preview = [data["step"] for kind, data in events if "preview" in data]
    assert with_preview == [2, 4]
    previews = [base64.b64decode(data["preview"]) for _, data in events if "preview" in data]
    final = bytes(codec.response_from_json(events[-1][1]).output("images").data[0])
    images = [open_png(data) for data in [*previews, final]]
    assert len({image.tobytes() for image in images}) == 3  # real, different states
    assert len({image.size for image in images}) == 1


@pytest.mark.parametrize("previews", [0, 4, -1, "many"])
def test_previews_out_of_range_are_refused(worker: WorkerProcess, previews: object) -> None:
    body = {"request": {"prompt": "a fox", "steps": 2, "previews": previews}}
    answer = httpx.post(worker.url + "/v2/models/demo/generate", json=body, timeout=60)
    assert answer.status_code == 400, answer.text


def test_preview_steps_spread_over_the_run() -> None:
    assert preview_steps(None, 10) == () and preview_steps(2, 1) == ()
    assert preview_steps(1, 4) == (2,)
    assert preview_steps(3, 8) == (2, 4, 6)
    assert preview_steps(3, 2) == (1,)  # never the last step (that is the result)


def _start_long_stream(
    worker: WorkerProcess, request_id: str
) -> tuple[threading.Thread, list[tuple[str, dict[str, Any]]], threading.Event]:
    """Run a long stream in a thread; returns it, its events and an event set at first progress."""
    events: list[tuple[str, dict[str, Any]]] = []
    started = threading.Event()

    def consume() -> None:
        body = {"request": {"prompt": "long", "steps": LONG_STEPS}, "id": request_id}
        with httpx.stream(
            "POST", worker.url + "/v2/models/demo/generate_stream", json=body, timeout=120
        ) as response:
            for item in sse_events(response):
                events.append(item)
                started.set()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    assert started.wait(60), "the long run never reported progress"
    return thread, events, started


def test_disconnect_interrupts_the_run_and_frees_the_slot(worker: WorkerProcess) -> None:
    before = stats(worker)
    body = {"request": {"prompt": "long", "steps": LONG_STEPS}}
    with httpx.stream(
        "POST", worker.url + "/v2/models/demo/generate_stream", json=body, timeout=60
    ) as response:
        for seen, (kind, _) in enumerate(sse_events(response), start=1):
            assert kind == "progress"
            if seen == 3:
                break  # leaving the block closes the connection mid-run
    after = wait_idle(worker)
    executed = after["steps_executed"] - before["steps_executed"]
    assert 3 <= executed < LONG_STEPS
    assert after["cancelled"] == before["cancelled"] + 1
    time.sleep(0.5)
    assert stats(worker)["steps_executed"] == after["steps_executed"]  # the count has stopped
    open_png(png_of(infer(worker, {"prompt": "next", "seed": 1})))  # the slot is free


def test_infer_client_timeout_interrupts_the_run(worker: WorkerProcess) -> None:
    before = stats(worker)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            worker.url + "/v2/models/demo/infer",
            content=infer_body({"prompt": "long", "steps": LONG_STEPS}),
            timeout=httpx.Timeout(10, read=0.5),
        )
    after = wait_idle(worker)
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["steps_executed"] - before["steps_executed"] < LONG_STEPS


def test_cancel_endpoint_ends_stream_with_signed_claim(worker: WorkerProcess) -> None:
    thread, events, _ = _start_long_stream(worker, "req_cancel1")
    response = httpx.delete(worker.url + "/v2/models/demo/requests/req_cancel1")
    assert response.status_code == 204
    thread.join(30)
    assert not thread.is_alive()
    kind, data = events[-1]
    assert kind == "cancelled"
    params = data["parameters"]
    assert params["status"] == "cancelled" and 0 < params["steps_completed"] < LONG_STEPS
    claim = verify_claim(SignedClaim.from_text(params["usage_claim"]), node_key(worker))
    assert claim.status == "cancelled" and claim.output_blake3 == ()
    assert claim.steps_completed == params["steps_completed"]
    gone = httpx.delete(worker.url + "/v2/models/demo/requests/req_cancel1")
    assert gone.status_code == 404 and gone.json()["code"] == "request_not_found"


def test_busy_model_answers_503_with_retry_after(worker: WorkerProcess) -> None:
    thread, _, _ = _start_long_stream(worker, "req_busy1")
    try:
        response = infer(worker, {"prompt": "x"})
        assert response.status_code == 503
        assert response.json()["code"] == "busy"
        assert int(response.headers["retry-after"]) >= 1
        duplicate = httpx.post(
            worker.url + "/v2/models/demo/generate_stream",
            json={"request": {"prompt": "x"}, "id": "req_busy1"},
        )
        assert duplicate.status_code == 409
    finally:
        httpx.delete(worker.url + "/v2/models/demo/requests/req_busy1")
        thread.join(30)
    assert stats(worker)["rejected_busy"] >= 1


# ---------------------------------------------------------------------------- the claim


def test_claim_verifies_with_node_key_and_fails_after_one_byte(worker: WorkerProcess) -> None:
    response = infer(worker, {"prompt": "a receipt", "seed": 42}, request_id="req_claim1")
    png = png_of(response)
    params = decode(response).parameters
    signed = SignedClaim.from_text(str(params["usage_claim"]))
    public = node_key(worker)
    claim = verify_claim(signed, public)
    assert claim.request_id == "req_claim1" and claim.model == "demo" and claim.seed == 42
    assert claim.device_uuid == params["device_uuid"] and claim.device_kind == "cpu"
    assert claim.gpu_seconds == params["gpu_seconds"]
    assert claim.output_blake3 == (blake3.blake3(png).hexdigest(),)
    assert claim.status == "complete"
    # The claim's interval is the metered pipeline call, not the whole request.
    interval = datetime.fromisoformat(claim.ended_at) - datetime.fromisoformat(claim.started_at)
    assert 0 <= interval.total_seconds() - float(params["pipeline_seconds"]) < 0.05
    for position in (0, len(signed.payload) // 2, len(signed.payload) - 2):
        tampered = bytearray(signed.payload)
        tampered[position] ^= 0x01
        with pytest.raises(InvalidClaim):
            verify_claim(SignedClaim(bytes(tampered), signed.signature, signed.key_id), public)
    bad_signature = bytearray(signed.signature)
    bad_signature[0] ^= 0x80
    with pytest.raises(InvalidClaim):
        verify_claim(SignedClaim(signed.payload, bytes(bad_signature), signed.key_id), public)
    # Signed in a window (claim_window_ms): a lone request's is a window of one, whose
    # statement, not the payload, the node key signed.
    assert signed.algorithm == "Ed25519-window" and signed.window is not None
    assert signed.window.size == 1 and signed.window.path == ()
    with pytest.raises(InvalidClaim, match="not in its window"):
        verify_claim(dataclasses.replace(signed, payload=bytes(tampered)), public)
    with pytest.raises(InvalidClaim, match="window signature does not verify"):
        verify_claim(dataclasses.replace(signed, signature=bytes(bad_signature)), public)


# ----------------------------------------------------------------------------- bad input

BAD_REQUESTS: list[tuple[str, bytes, dict[str, str], int, str]] = [
    ("not json", b"{nope", {}, 400, "invalid_tensor"),
    ("json array", b"[]", {}, 400, "invalid_tensor"),
    ("no inputs", b'{"inputs": []}', {}, 400, "invalid_tensor"),
    (
        "wrong datatype",
        b'{"inputs":[{"name":"request","datatype":"FP32","shape":[1],"data":[1.0]}]}',
        {},
        400,
        "invalid_tensor",
    ),
    (
        "wrong shape",
        b'{"inputs":[{"name":"request","datatype":"BYTES","shape":[2],"data":["{}","{}"]}]}',
        {},
        400,
        "invalid_tensor",
    ),
    (
        "shape and data disagree",
        b'{"inputs":[{"name":"request","datatype":"BYTES","shape":[3],"data":["{}"]}]}',
        {},
        400,
        "invalid_tensor",
    ),
    (
        "unknown input",
        b'{"inputs":[{"name":"prompt","datatype":"BYTES","shape":[1],"data":["x"]}]}',
        {},
        400,
        "invalid_tensor",
    ),
    (
        "header length past body",
        b'{"inputs":[]}',
        {codec.HEADER_LENGTH: "999"},
        400,
        "invalid_tensor",
    ),
    (
        "header length not a number",
        b'{"inputs":[]}',
        {codec.HEADER_LENGTH: "x"},
        400,
        "invalid_tensor",
    ),
]


@pytest.mark.parametrize(
    ("name", "body", "headers", "status", "code"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_malformed_tensors_are_400(
    worker: WorkerProcess, name: str, body: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    response = httpx.post(worker.url + "/v2/models/demo/infer", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert response.json()["message"]


BAD_GENERATIONS: list[tuple[str, dict[str, Any]]] = [
    ("no prompt", {"seed": 1}),
    ("empty prompt", {"prompt": ""}),
    ("task the pipeline cannot do", {"prompt": "x", "task": "t2v"}),
    ("unknown task", {"prompt": "x", "task": "t2a"}),
    ("i2i without image", {"prompt": "x", "task": "i2i"}),
    ("edit without mask", {"prompt": "x", "task": "edit", "image": "data:image/png;base64,AAAA"}),
    (
        "image not an image",
        {
            "prompt": "x",
            "task": "i2i",
            "image": "data:image/png;base64," + base64.b64encode(b"not a png").decode(),
        },
    ),
    ("image bad base64", {"prompt": "x", "task": "i2i", "image": "data:image/png;base64,@@@"}),
    (
        "image gif",
        {"prompt": "x", "task": "i2i", "image": "data:image/gif;base64,R0lGODlhAQABAAAAACw="},
    ),
    ("remote http refused", {"prompt": "x", "task": "i2i", "image": "http://127.0.0.1:9/x.png"}),
    ("width too large", {"prompt": "x", "width": 4096, "height": 64}),
    ("width too small", {"prompt": "x", "width": 8, "height": 64}),
    ("width not a multiple", {"prompt": "x", "width": 100, "height": 64}),
    ("unknown format", {"prompt": "x", "format": "8k"}),
    ("seed out of range", {"prompt": "x", "seed": 2**32}),
    ("strength on t2i", {"prompt": "x", "strength": 0.5}),
    ("count on video", {"prompt": "x", "task": "t2v", "count": 2}),
    ("guidance and cfg disagree", {"prompt": "x", "guidance": 3, "cfg": 5}),
]


@pytest.mark.parametrize(
    ("name", "request_body"), BAD_GENERATIONS, ids=[b[0] for b in BAD_GENERATIONS]
)
def test_bad_generation_requests_are_400(
    worker: WorkerProcess, name: str, request_body: dict[str, Any]
) -> None:
    response = infer(worker, request_body)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "invalid_request" and body["message"]


def test_run_the_pipeline_rejects_is_400_and_frees_its_slot(worker: WorkerProcess) -> None:
    before = stats(worker)
    # An extra key the pipeline accepts, with a value its text encoder cannot honour.
    response = infer(worker, {"prompt": "x", "clip_skip": 50})
    assert response.status_code == 400, response.text
    assert "the pipeline rejected the request" in response.json()["message"]
    after = wait_idle(worker)
    assert after["in_flight"] == 0
    failed = httpx.get(worker.url + "/v2/models/demo/stats").json()["model_stats"][0]
    assert failed["inference_stats"]["fail"]["count"] >= 1
    assert after["steps_executed"] == before["steps_executed"]
    open_png(png_of(infer(worker, {"prompt": "next", "seed": 2})))


def test_unknown_model_and_route_are_404_json(worker: WorkerProcess) -> None:
    response = httpx.post(worker.url + "/v2/models/nope/infer", content=infer_body({"prompt": "x"}))
    assert response.status_code == 404 and response.json()["code"] == "model_not_found"
    assert httpx.get(worker.url + "/v3").json()["code"] == "not_found"


def test_bad_request_id_is_400(worker: WorkerProcess) -> None:
    response = infer(worker, {"prompt": "x"}, request_id="has space")
    assert response.status_code == 400


def test_nothing_crashes_the_server(worker: WorkerProcess) -> None:
    for _, body, headers, _, _ in BAD_REQUESTS:
        httpx.post(worker.url + "/v2/models/demo/infer", content=body, headers=headers)
    for _, request_body in BAD_GENERATIONS:
        infer(worker, request_body)
    assert worker.process.poll() is None
    assert wait_idle(worker)["in_flight"] == 0
    open_png(png_of(infer(worker, {"prompt": "still here", "seed": 9})))
