"""Owned assets with signed URLs, asset URLs as i2i/edit inputs, and the catalog checked against
the backend's metadata: a real gateway in front of a real reference worker (issue 10, items 12
and 13)."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import blake3
import httpx
import orjson
import pytest
from PIL import Image

from render_gateway.application.services import DEMO_CATALOG

from support.gateway import GatewayProcess, start_gateway, stop_gateway, wait_done
from support.processes import WorkerProcess, start_worker, stop_worker

# This worker serves the demo pipeline with sides up to 512 px, so image formats 1024,
# portrait, landscape… do not fit it; the same model is also (wrongly) configured as a video
# model, which the worker's metadata says it is not.
WORKER_CONFIG = """
[worker.models.demo]
path = "{path}"
max_side = 512
"""

# The demo catalog (DEMO_CATALOG: tasks t2i, i2i, edit; default_format 512), plus the video
# entry no backend can serve.
CONFIG = """
[gateway]
local_demo_worker = false

[gateway.webhooks]
allow_http = true
allow_private_addresses = true

[[gateway.backends]]
id = "w1"
endpoint = "{worker}"
family = "sd"
models = {{ tiny = "demo", clip = "demo" }}
capacity = 1

[[gateway.models]]
modality = "image"
family = "sd"
model = "tiny"
tasks = ["t2i", "i2i", "edit"]
default_format = "512"

