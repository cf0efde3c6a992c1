"""render_gateway.client against a real gateway process and a real worker: every method, with
the blocking client and the asyncio one (the same tests, parametrized), the event stream's
resume after a real dropped connection, retries of a real 429, and the typed errors."""

from __future__ import annotations

import inspect
import io
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import httpx
import orjson
import pytest
from PIL import Image

from render_gateway.client import (
    AsyncRenderClient,
    AuthenticationError,
    ConflictError,
    InvalidRequestError,
    JobEvent,
    NotFoundError,
    ProofVerificationError,
    RateLimitError,
    RenderClient,
    RetryPolicy,
    WaitTimeout,
    WebhookVerificationError,
    verify_proof,
    verify_webhook,
)

from support.dropping_proxy import DroppingProxy
from support.gateway import ONE_WORKER_CONFIG, GatewayProcess, start_gateway, stop_gateway
from support.processes import WorkerProcess
from support.worker_api import wait_idle

T = TypeVar("T")

# "tiny": one request, then one more per second — a 429 with Retry-After: 1 on the second.
CONFIG = (
    ONE_WORKER_CONFIG
    + """
[gateway.plans.default]
rate_capacity = 1000
rate_refill_per_second = 100

[gateway.plans.admin]
rate_capacity = 1000
rate_refill_per_second = 100
admin = true

[gateway.plans.tiny]
rate_capacity = 1
rate_refill_per_second = 1

[gateway.audit]
batch_records = 1
batch_seconds = 0.3

[gateway.webhooks]
allow_http = true
allow_private_addresses = true
"""
)
SMALL = {"width": 64, "height": 64, "steps": 2}
Client = RenderClient | AsyncRenderClient


