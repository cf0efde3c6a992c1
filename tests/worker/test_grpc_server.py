"""The worker's KServe v2 gRPC endpoint, driven by tritonclient's gRPC clients (sync and
asyncio) and by the raw generated stub, against a real worker process."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from support.worker_api import GrpcWorker, stats, wait_idle

pytestmark = pytest.mark.processes  # the grpc_worker fixture starts a worker process

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LONG_STEPS = 500  # a run of a few seconds on the demo model


def request_input(generation: dict[str, Any], module: Any = triton_grpc) -> Any:
    tensor = module.InferInput("request", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([orjson.dumps(generation)], dtype=np.object_))
    return tensor


def parameter(parameters: Any, key: str) -> Any:
    value = parameters[key]
    return getattr(value, value.WhichOneof("parameter_choice"))


@pytest.fixture
def client(grpc_worker: GrpcWorker) -> Iterator[Any]:
    client = triton_grpc.InferenceServerClient(grpc_worker.grpc_address)
    yield client
    client.close()
    wait_idle(grpc_worker.process)


def _stub(grpc_worker: GrpcWorker) -> tuple[grpc.Channel, Any]:
    channel = grpc.insecure_channel(grpc_worker.grpc_address)
    return channel, service_pb2_grpc.GRPCInferenceServiceStub(channel)


# ------------------------------------------------------------------ health and metadata


def test_health_metadata_and_config(client: Any) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("demo") and client.is_model_ready("demo", "1")
    assert not client.is_model_ready("nope") and not client.is_model_ready("demo", "2")
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "render-worker" and "statistics" in server["extensions"]
    metadata = client.get_model_metadata("demo", as_json=True)
    assert metadata["versions"] == ["1"] and metadata["platform"] == "diffusers"
    assert metadata["inputs"] == [{"name": "request", "datatype": "BYTES", "shape": ["1"]}]
    assert metadata["outputs"][0]["name"] == "images"
    config = client.get_model_config("demo").config
    assert config.name == "demo" and config.max_batch_size == 0
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("request", triton_grpc.model_config_pb2.TYPE_STRING, [1])
    ]
    assert [(o.name, list(o.dims)) for o in config.output] == [("images", [-1])]
    assert not config.model_transaction_policy.decoupled
    assert config.instance_group[0].count == 1
    assert config.parameters["max_concurrency"].string_value == "1"


# --------------------------------------------------------------------------- inference


def test_infer_returns_png_and_parameters(client: Any) -> None:
    result = client.infer(
        "demo",
        [request_input({"prompt": "a lighthouse", "seed": 7, "steps": 2})],
        outputs=[triton_grpc.InferRequestedOutput("images")],
        request_id="req_grpc_infer1",
    )
    images = result.as_numpy("images")
    assert images.shape == (1,) and bytes(images[0])[:8] == PNG_MAGIC
    response = result.get_response()
    assert response.id == "req_grpc_infer1" and response.model_version == "1"
    assert response.outputs[0].parameters["content_type"].string_param == "image/png"
    assert parameter(response.parameters, "gpu_seconds") > 0
    assert parameter(response.parameters, "seed") == 7
    assert parameter(response.parameters, "steps_completed") == 2
    assert parameter(response.parameters, "usage_claim").startswith("{")


def test_bytes_contents_input_is_accepted(grpc_worker: GrpcWorker) -> None:
    request = service_pb2.ModelInferRequest(model_name="demo", id="req_contents1")
    tensor = request.inputs.add(name="request", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(orjson.dumps({"prompt": "x", "seed": 1, "steps": 1}))
    channel, stub = _stub(grpc_worker)
    with channel:
        response = stub.ModelInfer(request, timeout=60)
    length = int.from_bytes(response.raw_output_contents[0][:4], "little")
    png = response.raw_output_contents[0][4 : 4 + length]
    assert png[:8] == PNG_MAGIC and len(response.raw_output_contents[0]) == 4 + length


def test_statistics(client: Any) -> None:
    before = client.get_inference_statistics("demo", as_json=True)["model_stats"][0]
    client.infer("demo", [request_input({"prompt": "counted", "seed": 2, "steps": 1})])
    after = client.get_inference_statistics("demo").model_stats[0]
    assert after.name == "demo" and after.version == "1"
    assert after.inference_count == int(before.get("inference_count", 0)) + 1
    assert after.last_inference > 0
    stats_ = after.inference_stats
    assert stats_.compute_infer.ns > 0 and stats_.compute_output.ns > 0
    assert stats_.success.count == after.inference_count
    assert len(client.get_inference_statistics().model_stats) == 1


# ----------------------------------------------------------------------------- errors


def test_errors_carry_the_message_a_status_and_renders_code(
    client: Any, grpc_worker: GrpcWorker
) -> None:
    with pytest.raises(InferenceServerException) as raised:
        client.infer("demo", [request_input({"prompt": "x", "width": 100, "height": 64})])
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "multiple of 8" in raised.value.message()
    with pytest.raises(InferenceServerException) as missing:
        client.infer("nope", [request_input({"prompt": "x"})])
    assert missing.value.status() == "StatusCode.NOT_FOUND"
    assert "unknown model 'nope'" in missing.value.message()
    # Render's code in the trailing metadata, for a gateway to act on.
    request = service_pb2.ModelInferRequest(model_name="demo")
    tensor = request.inputs.add(name="request", datatype="BYTES", shape=[2])
    tensor.contents.bytes_contents.extend([b"{}", b"{}"])
    channel, stub = _stub(grpc_worker)
    with channel, pytest.raises(grpc.RpcError) as rpc:
        stub.ModelInfer(request, timeout=30)
    assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must have shape [1]" in rpc.value.details()
    assert ("render-code", "invalid_tensor") in tuple(rpc.value.trailing_metadata())


def _long_grpc_infer(grpc_worker: GrpcWorker, request_id: str) -> tuple[threading.Thread, Any]:
    """A long gRPC infer in a thread; returns it and a queue that gets its result or error,
    once the run holds the worker's one slot."""
    outcome: queue.Queue[Any] = queue.Queue()

    def run() -> None:
        client = triton_grpc.InferenceServerClient(grpc_worker.grpc_address)
        try:
            generation = {"prompt": "long", "steps": LONG_STEPS}
            outcome.put(client.infer("demo", [request_input(generation)], request_id=request_id))
        except InferenceServerException as exc:
            outcome.put(exc)
        finally:
            client.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    _wait_in_flight(grpc_worker)
    return thread, outcome