[[gateway.models]]
modality = "video"
family = "sd"
model = "clip"
tasks = ["t2v"]
default_format = "480p"
"""


@pytest.fixture(scope="module")
def small_worker(
    demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    process = start_worker(
        tmp_path_factory.mktemp("small-worker"),
        [],
        config=WORKER_CONFIG.format(path=demo_model_dir),
    )
    yield process
    stop_worker(process)


@pytest.fixture(scope="module")
def gateway(
    small_worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    process = start_gateway(
        tmp_path_factory.mktemp("gateway"), CONFIG.format(worker=small_worker.url)
    )
    yield process
    stop_gateway(process)


@pytest.fixture(scope="module")
def alice(gateway: GatewayProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.new_key('alice')}"}


@pytest.fixture(scope="module")
def bob(gateway: GatewayProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {gateway.new_key('bob')}"}


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == code and body["message"] and body["request_id"].startswith("req_")
    assert "Traceback" not in response.text
    return body


def generate(
    gateway: GatewayProcess, headers: dict[str, str], task: str = "t2i", **fields: Any
) -> httpx.Response:
    query = {"format": fields.pop("format")} if "format" in fields else None
    return httpx.post(
        f"{gateway.url}/image/sd/tiny/{task}",
        json={"prompt": "a fox", "seed": 4, "steps": 2, **fields},
        params=query,
        headers=headers,
        timeout=120,
    )


def asset_id_of(url: str) -> str:
    return urlsplit(url).path.removeprefix("/assets/")


def plain_path(url: str) -> str:
    return urlsplit(url).path


def data_uri(color: tuple[int, int, int], mode: str = "RGB") -> str:
    buffer = io.BytesIO()
    Image.new(mode, (64, 64), color if mode == "RGB" else color[0]).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# ---------------------------------------------------------------------------- item 12


def test_asset_ids_are_random_and_owned(
    gateway: GatewayProcess, alice: dict[str, str], bob: dict[str, str]
) -> None:
    mine, theirs = generate(gateway, alice), generate(gateway, bob)
    assert mine.status_code == theirs.status_code == 200, mine.text + theirs.text
    assert mine.content == theirs.content  # the same prompt and seed: the same bytes...
    mine_id = asset_id_of(mine.headers["content-location"])
    theirs_id = asset_id_of(theirs.headers["content-location"])
    assert mine_id != theirs_id  # ...but not the same id, and the id is not their hash
    digest = blake3.blake3(mine.content).hexdigest()
    assert digest not in mine_id and len(mine_id) == 19 and mine_id.startswith("a_")

    path = f"{gateway.url}/assets/{mine_id}"
    assert_error(httpx.get(path), 401, "missing_credentials")
    assert_error(httpx.get(path, headers=bob), 404, "asset_not_found")  # others' look absent
    own = httpx.get(path, headers=alice)
    assert own.status_code == 200 and own.content == mine.content
    assert own.headers["cache-control"] == "private, max-age=31536000, immutable"
    assert own.headers["etag"] == f'"{digest}"'  # the hash is the ETag, never the id
    admin = httpx.get(path, headers={"Authorization": f"Bearer {gateway.admin_key}"})
    assert admin.status_code == 200 and admin.content == mine.content
    cached = httpx.get(path, headers={**alice, "If-None-Match": own.headers["etag"]})
    assert cached.status_code == 304
    assert_error(httpx.post(f"{path}/url", headers=bob), 404, "asset_not_found")


def test_signed_urls_let_anyone_read_until_they_expire(
    gateway: GatewayProcess, alice: dict[str, str]
) -> None:
    response = generate(gateway, alice, seed=9)
    signed = response.headers["content-location"]
    query = parse_qs(urlsplit(signed).query)
    assert set(query) == {"expires", "signature"}
    public = httpx.get(gateway.url + signed)  # no credentials at all
    assert public.status_code == 200 and public.content == response.content
    cache = public.headers["cache-control"]
    assert cache.startswith("public, max-age=") and cache.endswith(", immutable")
    max_age = int(cache.split("max-age=")[1].split(",")[0])
    assert 7 * 24 * 3600 - 5 <= max_age <= 7 * 24 * 3600 + 3600  # the default lifetime

    asset_id = asset_id_of(signed)
    expires, signature = query["expires"][0], query["signature"][0]
    forged = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    later = str(int(expires) + 3600)
    other = asset_id_of(generate(gateway, alice, seed=10).headers["content-location"])
    for bad in (
        f"/assets/{asset_id}?expires={expires}&signature={forged}",
        f"/assets/{asset_id}?expires={later}&signature={signature}",  # a longer life
        f"/assets/{other}?expires={expires}&signature={signature}",  # another asset
        f"/assets/{asset_id}?expires=99999999999999999999&signature={signature}",
        f"/assets/{asset_id}?signature={signature}",
    ):
        assert_error(httpx.get(gateway.url + bad), 403, "asset_url_invalid")

    minted = httpx.post(
        f"{gateway.url}/assets/{asset_id}/url", json={"expires_in": 2}, headers=alice
    )
    assert minted.status_code == 200, minted.text
    short = minted.json()
    assert short["url"].startswith(f"/assets/{asset_id}?") and short["expires_at"].endswith("Z")
    assert httpx.get(gateway.url + short["url"]).status_code == 200
    time.sleep(3.1)
    assert_error(httpx.get(gateway.url + short["url"]), 403, "asset_url_expired")
    # The owner still reads through an expired link with credentials.
    assert httpx.get(gateway.url + short["url"], headers=alice).status_code == 200
    too_long = httpx.post(
        f"{gateway.url}/assets/{asset_id}/url", json={"expires_in": 10**9}, headers=alice
    )
    assert_error(too_long, 400, "invalid_request")


def test_job_view_output_redirect_and_webhook_hand_out_signed_urls(
    gateway: GatewayProcess, alice: dict[str, str]
) -> None:
    received: list[bytes] = []
    arrived = threading.Event()

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()
            arrived.set()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hook = f"http://127.0.0.1:{server.server_address[1]}/hook"
        body = {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i",
                "prompt": "a fox", "steps": 2, "webhook": hook}  # fmt: skip
        queued = httpx.post(gateway.url + "/queue", json=body, headers=alice, timeout=30)
        assert queued.status_code == 202, queued.text
        done = wait_done(gateway, alice, queued.json()["id"])
        assert done["status"] == "complete", done
        assert arrived.wait(60), "no webhook arrived"
    finally:
        server.shutdown()
    output = done["output"]
    assert "signature=" in output and done["outputs"] == [output]
    content = httpx.get(gateway.url + output).content  # anonymous: the URL is the grant
    Image.open(io.BytesIO(content)).verify()
    hooked = orjson.loads(received[0])
    assert asset_id_of(hooked["output"]) == asset_id_of(output)
    assert httpx.get(gateway.url + hooked["output"]).content == content  # the receiver reads it
    redirect = httpx.get(f"{gateway.url}/jobs/{done['id']}/output", headers=alice)
    assert redirect.status_code == 303
    followed = httpx.get(gateway.url + redirect.headers["location"])  # without credentials
    assert followed.status_code == 200 and followed.content == content


# ---------------------------------------------------------------------------- item 13


def test_i2i_and_edit_work_on_the_demo_catalog(
    gateway: GatewayProcess, alice: dict[str, str]
) -> None:
    assert (DEMO_CATALOG.tasks, DEMO_CATALOG.default_format) == (("t2i", "i2i", "edit"), "512")
    i2i = generate(gateway, alice, "i2i", image=data_uri((200, 10, 10)), strength=0.5)
    assert i2i.status_code == 200, i2i.text  # the default format is not forwarded to i2i
    Image.open(io.BytesIO(i2i.content)).verify()
    edit = generate(
        gateway, alice, "edit", image=data_uri((200, 10, 10)), mask=data_uri((255, 0, 0), "L")
    )
    assert edit.status_code == 200, edit.text
    with Image.open(io.BytesIO(edit.content)) as picture:
        assert picture.size == (512, 512)  # edit takes the default format


def test_an_asset_url_of_this_gateway_is_an_input(
    gateway: GatewayProcess, alice: dict[str, str], bob: dict[str, str]
) -> None:
    source = generate(gateway, alice, seed=21)
    signed = source.headers["content-location"]
    path = plain_path(signed)
    # Forwarded as given, each of these would fail: the worker fetches only https and never a
    # loopback address, so a 200 means the gateway sent the bytes.
    for reference in (signed, path, gateway.url + path, gateway.url + signed):
        response = generate(gateway, alice, "i2i", image=reference, strength=0.5)
        assert response.status_code == 200, (reference, response.text)
    mask = generate(gateway, alice, seed=22).headers["content-location"]
    edit = generate(gateway, alice, "edit", image=path, mask=plain_path(mask))
    assert edit.status_code == 200, edit.text

    # Bob cannot use Alice's asset by its id, but can with the signed URL she gave him.
    refused = assert_error(generate(gateway, bob, "i2i", image=path), 400, "invalid_request")
    assert refused["details"]["field"] == "image"
    assert generate(gateway, bob, "i2i", image=signed).status_code == 200
    assert_error(generate(gateway, alice, "i2i", image="/assets/../jobs"), 400, "invalid_request")

    # The async tier: checked at submit (400 before any 202), inlined when it runs.
    body = {"modality": "image", "family": "sd", "model": "tiny", "task": "i2i",
            "prompt": "a fox", "steps": 2, "image": gateway.url + signed}  # fmt: skip
    assert_error(httpx.post(gateway.url + "/queue", json={**body, "image": path}, headers=bob),
                 400, "invalid_request")  # fmt: skip
    queued = httpx.post(gateway.url + "/queue", json=body, headers=alice, timeout=30)
    assert queued.status_code == 202, queued.text
    done = wait_done(gateway, alice, queued.json()["id"])
    assert done["status"] == "complete", done
    assert done["request"]["generation"]["image"] == path  # stored as the plain path


def test_the_catalog_offers_only_what_the_backend_serves(
    gateway: GatewayProcess, alice: dict[str, str]
) -> None:
    models = httpx.get(gateway.url + "/models").json()
    assert models["video"] == []  # the worker's demo model does no video task
    (tiny,) = models["image"]
    assert tiny["formats"] == ["512"] and tiny["default_format"] == "512"
    assert tiny["formats_by_task"] == {"t2i": ["512"], "i2i": [], "edit": ["512"]}
    assert "video/sd/clip: tasks t2v not served" in gateway.log()  # said at start

    queue = {"modality": "image", "family": "sd", "model": "tiny", "task": "t2i",
             "prompt": "a fox", "format": "1024"}  # fmt: skip
    too_big = assert_error(
        httpx.post(gateway.url + "/queue", json=queue, headers=alice), 400, "format_not_offered"
    )
    assert too_big["details"]["offered"] == ["512"]
    assert_error(generate(gateway, alice, format="portrait"), 400, "format_not_offered")
    sizeless = assert_error(
        generate(gateway, alice, "i2i", image=data_uri((1, 2, 3)), format="512"),
        400,
        "format_not_offered",
    )
    assert sizeless["details"]["offered"] == []
    video = {**queue, "modality": "video", "model": "clip", "task": "t2v", "format": "480p"}
    assert_error(httpx.post(gateway.url + "/queue", json=video, headers=alice), 404,
                 "model_not_found")  # fmt: skip
    assert generate(gateway, alice, format="512").status_code == 200
