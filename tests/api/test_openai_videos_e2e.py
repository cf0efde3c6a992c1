"""The OpenAI-compatible video routes driven by the official ``openai`` Python package, against
a real gateway process in front of real workers: the tiny demo video pipeline (TextToVideoSD,
built locally, H.264 MP4 out) and the session's image worker (for a non-video job).

A video is a job of the async tier: the tests look at the same job through the native routes
too, so one use case is underneath both."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import openai
import pytest
from openai import OpenAI
from openai.types import Video

from support.gateway import GatewayProcess, bearer, start_gateway, stop_gateway, wait_done
from support.processes import WorkerProcess, start_worker, stop_worker
from support.worker_api import wait_idle

# The openai package marks its video methods deprecated (OpenAI's own Sora API is to shut
# down); the routes here are Render's and stay.
pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")

FPS = 4  # the worker's frames per second: seconds "4" is 16 frames
WORKER_CONFIG = """
[worker]
cpu_threads = 1

[worker.models.clip]
path = "{path}"
fps = {fps}
"""
CONFIG = """
[gateway]
local_demo_worker = false

[[gateway.backends]]
id = "images"
endpoint = "{images}"
family = "sd"
models = {{ tiny = "demo" }}
capacity = 1

[[gateway.backends]]
id = "videos"
endpoint = "{videos}"
family = "sd"
models = {{ clip = "clip" }}
capacity = 1

[[gateway.models]]
modality = "image"
family = "sd"
model = "tiny"
tasks = ["t2i"]

[[gateway.models]]
modality = "video"
family = "sd"
model = "clip"
tasks = ["t2v"]
aliases = ["render/tiny-video-demo"]

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