@pytest.fixture(scope="module")
def gateway(
    worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    process = start_gateway(tmp_path_factory.mktemp("client"), CONFIG.format(worker=worker.url))
    yield process
    stop_gateway(process)


@pytest.fixture(scope="module")
def alice_key(gateway: GatewayProcess) -> str:
    return gateway.new_key("alice")


@pytest.fixture(autouse=True)
def _idle_after(worker: WorkerProcess) -> Iterator[None]:
    yield
    wait_idle(worker)


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_client(kind: str, url: str, key: str | None, **options: Any) -> Client:
    if kind == "sync":
        return RenderClient(url, key, **options)
    return AsyncRenderClient(url, key, **options)


@pytest.fixture
async def alice(kind: str, gateway: GatewayProcess, alice_key: str) -> AsyncIterator[Client]:
    client = make_client(kind, gateway.url, alice_key)
    yield client
    await close(client)


async def close(client: Client) -> None:
    if isinstance(client, AsyncRenderClient):
        await client.aclose()
    else:
        client.close()


async def call(result: T | Awaitable[T]) -> T:
    """One method's result, from either client."""
    if inspect.isawaitable(result):
        return await result
    return result


async def collect(events: Iterator[JobEvent] | AsyncIterator[JobEvent]) -> list[JobEvent]:
    if isinstance(events, AsyncIterator):
        return [event async for event in events]
    return list(events)


async def test_generate_returns_the_bytes_and_what_the_headers_say(alice: Client) -> None:
    generated = await call(
        alice.generate("image", "sd", "tiny", "t2i", prompt="a fox", seed=7, **SMALL)
    )
    Image.open(io.BytesIO(generated.data)).verify()
    assert generated.content_type == "image/png" and generated.seed == 7
    assert generated.request_id.startswith("req_")
    assert generated.gpu_seconds is not None and generated.gpu_seconds > 0
    assert generated.metered is True  # the reference worker measures its GPU-seconds
    assert generated.asset_url is not None
    # The signed asset URL is absolute and readable without credentials.
    assert httpx.get(generated.asset_url).content == generated.data


async def test_submit_status_wait_events_output(alice: Client) -> None:
    job = await call(alice.submit("image", "sd", "tiny", "t2i", prompt="a fox", seed=3, **SMALL))
    assert job.id.startswith("j_") and job.queued is not None and job.queued.status == "queued"
    assert (await call(job.status())).id == job.id
    done = await call(job.wait(timeout=60))
    assert done.status == "complete" and done.progress == 1.0 and done.seed == 3
    assert done.usage is not None and done.usage["gpu_seconds"] > 0
    events = await collect(job.events())
    assert [e.event for e in events] == ["started", "progress", "progress", "complete"]
    assert [e.id for e in events] == [1, 2, 3, 4]
    assert events[-1].data["output"] == done.output
    data = await call(job.output())
    Image.open(io.BytesIO(data)).verify()
    # Resuming by hand: only what came after the id given.
    assert [e.id for e in await collect(job.events(last_event_id=2))] == [3, 4]


async def test_events_resume_after_a_dropped_connection(
    kind: str, gateway: GatewayProcess, alice_key: str, alice: Client
) -> None:
    proxy = DroppingProxy(("127.0.0.1", int(gateway.url.rsplit(":", 1)[1])))
    through_proxy = make_client(kind, proxy.url, alice_key)
    try:
        job = await call(
            alice.submit("image", "sd", "tiny", "t2i", prompt="a fox", **{**SMALL, "steps": 4})
        )
        events = await collect(through_proxy.events(job.id))
    finally:
        await close(through_proxy)
        proxy.close()
    assert proxy.cuts == 1, proxy.heads  # the first stream really broke after one event
    assert len(proxy.heads) == 2 and "last-event-id: 1\r\n" in proxy.heads[1].lower()
    numbered = [e.id for e in events if e.id is not None]
    assert numbered == [1, 2, 3, 4, 5, 6]  # no duplicate, no gap
    assert [e.event for e in events if e.id is not None] == ["started"] + ["progress"] * 4 + [
        "complete"
    ]


async def test_cancel_and_wait_timeout(alice: Client) -> None:
    job = await call(
        alice.submit("image", "sd", "tiny", "t2i", prompt="a fox", **{**SMALL, "steps": 400})
    )
    with pytest.raises(WaitTimeout):
        await call(job.wait(timeout=0))
    assert await call(job.cancel()) == "cancelled"
    ended = await call(job.wait(timeout=60))
    assert ended.status == "cancelled"
    with pytest.raises(ConflictError) as finished:
        await call(job.cancel())
    assert finished.value.code == "job_finished" and finished.value.status == 409
    with pytest.raises(ConflictError) as incomplete:
        await call(job.output())
    assert incomplete.value.code == "not_complete"
    events = await collect(job.events())
    assert events[-1].event == "error" and events[-1].data["code"] == "cancelled"


async def test_usage(alice: Client) -> None:
    await call(alice.generate("image", "sd", "tiny", "t2i", prompt="a fox", **SMALL))
    report = await call(alice.usage(group_by="model"))
    assert report["customer_id"] == "alice"
    assert report["totals"]["requests"] + report["pending_records"] >= 1
    with pytest.raises(InvalidRequestError) as refused:
        await call(alice.usage(group_by="colour"))
    assert refused.value.status in (400, 422) and refused.value.request_id


async def test_proof_verifies_offline(gateway: GatewayProcess, alice: Client) -> None:
    generated = await call(alice.generate("image", "sd", "tiny", "t2i", prompt="a fox", **SMALL))
    deadline = time.monotonic() + 30
    while True:  # the proof exists once its batch is sealed (batch_seconds)
        try:
            bundle = await call(alice.proof(generated.request_id))
            break
        except NotFoundError as exc:
            assert exc.code == "proof_not_found"
            assert time.monotonic() < deadline, "the request was never sealed"
            time.sleep(0.1)
    published = gateway.cli("audit", "pubkey").strip()
    verified = verify_proof(bundle, public_key=published)
    assert verified.row["request_id"] == generated.request_id
    assert verified.row["customer_id"] == "alice" and verified.checkpoint.size >= 1
    tampered = {**bundle, "row": bundle["row"].replace('"alice"', '"mallory"')}
    with pytest.raises(ProofVerificationError):
        verify_proof(tampered, public_key=published)


class _Receiver(BaseHTTPRequestHandler):
    deliveries: ClassVar[list[tuple[dict[str, str], bytes]]] = []
    arrived = threading.Event()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).deliveries.append((dict(self.headers.items()), body))
        self.send_response(204)
        self.end_headers()
        type(self).arrived.set()

    def log_message(self, format: str, *args: Any) -> None:
        pass


async def test_verify_webhook_of_a_real_delivery(gateway: GatewayProcess, alice: Client) -> None:
    _Receiver.deliveries, _Receiver.arrived = [], threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hook = f"http://127.0.0.1:{server.server_address[1]}/hook"
        job = await call(
            alice.submit("image", "sd", "tiny", "t2i", prompt="a fox", webhook=hook, **SMALL)
        )
        assert _Receiver.arrived.wait(60), "no webhook arrived"
    finally:
        server.shutdown()
        server.server_close()
    headers, body = _Receiver.deliveries[0]
    secret = (gateway.data_dir / "webhook_secret").read_text().strip()
    payload = verify_webhook(headers, body, secret)
    assert payload["id"] == job.id and payload["status"] == "complete"
    with pytest.raises(WebhookVerificationError):
        verify_webhook(headers, body.replace(b"complete", b"cancelled"), secret)
    with pytest.raises(WebhookVerificationError):  # a replay, ten minutes late
        verify_webhook(headers, body, secret, now=int(headers["webhook-timestamp"]) + 600)
    other = "whsec_" + "A" * 43 + "="
    with pytest.raises(WebhookVerificationError):
        verify_webhook(headers, body, other)


