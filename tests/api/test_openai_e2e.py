"""The OpenAI-compatible routes driven by the official ``openai`` Python package, against a real
gateway process in front of the session's real reference worker."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from PIL import Image

from support.gateway import ONE_WORKER_CONFIG, GatewayProcess, start_gateway, stop_gateway
from support.processes import WorkerProcess
from support.worker_api import wait_idle

CONFIG = (
    ONE_WORKER_CONFIG
    + """
[gateway.plans.default]
rate_capacity = 1000
rate_refill_per_second = 100

[gateway.plans.admin]
admin = true
rate_capacity = 1000
rate_refill_per_second = 100

[gateway.plans.slow]
rate_capacity = 1
rate_refill_per_second = 0.001

[gateway.budgets.broke]
monthly_gpu_seconds = 0.000001
"""
)


@pytest.fixture(scope="module")
def gateway(
    worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    process = start_gateway(tmp_path_factory.mktemp("openai"), CONFIG.format(worker=worker.url))
    yield process
    stop_gateway(process)


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> OpenAI:
    return OpenAI(base_url=gateway.url + "/v1", api_key=gateway.new_key("olivia"), max_retries=0)


@pytest.fixture(autouse=True)
def _idle_after(worker: WorkerProcess) -> Iterator[None]:
    yield
    wait_idle(worker)


def png_of(b64: str | None) -> Image.Image:
    assert b64 is not None
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG"
    return image


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    """The OpenAI error body, exactly its four keys."""
    body = exc.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert exc.response.headers["x-request-id"].startswith("req_")
    error: dict[str, Any] = body["error"]
    return error


def test_models_list_and_retrieve(client: OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["sd/tiny"]
    assert models.data[0].object == "model" and models.data[0].owned_by == "render"
    assert models.data[0].created > 0
    assert client.models.retrieve("sd/tiny").id == "sd/tiny"
    assert client.models.retrieve("render/tiny-sd-demo").id == "sd/tiny"  # the alias
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("sd/nope")
    assert error_of(caught.value)["code"] == "model_not_found"


def test_generate_b64_json_is_a_png_of_the_size_asked(client: OpenAI) -> None:
    raw = client.images.with_raw_response.generate(
        model="sd/tiny", prompt="a fox", size="64x64", response_format="b64_json",
        extra_body={"seed": 7},
    )  # fmt: skip
    assert raw.headers["x-request-id"].startswith("req_")
    assert float(raw.headers["x-gpu-seconds"]) > 0 and raw.headers["x-seed"] == "7"
    result = raw.parse()
    assert result.data is not None and len(result.data) == 1
    assert png_of(result.data[0].b64_json).size == (64, 64)
    assert result.created > 0 and result.usage is not None
    assert result.usage.total_tokens == 0  # Render bills GPU-seconds, not tokens
    assert result.model_dump()["usage"]["gpu_seconds"] == float(raw.headers["x-gpu-seconds"])


def test_generate_n_images_by_alias_and_a_non_square_size(client: OpenAI) -> None:
    result = client.images.generate(
        model="render/tiny-sd-demo", prompt="two foxes", n=2, size="96x64",
        response_format="b64_json",
    )  # fmt: skip
    assert result.data is not None and len(result.data) == 2
    assert all(png_of(image.b64_json).width > 0 for image in result.data)


def test_generate_streamed_sends_real_partial_images_then_the_completed_ones(
    client: OpenAI,
) -> None:
    """stream: true with partial_images: the worker decodes the run's latents at steps spread
    over it (2 of the demo model's 4 steps) and the gateway relays each as it comes, then one
    image_generation.completed per image — read by the openai client's own stream."""
    events = list(
        client.images.generate(
            model="sd/tiny", prompt="a fox", size="64x64", n=2, stream=True, partial_images=2
        )
    )
    kinds = [event.type for event in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"] * 2
    partials, completed = events[:2], events[2:]
    assert [event.partial_image_index for event in partials] == [0, 1]
    for event in events:
        assert png_of(event.b64_json).size == (64, 64)
        assert event.output_format == "png" and event.size == "64x64"
    # Real intermediate states: each partial differs from the others and from the result.
    pixels = {png_of(event.b64_json).tobytes() for event in [*partials, completed[0]]}
    assert len(pixels) == 3
    assert completed[0].usage is not None


def test_without_partial_images_a_stream_is_the_completed_images_only(client: OpenAI) -> None:
    events = list(
        client.images.generate(model="sd/tiny", prompt="a fox", size="64x64", stream=True)
    )
    assert [event.type for event in events] == ["image_generation.completed"]


def test_edit_streamed(client: OpenAI) -> None:
    image = ("in.png", png_bytes((64, 64), (1, 2, 3, 255)), "image/png")
    events = list(client.images.edit(model="sd/tiny", prompt="p", image=image, stream=True))
    assert [event.type for event in events] == ["image_generation.completed"]
    assert png_of(events[0].b64_json).format == "PNG"


def test_generate_url_is_fetchable_without_credentials(client: OpenAI) -> None:
    result = client.images.generate(
        model="sd/tiny", prompt="a fox", size="64x64", response_format="url"
    )
    assert result.data is not None and result.data[0].url is not None
    fetched = httpx.get(result.data[0].url, timeout=30)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(fetched.content)).size == (64, 64)


@pytest.mark.parametrize(
    ("fields", "param", "code", "says"),
    [
        ({"size": "8x8"}, "size", "size_not_offered", "not offered"),
        ({"size": "big"}, "size", "invalid_request", "size"),
        ({"extra_body": {"steps": 2}}, "steps", "invalid_request", "Extra inputs"),
        ({"extra_body": {"stream": "maybe"}}, "stream", "invalid_request", "bool"),
        ({"output_format": "jpeg"}, "output_format", "invalid_request", "png"),
        ({"background": "transparent"}, "background", "invalid_request", "opaque"),
        ({"n": 9}, "n", "invalid_request", "4"),
    ],
)
def test_unsupported_fields_are_openai_bad_requests(
    client: OpenAI, fields: dict[str, Any], param: str, code: str, says: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(model="sd/tiny", prompt="a fox", **fields)
    error = error_of(caught.value)
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert error["code"] == code and says in error["message"], error


def test_unknown_model_is_not_found(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.images.generate(model="flux/nope", prompt="a fox")
    error = error_of(caught.value)
    assert error["code"] == "model_not_found" and error["param"] == "model"


def test_bad_key_is_an_authentication_error(gateway: GatewayProcess) -> None:
    stranger = OpenAI(base_url=gateway.url + "/v1", api_key="rk_not_a_key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        stranger.models.list()
    error = error_of(caught.value)
    assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        stranger.images.generate(model="sd/tiny", prompt="a fox", size="64x64")


def test_rate_limit_and_budget_refusals_in_openai_shape(gateway: GatewayProcess) -> None:
    slow = OpenAI(
        base_url=gateway.url + "/v1", api_key=gateway.new_key("sam", "slow"), max_retries=0
    )
    slow.images.generate(model="sd/tiny", prompt="a fox", size="64x64")
    with pytest.raises(openai.RateLimitError) as limited:
        slow.images.generate(model="sd/tiny", prompt="a fox", size="64x64")
    assert error_of(limited.value)["type"] == "rate_limit_error"
    assert int(limited.value.response.headers["retry-after"]) > 0

    broke = OpenAI(base_url=gateway.url + "/v1", api_key=gateway.new_key("broke"), max_retries=0)
    with pytest.raises(openai.APIStatusError) as refused:
        broke.images.generate(model="sd/tiny", prompt="a fox", size="64x64")
    assert refused.value.status_code == 402
    error = error_of(refused.value)
    assert error["type"] == "insufficient_quota" and error["code"] == "budget_exceeded"


def test_generations_are_billed_like_the_native_sync_tier(gateway: GatewayProcess) -> None:
    """One use case underneath: the generation is a billed sync request in /usage, for the
    GPU-seconds its header said."""
    key = gateway.new_key("bill")
    billed = OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    raw = billed.images.with_raw_response.generate(model="sd/tiny", prompt="a fox", size="64x64")
    deadline = time.monotonic() + 30
    totals: dict[str, Any] = {}
    while time.monotonic() < deadline:
        usage = httpx.get(
            gateway.url + "/usage", headers={"Authorization": f"Bearer {key}"}, timeout=30
        ).json()
        totals = usage["totals"]
        if totals["requests"] == 1:
            break
        time.sleep(0.2)  # the usage writer feeds the store within about a second
    assert totals["requests"] == 1 and totals["billable_requests"] == 1, totals
    assert totals["gpu_seconds"] == pytest.approx(float(raw.headers["x-gpu-seconds"]), abs=1e-5)


def test_unknown_v1_route_is_an_openai_404(gateway: GatewayProcess, client: OpenAI) -> None:
    response = httpx.post(
        gateway.url + "/v1/audio/speech", json={}, timeout=30,
        headers={"Authorization": f"Bearer {client.api_key}"},
    )  # fmt: skip
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"


def png_bytes(size: tuple[int, int], colour: tuple[int, int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", size, colour).save(out, format="PNG")
    return out.getvalue()


def test_edit_with_a_mask_runs_the_edit_task(client: OpenAI) -> None:
    raw = client.images.with_raw_response.edit(
        model="sd/tiny", prompt="a red door",
        image=("door.png", png_bytes((64, 64), (10, 20, 30, 255)), "image/png"),
        mask=("mask.png", png_bytes((64, 64), (0, 0, 0, 0)), "image/png"),
        size="64x64", response_format="b64_json",
    )  # fmt: skip
    assert float(raw.headers["x-gpu-seconds"]) > 0
    result = raw.parse()
    assert result.data is not None and len(result.data) == 1
    assert png_of(result.data[0].b64_json).size == (64, 64)


def test_edit_without_a_mask_is_i2i(client: OpenAI) -> None:
    result = client.images.edit(
        model="render/tiny-sd-demo", prompt="the same, at night", n=2,
        image=("in.png", png_bytes((96, 64), (200, 200, 200, 255)), "image/png"),
    )  # fmt: skip
    assert result.data is not None and len(result.data) == 2
    assert all(png_of(image.b64_json).width > 0 for image in result.data)


def test_edit_refusals_are_openai_bad_requests(client: OpenAI) -> None:
    image = ("in.png", png_bytes((64, 64), (1, 2, 3, 255)), "image/png")
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"image": image, "size": "128x128"}, "size", "takes no size"),  # i2i takes none
        ({"image": [image, image]}, "image", "exactly one image"),
        ({"image": ("notes.txt", b"not an image", "text/plain")}, "image", "not a PNG"),
        ({"image": image, "extra_body": {"steps": "2"}}, "steps", "Extra inputs"),
    ]
    for fields, param, says in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            client.images.edit(model="sd/tiny", prompt="p", **fields)
        error = error_of(caught.value)
        assert error["param"] == param and says in error["message"], error