@pytest.fixture(scope="module")
def video_worker(
    video_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    config = WORKER_CONFIG.format(path=video_model_dir, fps=FPS)
    process = start_worker(tmp_path_factory.mktemp("video-worker"), [], config=config)
    yield process
    stop_worker(process)


@pytest.fixture(scope="module")
def gateway(
    worker: WorkerProcess, video_worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config = CONFIG.format(images=worker.url, videos=video_worker.url)
    process = start_gateway(tmp_path_factory.mktemp("openai-videos"), config)
    yield process
    stop_gateway(process)


def client_of(gateway: GatewayProcess, customer: str, plan: str = "default") -> OpenAI:
    key = gateway.new_key(customer, plan)
    return OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> OpenAI:
    return client_of(gateway, "vera")


@pytest.fixture(autouse=True)
def _idle_after(video_worker: WorkerProcess) -> Iterator[None]:
    yield
    wait_idle(video_worker, model="clip", timeout=60)


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    """The OpenAI error body, exactly its four keys."""
    body = exc.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert exc.response.headers["x-request-id"].startswith("req_")
    error: dict[str, Any] = body["error"]
    return error


def wait_video(client: OpenAI, video_id: str, timeout: float = 120) -> tuple[Video, list[int]]:
    """Retrieve until the video has ended; its last state and every progress seen."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        video = client.videos.retrieve(video_id)
        seen.append(video.progress)
        if video.status in ("completed", "failed"):
            return video, seen
        time.sleep(0.05)
    raise AssertionError(f"video {video_id} still {video.status} after {timeout}s")


def frames_of(mp4: bytes) -> tuple[int, int, int]:
    """(frames, width, height) of an MP4, decoded."""
    with av.open(io.BytesIO(mp4)) as container:
        frames = list(container.decode(video=0))
    return len(frames), frames[0].width, frames[0].height


def test_create_retrieve_progress_download(client: OpenAI, gateway: GatewayProcess) -> None:
    raw = client.videos.with_raw_response.create(
        model="sd/clip", prompt="waves", seconds="4", size="128x128"
    )
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["x-ratelimit-limit"] == "1000"
    created = raw.parse()
    assert created.object == "video" and created.id.startswith("j_")
    assert created.status in ("queued", "in_progress") and created.progress < 100
    assert (created.model, created.seconds, created.size) == ("sd/clip", "4", "128x128")
    assert created.prompt == "waves" and created.completed_at is None and created.error is None

    video, seen = wait_video(client, created.id)
    assert video.status == "completed" and video.progress == 100, video
    assert seen == sorted(seen), seen  # progress only rises
    assert any(0 < p < 100 for p in seen), seen  # from the run's steps, not 0 then 100
    assert video.completed_at is not None and video.completed_at >= video.created_at
    assert video.error is None and video.expires_at is None

    content = client.videos.download_content(created.id)
    mp4 = content.content
    assert mp4[4:8] == b"ftyp"  # an ISO base media (MP4) container
    assert content.response.headers["content-type"] == "video/mp4"
    assert frames_of(mp4) == (4 * FPS, 128, 128)
    assert client.videos.download_content(created.id, variant="video").content == mp4

    # One use case underneath: the native job is the same one, billed as the header says.
    headers = bearer(client.api_key)
    job = httpx.get(f"{gateway.url}/jobs/{created.id}", headers=headers, timeout=30).json()
    assert job["status"] == "complete" and job["request"]["modality"] == "video"
    assert job["request"]["task"] == "t2v" and job["request"]["generation"]["duration"] == 4.0
    assert (job["request"]["generation"]["width"], job["request"]["generation"]["height"]) == (
        128,
        128,
    )
    retrieved = client.videos.with_raw_response.retrieve(created.id)
    assert float(retrieved.headers["x-gpu-seconds"]) == pytest.approx(
        job["usage"]["gpu_seconds"], abs=1e-5
    )
    assert float(retrieved.headers["x-gpu-seconds"]) > 0


def test_json_body_by_alias_with_default_seconds(client: OpenAI, gateway: GatewayProcess) -> None:
    """A JSON body (not the openai client's multipart form): the alias, no size (the model's
    default), no seconds (OpenAI's default, 4) and seconds as a JSON number."""
    headers = bearer(client.api_key)
    answer = httpx.post(
        gateway.url + "/v1/videos", json={"model": "render/tiny-video-demo", "prompt": "rain"},
        headers=headers, timeout=30,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == "sd/clip" and body["seconds"] == "4" and body["size"] == "auto"
    assert answer.headers["location"] == f"/v1/videos/{body['id']}"
    video, _ = wait_video(client, body["id"])
    assert video.status == "completed"
    assert frames_of(client.videos.download_content(video.id).content) == (4 * FPS, 64, 64)

    short = httpx.post(
        gateway.url + "/v1/videos", json={"model": "sd/clip", "prompt": "rain", "seconds": 1,
                                          "size": "64x64", "seed": 3},
        headers=headers, timeout=30,
    )  # fmt: skip
    assert short.status_code == 200, short.text
    assert short.json()["seconds"] == "1"
    video, _ = wait_video(client, short.json()["id"])
    assert frames_of(client.videos.download_content(video.id).content)[0] == FPS
    job = httpx.get(f"{gateway.url}/jobs/{video.id}", headers=headers, timeout=30).json()
    assert job["seed"] == 3


def test_list_is_a_cursor_page_of_ones_own_videos(gateway: GatewayProcess) -> None:
    lister = client_of(gateway, "lister")
    headers = bearer(lister.api_key)
    made = [lister.videos.create(model="sd/clip", prompt=f"clip {n}", seconds="1",
                                 size="64x64").id for n in range(3)]  # fmt: skip
    # A job of another modality, by the native API, is not a video.
    image = httpx.post(
        gateway.url + "/queue", headers=headers, timeout=30,
        json={"modality": "image", "family": "sd", "model": "tiny", "task": "t2i",
              "prompt": "p", "format": "512"},
    )  # fmt: skip
    assert image.status_code == 202, image.text
    try:
        first = lister.videos.list(limit=2, order="asc")
        assert [v.id for v in first.data] == made[:2] and first.has_more is True
        assert first.last_id == made[1]
        assert first.model_dump()["first_id"] == made[0]
        second = lister.videos.list(limit=2, order="asc", after=made[1])
        assert [v.id for v in second.data] == made[2:] and second.has_more is False
        newest = lister.videos.list()  # default: newest first
        assert [v.id for v in newest.data] == made[::-1] and newest.has_more is False
        # The client's own auto-pagination follows last_id while has_more.
        assert [v.id for v in lister.videos.list(limit=1, order="asc")] == made
        assert all(v.object == "video" and v.model == "sd/clip" for v in newest.data)
        with pytest.raises(openai.NotFoundError) as caught:
            lister.videos.retrieve(image.json()["id"])
        assert error_of(caught.value)["code"] == "job_not_found"
        with pytest.raises(openai.NotFoundError) as caught:
            lister.videos.list(after=image.json()["id"])
        assert error_of(caught.value)["param"] == "after"
        with pytest.raises(openai.BadRequestError) as bad:
            lister.videos.list(limit=101)
        assert error_of(bad.value)["param"] == "limit"
    finally:
        for video_id in made:
            wait_video(lister, video_id)
        httpx.delete(f"{gateway.url}/jobs/{image.json()['id']}", headers=headers, timeout=30)
        wait_done(gateway, headers, image.json()["id"])


def test_delete_cancels_a_running_video_and_not_a_finished_one(client: OpenAI) -> None:
    created = client.videos.create(model="sd/clip", prompt="long", seconds="8", size="128x128")
    deadline = time.monotonic() + 60
    while (video := client.videos.retrieve(created.id)).progress == 0:
        assert time.monotonic() < deadline and video.status != "completed", video
        time.sleep(0.05)
    assert video.status == "in_progress"
    with pytest.raises(openai.ConflictError) as early:
        client.videos.download_content(created.id)
    assert error_of(early.value)["code"] == "not_complete"

    deleted = client.videos.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "video.deleted", True)
    video, _ = wait_video(client, created.id)
    assert video.status == "failed" and video.error is not None
    assert video.error.code == "cancelled" and 0 < video.progress < 100, video
    assert client.videos.delete(created.id).deleted is False  # it has ended: nothing to stop
    with pytest.raises(openai.ConflictError):
        client.videos.download_content(created.id)

    done = client.videos.create(model="sd/clip", prompt="short", seconds="1", size="64x64")
    assert wait_video(client, done.id)[0].status == "completed"
    assert client.videos.delete(done.id).deleted is False  # a finished video stays
    assert client.videos.download_content(done.id).content[4:8] == b"ftyp"


def test_a_queued_video_deleted_never_runs(client: OpenAI) -> None:
    running = client.videos.create(model="sd/clip", prompt="a", seconds="4", size="128x128")
    queued = client.videos.create(model="sd/clip", prompt="b", seconds="1", size="64x64")
    assert client.videos.retrieve(queued.id).status == "queued"  # one slot, taken by the first
    assert client.videos.delete(queued.id).deleted is True
    video = client.videos.retrieve(queued.id)
    assert video.status == "failed" and video.progress == 0
    assert video.error is not None and video.error.code == "cancelled"
    assert wait_video(client, running.id)[0].status == "completed"


def test_another_customers_video_is_not_found(client: OpenAI, gateway: GatewayProcess) -> None:
    mine = client.videos.create(model="sd/clip", prompt="mine", seconds="1", size="64x64")
    other = client_of(gateway, "oscar")
    try:
        for call in (other.videos.retrieve, other.videos.download_content, other.videos.delete):
            with pytest.raises(openai.NotFoundError) as caught:
                call(mine.id)
            assert error_of(caught.value)["code"] == "job_not_found"
        assert mine.id not in [v.id for v in other.videos.list().data]
        with pytest.raises(openai.NotFoundError):
            other.videos.list(after=mine.id)
    finally:
        assert wait_video(client, mine.id)[0].status == "completed"  # not cancelled by oscar


@pytest.mark.parametrize(
    ("fields", "status", "param", "code", "says"),
    [
        ({"size": "1280x720"}, 400, "size", "size_not_offered", "takes sides 64–256"),
        ({"size": "big"}, 400, "size", "invalid_request", "size"),
        ({"seconds": "12"}, 400, "seconds", "invalid_request", "whole seconds 1–10"),
        ({"seconds": "0"}, 400, "seconds", "invalid_request", "not offered"),
        ({"extra_body": {"steps": 2}}, 400, "steps", "invalid_request", "Extra inputs"),
        ({"model": "sd/nope"}, 404, "model", "model_not_found", "no video model sd/nope"),
        ({"model": "sd/tiny"}, 404, "model", "model_not_found", "no video model sd/tiny"),
        ({"model": None}, 400, "model", "invalid_request", "model: Field required"),
        (
            {"input_reference": ("in.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "image/png")},
            404, "model", "model_not_found", "does not do task 'i2v'",
        ),
        (
            {"input_reference": ("notes.txt", b"not an image", "text/plain")},
            400, "input_reference", "invalid_request", "not a PNG, JPEG or WebP",
        ),
    ],
)  # fmt: skip
def test_refusals_are_openai_errors(
    client: OpenAI, fields: dict[str, Any], status: int, param: str, code: str, says: str
) -> None:
    arguments: dict[str, Any] = {"model": "sd/clip", "prompt": "p", "size": "64x64", **fields}
    if arguments["model"] is None:
        del arguments["model"]
    with pytest.raises(openai.APIStatusError) as caught:
        client.videos.create(**arguments)
    assert caught.value.status_code == status
    error = error_of(caught.value)
    assert error["param"] == param and error["code"] == code and says in error["message"], error
    assert error["type"] == "invalid_request_error"


def test_reference_objects_in_json_and_form_fields(client: OpenAI, gateway: GatewayProcess) -> None:
    """OpenAI's reference object (``image_url``; the openai client sends only files): i2v,
    which this model does not do; ``file_id`` names a Files API Render has not."""
    headers = bearer(client.api_key)
    url = gateway.url + "/v1/videos"
    png = "data:image/png;base64,iVBORw0KGgo="
    cases: list[tuple[dict[str, Any], int, str, str]] = [
        ({"json": {"input_reference": {"image_url": png}}}, 404, "model", "'i2v'"),
        ({"json": {"input_reference": {"file_id": "file_1"}}}, 400, "input_reference",
         "no Files API"),
        ({"form": {"input_reference[image_url]": png}}, 404, "model", "'i2v'"),
        ({"form": {"input_reference[file_id]": "file_1"}}, 400, "input_reference",
         "no Files API"),
        ({"json": {"seconds": "4", "seed": "7"}}, 400, "seed", "an integer"),
        ({"json": {"seconds": True}}, 400, "seconds", "not offered"),
    ]  # fmt: skip
    for send, status, param, says in cases:
        if "json" in send:
            send = {"json": {"model": "sd/clip", "prompt": "p", **send["json"]}}
        else:  # multipart text parts (no file name), as a form sends them
            form = {"model": "sd/clip", "prompt": "p", **send["form"]}
            send = {"files": {name: (None, value) for name, value in form.items()}}
        answer = httpx.post(url, headers=headers, timeout=30, **send)
        assert answer.status_code == status, (send, answer.text)
        error = answer.json()["error"]
        assert error["param"] == param and says in error["message"], (send, error)


def test_variant_other_than_video_is_refused(client: OpenAI) -> None:
    done = client.videos.create(model="sd/clip", prompt="v", seconds="1", size="64x64")
    assert wait_video(client, done.id)[0].status == "completed"
    for variant in ("thumbnail", "spritesheet"):
        with pytest.raises(openai.BadRequestError) as caught:
            client.videos.download_content(done.id, variant=variant)  # type: ignore[arg-type]
        error = error_of(caught.value)
        assert error["param"] == "variant" and "only 'video'" in error["message"], error


def test_rate_limit_budget_and_auth_as_the_native_api(gateway: GatewayProcess) -> None:
    slow = client_of(gateway, "sam", "slow")
    first = slow.videos.create(model="sd/clip", prompt="a", seconds="1", size="64x64")
    with pytest.raises(openai.RateLimitError) as limited:
        slow.videos.create(model="sd/clip", prompt="a", seconds="1", size="64x64")
    assert error_of(limited.value)["type"] == "rate_limit_error"
    assert int(limited.value.response.headers["retry-after"]) > 0
    slow.videos.retrieve(first.id)  # reads are not rate-limited, as the native API's
    slow.videos.list()
    wait_video(slow, first.id)

    broke = client_of(gateway, "broke")
    with pytest.raises(openai.APIStatusError) as refused:
        broke.videos.create(model="sd/clip", prompt="a", seconds="1", size="64x64")
    assert refused.value.status_code == 402
    error = error_of(refused.value)
    assert error["type"] == "insufficient_quota" and error["code"] == "budget_exceeded"
    assert broke.videos.list().data == []

    stranger = OpenAI(base_url=gateway.url + "/v1", api_key="rk_not_a_key", max_retries=0)
    for call in (lambda: stranger.videos.list(), lambda: stranger.videos.retrieve(first.id)):
        with pytest.raises(openai.AuthenticationError) as caught:
            call()
        assert error_of(caught.value)["code"] == "invalid_api_key"


def test_idempotency_key_gives_the_same_video(client: OpenAI) -> None:
    once = {"extra_headers": {"Idempotency-Key": "video-once"}}
    first = client.videos.create(model="sd/clip", prompt="same", seconds="1", size="64x64", **once)
    again = client.videos.create(model="sd/clip", prompt="same", seconds="1", size="64x64", **once)
    assert again.id == first.id
    with pytest.raises(openai.ConflictError) as caught:
        client.videos.create(model="sd/clip", prompt="other", seconds="1", size="64x64", **once)
    assert error_of(caught.value)["code"] == "idempotency_conflict"
    wait_video(client, first.id)