async def test_a_429_is_retried_after_its_retry_after(kind: str, gateway: GatewayProcess) -> None:
    key = gateway.new_key("tina", plan="tiny")
    statuses: list[int] = []
    if kind == "sync":
        http: httpx.Client | httpx.AsyncClient = httpx.Client(
            event_hooks={"response": [lambda r: statuses.append(r.status_code)]}
        )
    else:

        async def record(response: httpx.Response) -> None:
            statuses.append(response.status_code)

        http = httpx.AsyncClient(event_hooks={"response": [record]})
    patient = make_client(kind, gateway.url, key, http=http)
    impatient = make_client(kind, gateway.url, key, retry=RetryPolicy(max_retries=0))
    try:
        await call(patient.generate("image", "sd", "tiny", "t2i", prompt="a fox", **SMALL))
        with pytest.raises(RateLimitError) as limited:
            await call(impatient.generate("image", "sd", "tiny", "t2i", prompt="a fox", **SMALL))
        assert limited.value.status == 429 and limited.value.code == "rate_limited"
        assert limited.value.retry_after is not None and 0 < limited.value.retry_after <= 2
        statuses.clear()
        started = time.monotonic()
        generated = await call(
            patient.generate("image", "sd", "tiny", "t2i", prompt="a fox", **SMALL)
        )
    finally:
        await close(patient)
        await close(impatient)
    assert generated.data and statuses[0] == 429 and statuses[-1] == 200
    assert time.monotonic() - started >= 0.5  # it waited as Retry-After asked


async def test_upload_then_use_it_as_an_input(
    kind: str, gateway: GatewayProcess, alice: Client, tmp_path: Path
) -> None:
    """``upload`` (bytes, or a file's path) gives an asset of the caller's, readable by its
    signed URL and usable as ``image=`` by URL or by path; another customer cannot use it."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buffer, "PNG")
    png = buffer.getvalue()
    asset = await call(alice.upload(png))
    assert asset.id.startswith("a_") and (asset.content_type, asset.size) == ("image/png", len(png))
    assert asset.request_id.startswith("req_")
    assert httpx.get(asset.url).content == png  # absolute, signed: no credentials needed
    generated = await call(
        alice.generate("image", "sd", "tiny", "i2i", prompt="a fox", image=asset.url, steps=2)
    )
    Image.open(io.BytesIO(generated.data)).verify()
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(jpeg, "JPEG")
    picture = tmp_path / "picture.jpg"
    picture.write_bytes(jpeg.getvalue())
    from_file = await call(alice.upload(picture))
    assert from_file.content_type == "image/jpeg" and from_file.size == len(jpeg.getvalue())
    job = await call(alice.submit("image", "sd", "tiny", "i2i", prompt="a fox",
                                  image=from_file.path, steps=2))  # fmt: skip
    assert (await call(job.wait(timeout=60))).status == "complete"
    with pytest.raises(InvalidRequestError) as mislabelled:
        await call(alice.upload(png, "image/webp"))  # the gateway reads the bytes
    assert mislabelled.value.code == "upload_not_image"
    with pytest.raises(InvalidRequestError):
        await call(alice.upload(b"just text"))  # no type to declare: refused before sending
    bob = make_client(kind, gateway.url, gateway.new_key("bob-uploads"))
    try:
        with pytest.raises(InvalidRequestError) as refused:
            await call(bob.submit("image", "sd", "tiny", "i2i", prompt="a fox", image=asset.path))
        assert refused.value.details["asset_id"] == asset.id
        with pytest.raises(AuthenticationError):
            await call(make_client(kind, gateway.url, None).upload(png))
    finally:
        await close(bob)


async def test_errors_are_typed_from_the_gateway_body(
    kind: str, gateway: GatewayProcess, alice: Client
) -> None:
    with pytest.raises(NotFoundError) as missing:
        await call(alice.job("j_00000000000000000").status())
    assert missing.value.status == 404 and missing.value.code == "job_not_found"
    assert missing.value.request_id is not None and missing.value.request_id.startswith("req_")
    assert missing.value.message
    with pytest.raises(NotFoundError) as unknown_model:
        await call(alice.generate("image", "sd", "nope", "t2i", prompt="a fox"))
    assert unknown_model.value.code == "model_not_found" and "known" in unknown_model.value.details
    with pytest.raises(InvalidRequestError) as invalid:
        await call(alice.submit("image", "sd", "tiny", "t2i", prompt=""))
    assert invalid.value.status in (400, 422)
    stranger = make_client(kind, gateway.url, "rk_not_a_key")
    try:
        with pytest.raises(AuthenticationError) as refused:
            await call(stranger.usage())
    finally:
        await close(stranger)
    assert refused.value.status == 401 and refused.value.code
    assert orjson.dumps(refused.value.details)  # always a JSON object
