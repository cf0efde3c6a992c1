"""A worker started from a TOML config: two models (image and video), two slots, remote images."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import orjson
import pytest
from aiohttp import web
from PIL import Image

from support.processes import (
    CLI,
    OFFLINE_ENV,
    WorkerProcess,
    free_port,
    start_worker,
    stop_worker,
)
from support.worker_api import generated_outputs


@pytest.fixture(scope="module")
def configured(
    demo_model_dir: Path, video_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    config = f"""
[worker]
cpu_threads = 1

[worker.remote_images]
allow_http = true
allow_private_addresses = true
max_bytes = 100000
timeout_seconds = 2

[worker.models.pair]
path = "{demo_model_dir}"
max_concurrency = 2

[worker.models.clip]
path = "{video_model_dir}"
fps = 4
"""
    process = start_worker(tmp_path_factory.mktemp("configured"), [], config=config)
    yield process
    stop_worker(process)


def _generate(worker: WorkerProcess, model: str, request: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{worker.url}/v2/models/{model}/generate", json={"request": request}, timeout=60
    )


def test_text_to_video_returns_mp4_with_frames_for_duration(configured: WorkerProcess) -> None:
    response = _generate(configured, "clip", {"task": "t2v", "prompt": "waves", "duration": 1.5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "clip" and body["model_version"] == "1" and body["id"]
    assert body["parameters"]["content_type"] == "video/mp4"
    assert isinstance(body["video"], str)  # one element: the value itself, as Triton answers
    mp4 = generated_outputs(body, "video")[0]
    assert mp4[4:8] == b"ftyp"
    with av.open(io.BytesIO(mp4)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 6  # 1.5 s at the configured 4 fps
    assert (frames[0].width, frames[0].height) == (64, 64)


def test_video_model_refuses_image_tasks(configured: WorkerProcess) -> None:
    response = _generate(configured, "clip", {"task": "t2i", "prompt": "x"})
    assert response.status_code == 400
    assert "cannot do task 't2i'" in response.json()["message"]


def test_two_slots_run_together_and_a_third_is_refused(configured: WorkerProcess) -> None:
    started = [threading.Event(), threading.Event()]
    results: list[list[str]] = [[], []]

    def stream(index: int) -> None:
        # Long enough that neither run can end before the third request, on a loaded machine
        # too (300 steps at 64 px did once); both are cancelled at the end.
        request = {"prompt": "long", "steps": 500, "width": 512, "height": 512}
        body = {"request": request, "id": f"req_pair{index}"}
        url = f"{configured.url}/v2/models/pair/generate_stream"
        with httpx.stream("POST", url, json=body, timeout=60) as response:
            for line in response.iter_lines():
                if line.startswith("event:"):
                    results[index].append(line[6:].strip())
                    started[index].set()

    threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in (0, 1)]
    for thread in threads:
        thread.start()
    try:
        assert all(event.wait(60) for event in started)
        third = _generate(configured, "pair", {"prompt": "third"})
        assert third.status_code == 503 and third.headers["retry-after"]
    finally:
        for index in (0, 1):
            httpx.delete(f"{configured.url}/v2/models/pair/requests/req_pair{index}")
        for thread in threads:
            thread.join(30)
    assert [r[-1] for r in results] == ["cancelled", "cancelled"]


@pytest.fixture
async def image_server() -> AsyncIterator[str]:
    """A real HTTP server on 127.0.0.1 serving reference images."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(buffer, format="PNG")
    png = buffer.getvalue()

    async def image(_: web.Request) -> web.Response:
        return web.Response(body=png, content_type="image/png")

    async def huge(_: web.Request) -> web.Response:
        return web.Response(body=b"\0" * 200_000, content_type="image/png")

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(body=png)

    app = web.Application()
    app.add_routes(
        [web.get("/a.png", image), web.get("/huge.png", huge), web.get("/slow.png", slow)]
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_remote_reference_images_are_fetched_with_limits(
    configured: WorkerProcess, image_server: str
) -> None:
    async with httpx.AsyncClient(timeout=30) as client:

        async def i2i(url: str) -> httpx.Response:
            request = {"task": "i2i", "prompt": "x", "image": url, "strength": 0.5}
            return await client.post(
                f"{configured.url}/v2/models/pair/generate", json={"request": request}
            )

        ok = await i2i(image_server + "/a.png")
        assert ok.status_code == 200, ok.text
        png = generated_outputs(orjson.loads(ok.content), "images")[0]
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        too_big = await i2i(image_server + "/huge.png")
        assert too_big.status_code == 400 and "larger than 100000" in too_big.json()["message"]
        slow = await i2i(image_server + "/slow.png")
        assert slow.status_code == 400 and "longer than" in slow.json()["message"]
        missing = await i2i(image_server + "/missing.png")
        assert missing.status_code == 400 and "404" in missing.json()["message"]


def test_unusable_device_fails_start_up(demo_model_dir: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *CLI,
            "worker",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path),
            "--device",
            "cuda:0",
            "--model",
            f"demo={demo_model_dir}",
        ],
        env={**os.environ, **OFFLINE_ENV, "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert b"torch sees no CUDA device" in result.stdout + result.stderr


def test_broken_model_directory_is_reported_not_ready(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text('{"_class_name": "NoSuchPipeline"}')
    worker = subprocess.Popen(
        [
            *CLI,
            "worker",
            "--port",
            str(port := free_port()),
            "--data-dir",
            str(tmp_path),
            "--model",
            f"broken={broken}",
        ],
        env={**os.environ, **OFFLINE_ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                response = httpx.get(url + "/v2/health/ready", timeout=1)
                body = response.json()
                if body["models"]["broken"] != "loading":
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert body["models"]["broken"] == "failed" and body["ready"] is False
        model = httpx.get(url + "/v2/models/broken")
        assert model.status_code == 503 and "failed" in model.json()["message"]
    finally:
        worker.terminate()
        worker.wait(15)
