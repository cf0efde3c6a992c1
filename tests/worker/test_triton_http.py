"""tritonclient's HTTP client against a real worker, as a Triton user would drive it; and the
Triton-shaped answers beside it (model config, errors, generate, statistics)."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from support.worker_api import GrpcWorker, wait_idle

pytestmark = pytest.mark.processes  # the grpc_worker fixture starts a worker process

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def request_input(generation: dict[str, Any], module: Any = triton_http) -> Any:
    """The generation JSON as Triton users send text: one BYTES element, shape [1]."""
    tensor = module.InferInput("request", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([orjson.dumps(generation)], dtype=np.object_))
    return tensor


@pytest.fixture
def client(grpc_worker: GrpcWorker) -> Any:
    client = triton_http.InferenceServerClient(grpc_worker.http_address, network_timeout=60)
    yield client
    client.close()
    wait_idle(grpc_worker.process)


def test_health_metadata_and_config(client: Any) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("demo") and client.is_model_ready("demo", "1")
    assert not client.is_model_ready("nope")
    server = client.get_server_metadata()
    assert "model_configuration" in server["extensions"]
    metadata = client.get_model_metadata("demo")
    assert metadata["inputs"] == [{"name": "request", "datatype": "BYTES", "shape": [1]}]
    config = client.get_model_config("demo")
    assert config == client.get_model_config("demo", "1")
    assert config["name"] == "demo" and config["max_batch_size"] == 0
    assert config["platform"] == "diffusers" and config["backend"] == "render"
    assert config["input"] == [
        {"name": "request", "data_type": "TYPE_STRING", "format": "FORMAT_NONE", "dims": [1]}
    ]
    assert config["output"] == [{"name": "images", "data_type": "TYPE_STRING", "dims": [-1]}]
    assert config["model_transaction_policy"] == {"decoupled": False}
    assert config["instance_group"][0]["count"] == 1  # max_concurrency
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert config["parameters"]["tasks"]["string_value"] == metadata["parameters"]["tasks"]


def test_infer_returns_png_and_parameters(client: Any) -> None:
    result = client.infer(
        "demo",
        [request_input({"prompt": "a lighthouse", "seed": 7, "steps": 2})],
        outputs=[triton_http.InferRequestedOutput("images", binary_data=True)],
        request_id="req_http_triton1",
    )
    images = result.as_numpy("images")
    assert images.shape == (1,) and bytes(images[0])[:8] == PNG_MAGIC
    response = result.get_response()
    assert response["id"] == "req_http_triton1"
    parameters = response["parameters"]
    assert parameters["gpu_seconds"] > 0 and parameters["seed"] == 7
    assert parameters["steps_completed"] == 2 and parameters["content_type"] == "image/png"


def test_error_shows_the_human_message(client: Any, grpc_worker: GrpcWorker) -> None:
    with pytest.raises(InferenceServerException) as raised:
        client.infer("demo", [request_input({"prompt": "x", "width": 100, "height": 64})])
    assert raised.value.status() == "400"
    message = raised.value.message()
    assert "multiple of 8" in message, message  # the text a person can act on, not the code
    body = httpx.post(
        grpc_worker.url + "/v2/models/demo/generate", json={"request": {"prompt": ""}}
    ).json()
    assert body["code"] == "invalid_request"
    assert body["error"] == body["message"] and "prompt" in body["message"]
    with pytest.raises(InferenceServerException) as missing:
        client.get_model_config("nope")
    assert missing.value.status() == "404" and "unknown model 'nope'" in missing.value.message()


def test_statistics_measure_each_stage(client: Any) -> None:
    before = client.get_inference_statistics("demo")["model_stats"][0]
    client.infer("demo", [request_input({"prompt": "counted", "seed": 3, "steps": 2})])
    after = client.get_inference_statistics("demo")["model_stats"][0]
    assert after["name"] == "demo" and after["version"] == "1"
    assert after["inference_count"] == before["inference_count"] + 1
    assert after["execution_count"] == before["execution_count"] + 1
    assert after["last_inference"] >= before["last_inference"] and after["last_inference"] > 0
    stats, earlier = after["inference_stats"], before["inference_stats"]
    spent = {k: stats[k]["ns"] - earlier[k]["ns"] for k in stats}
    for stage in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert stats[stage]["count"] == earlier[stage]["count"] + 1, stage
    # Each stage measured for real: the pipeline call dominates; the stages fit in the whole.
    assert spent["compute_infer"] > 0 and spent["compute_output"] > 0
    assert spent["compute_input"] > 0 and spent["queue"] >= 0
    parts = spent["compute_input"] + spent["queue"] + spent["compute_infer"]
    assert parts + spent["compute_output"] <= spent["success"]
    assert after["render"]["max_concurrency"] == 1  # Render's counters stay beside Triton's
    every = client.get_inference_statistics()["model_stats"]
    assert [entry["name"] for entry in every] == ["demo"]


def test_generate_answers_in_tritons_shape(grpc_worker: GrpcWorker) -> None:
    response = httpx.post(
        grpc_worker.url + "/v2/models/demo/generate",
        json={"request": {"prompt": "two", "seed": 4, "steps": 2, "count": 2}, "id": "req_gen2"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "demo" and body["model_version"] == "1"
    assert body["id"] == "req_gen2" and "outputs" not in body
    assert body["parameters"]["content_encoding"] == "base64"
    assert body["parameters"]["seed"] == 4 and body["parameters"]["gpu_seconds"] > 0
    images = [base64.b64decode(text) for text in body["images"]]  # several: a list
    assert len(images) == 2 and all(image[:8] == PNG_MAGIC for image in images)