def _wait_in_flight(grpc_worker: GrpcWorker, timeout: float = 30.0) -> None:
    """Poll the worker's counter until a run holds its slot."""
    deadline = time.monotonic() + timeout
    while stats(grpc_worker.process)["in_flight"] == 0:
        assert time.monotonic() < deadline, "the long run never took its slot"


def test_busy_duplicate_and_cancelled_are_their_statuses(
    client: Any, grpc_worker: GrpcWorker
) -> None:
    thread, outcome = _long_grpc_infer(grpc_worker, "req_grpc_long1")
    with pytest.raises(InferenceServerException) as busy:
        client.infer("demo", [request_input({"prompt": "x"})])
    assert busy.value.status() == "StatusCode.UNAVAILABLE" and "busy" in busy.value.message()
    with pytest.raises(InferenceServerException) as duplicate:
        client.infer("demo", [request_input({"prompt": "x"})], request_id="req_grpc_long1")
    assert duplicate.value.status() == "StatusCode.ALREADY_EXISTS"
    # Cancelled by Render's cancel route while the gRPC call waits: CANCELLED, with the steps.
    deleted = httpx.delete(grpc_worker.url + "/v2/models/demo/requests/req_grpc_long1")
    assert deleted.status_code == 204
    thread.join(30)
    cancelled = outcome.get(timeout=1)
    assert isinstance(cancelled, InferenceServerException)
    assert cancelled.status() == "StatusCode.CANCELLED"
    assert "cancelled after" in cancelled.message()


def test_deadline_passing_cancels_the_run(client: Any, grpc_worker: GrpcWorker) -> None:
    """A client timeout (the gateway's, say) ends the call, and the run stops with it."""
    before = wait_idle(grpc_worker.process)
    generation = {"prompt": "long", "steps": LONG_STEPS}
    with pytest.raises(InferenceServerException) as late:
        client.infer("demo", [request_input(generation)], client_timeout=1.0)
    assert late.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    after = wait_idle(grpc_worker.process)
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["steps_executed"] - before["steps_executed"] < LONG_STEPS


# -------------------------------------------------------------------------- streaming


def test_stream_sends_progress_then_the_final_response(client: Any) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer(
            "demo",
            [request_input({"prompt": "streamed", "seed": 5, "steps": 3})],
            request_id="req_grpc_stream1",
        )
        client.async_stream_infer("demo", [request_input({"prompt": ""})], request_id="bad1")
        seen: list[Any] = []
        errors: list[Any] = []
        while len(seen) < 4 or not errors:
            result, error = answers.get(timeout=60)
            if error is not None:
                errors.append(error)
            else:
                seen.append(result.get_response())
    finally:
        client.stop_stream()
    progress, final = seen[:-1], seen[-1]
    assert [parameter(r.parameters, "step") for r in progress] == [1, 2, 3]
    assert all(parameter(r.parameters, "steps") == 3 and not r.outputs for r in progress)
    assert [parameter(r.parameters, "triton_final_response") for r in seen] == [
        False,
        False,
        False,
        True,
    ]
    used = [parameter(r.parameters, "gpu_seconds") for r in progress]
    assert used == sorted(used) and used[-1] <= parameter(final.parameters, "gpu_seconds")
    assert final.id == "req_grpc_stream1" and final.outputs[0].name == "images"
    assert final.raw_output_contents[0][4:12] == PNG_MAGIC
    assert "prompt" in errors[0].message()  # the bad request's own message; the stream goes on


# ------------------------------------------------------------------------ cancellation


async def _aio_wait_in_flight(grpc_worker: GrpcWorker) -> None:
    """Poll the worker's counter (in a thread, off this loop) until the run holds its slot."""
    await asyncio.to_thread(_wait_in_flight, grpc_worker)


async def test_aio_infer_cancelled_by_the_client_stops_the_run(grpc_worker: GrpcWorker) -> None:
    before = await asyncio.to_thread(wait_idle, grpc_worker.process)
    client = triton_aio.InferenceServerClient(grpc_worker.grpc_address)
    try:
        generation = {"prompt": "long", "steps": LONG_STEPS}
        task = asyncio.create_task(
            client.infer("demo", [request_input(generation, triton_aio)], request_id="req_aio1")
        )
        await _aio_wait_in_flight(grpc_worker)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        after = await asyncio.to_thread(wait_idle, grpc_worker.process)
        assert after["cancelled"] == before["cancelled"] + 1
        assert 0 < after["steps_executed"] - before["steps_executed"] < LONG_STEPS
        # The slot is free: the next request runs at once (a busy worker would refuse it).
        result = await client.infer(
            "demo", [request_input({"prompt": "next", "seed": 1, "steps": 1}, triton_aio)]
        )
        assert bytes(result.as_numpy("images")[0])[:8] == PNG_MAGIC
    finally:
        await client.close()


async def test_aio_stream_cancelled_after_first_steps_stops_the_run(
    grpc_worker: GrpcWorker,
) -> None:
    before = await asyncio.to_thread(wait_idle, grpc_worker.process)
    client = triton_aio.InferenceServerClient(grpc_worker.grpc_address)
    requests: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    async def request_iterator() -> Any:
        while (item := await requests.get()) is not None:
            yield item

    try:
        generation = {"prompt": "long", "steps": LONG_STEPS}
        await requests.put(
            {
                "model_name": "demo",
                "inputs": [request_input(generation, triton_aio)],
                "request_id": "req_aio_stream1",
            }
        )
        responses = client.stream_infer(request_iterator())
        steps = []
        async for result, error in responses:
            assert error is None, error
            steps.append(parameter(result.get_response().parameters, "step"))
            if len(steps) == 3:
                break
        responses.cancel()  # tritonclient's handle on the call: cancels the RPC
        after = await asyncio.to_thread(wait_idle, grpc_worker.process)
        assert steps == [1, 2, 3]
        assert after["cancelled"] == before["cancelled"] + 1
        assert 3 <= after["steps_executed"] - before["steps_executed"] < LONG_STEPS
    finally:
        await requests.put(None)
        await client.close()
