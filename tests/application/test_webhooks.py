"""Webhook signing and delivery, against a real aiohttp receiver on 127.0.0.1.

Backoff never really waits: the sender gets a fake sleep that records each delay and moves a
fake clock forward by it, so every retry carries a later ``webhook-timestamp``.

The receivers are on 127.0.0.1 over http, so delivery tests opt in with ``LOCAL`` (the default
policy refuses both); the policy tests refuse before connecting and send nothing anywhere.

Senders keep their deliveries in ``memory://`` unless a test gives them a store; the durability
tests share one SQLite file between a sender that stops and one that starts after it, as a
restarted gateway does.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import random
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from render_gateway.application.webhooks import WebhookSecret, WebhookSender, sign, verify
from render_gateway.stores.webhooks import WebhookDeliveries, open_webhook_store
from render_gateway.url_policy import UrlPolicy, UrlRefused, check_url

from support.clock import FakeClock
from support.processes import free_port

# The Standard Webhooks specification's published test vector.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

NOW = 1_700_000_000.0
SECRET = WebhookSecret.generate()
JOB = {"id": "j_123", "status": "succeeded", "outputs": [{"asset_id": "a_1"}]}
LOCAL = UrlPolicy(allow_http=True, allow_private_addresses=True)


# --- receivers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    requests: list[Received] = field(default_factory=list)
    arrived: dict[str, asyncio.Event] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0

    def at(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    def arrival(self, path: str) -> asyncio.Event:
        return self.arrived.setdefault(path, asyncio.Event())


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """One server, one route per behaviour; every request is recorded before it is answered."""
    state = Receiver("")
    release = asyncio.Event()  # lets /hang answer at teardown, so the server stops at once

    def recorded(respond: Callable[[int], Awaitable[web.StreamResponse]]) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            state.requests.append(
                Received(request.path, dict(request.headers), await request.read())
            )
            state.arrival(request.path).set()
            return await respond(len(state.at(request.path)))

        return handle

    async def ok(_: int) -> web.StreamResponse:
        return web.Response(status=204)

    async def flaky(hit: int) -> web.StreamResponse:
        return web.Response(status=500 if hit <= 2 else 204)

    async def gone(_: int) -> web.StreamResponse:
        return web.Response(status=410)

    async def busy(hit: int) -> web.StreamResponse:
        if hit == 1:
            return web.Response(status=429, headers={"Retry-After": "2"})
        return web.Response(status=204)

    async def hang(_: int) -> web.StreamResponse:
        await release.wait()
        return web.Response(status=204)

    async def moved(_: int) -> web.StreamResponse:
        # To a route of this receiver that records every hit: it must never see one.
        return web.Response(status=307, headers={"Location": f"{state.url}/ok"})

    async def slow_ok(_: int) -> web.StreamResponse:
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        await asyncio.sleep(0.05)
        state.in_flight -= 1
        return web.Response(status=204)

    app = web.Application()
    behaviours = {"/ok": ok, "/flaky": flaky, "/gone": gone, "/busy": busy, "/hang": hang,
                  "/moved": moved}  # fmt: skip
    app.add_routes([web.post(path, recorded(fn)) for path, fn in behaviours.items()])
    app.add_routes([web.post("/slow_ok", recorded(slow_ok))])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}"
    yield state
    release.set()
    await runner.cleanup()


@dataclass
class FakeTime:
    """An injected clock and sleep: sleeping records the delay and advances the clock."""

    clock: FakeClock = field(default_factory=lambda: FakeClock(NOW))
    sleeps: list[float] = field(default_factory=list)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.clock.advance(seconds)
        await asyncio.sleep(0)


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


@pytest_asyncio.fixture
async def make_sender(fake: FakeTime) -> AsyncIterator[Callable[..., WebhookSender]]:
    """Senders on the fake time; ``store_url=`` opens a store for one (closed after it, as the
    gateway closes its stores after the sender)."""
    made: list[WebhookSender] = []
    stores: list[WebhookDeliveries] = []

    def make(policy: UrlPolicy = LOCAL, **options: Any) -> WebhookSender:
        defaults: dict[str, Any] = {"sleep": fake.sleep, "clock": fake.clock}
        if "store_url" in options:
            stores.append(open_webhook_store(options.pop("store_url"), fake.clock))
            options["store"] = stores[-1]
        sender = WebhookSender(SECRET, policy, **{**defaults, **options})
        made.append(sender)
        return sender

    yield make
    for sender in made:
        await sender.close()
    for store in stores:
        await store.close()


def assert_signed(request: Received, now: float) -> None:
    assert verify(SECRET, request.headers, request.body, now=now)


# --- secrets -------------------------------------------------------------------------------


def test_generated_secret_round_trips_and_is_not_in_its_repr() -> None:
    secret = WebhookSecret.generate()
    assert secret.text.startswith("whsec_")
    assert len(secret.key) == 32
    assert WebhookSecret.parse(secret.text) == secret
    assert WebhookSecret.parse(f"  {secret.text}\n") == secret
    assert secret.text.removeprefix("whsec_") not in repr(secret)
    assert WebhookSecret.generate() != secret


@pytest.mark.parametrize(
    "text",
    [
        "",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",  # no prefix
        "whsec_",
        "whsec_not base64!",
        "whsec_" + base64.b64encode(b"short").decode(),
        "whsec_" + base64.b64encode(bytes(65)).decode(),
    ],
)
def test_parse_rejects_malformed_secrets(text: str) -> None:
    with pytest.raises(ValueError, match="webhook secret"):
        WebhookSecret.parse(text)


def test_load_or_create_creates_a_0600_file_and_reads_it_back(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "webhook.key"
    created = WebhookSecret.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == created.text
    assert WebhookSecret.load_or_create(path) == created


def test_load_or_create_refuses_a_file_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "webhook.key"
    path.write_text(VECTOR_SECRET)
    os.chmod(path, 0o644)
    with pytest.raises(ValueError, match="chmod 600") as error:
        WebhookSecret.load_or_create(path)
    assert str(path) in str(error.value)
    os.chmod(path, 0o600)
    assert WebhookSecret.load_or_create(path) == WebhookSecret.parse(VECTOR_SECRET)


def test_load_or_create_refuses_a_file_without_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "webhook.key"
    path.write_text("hunter2")
    os.chmod(path, 0o600)
    with pytest.raises(ValueError, match=str(path)):
        WebhookSecret.load_or_create(path)


# --- sign and verify -----------------------------------------------------------------------


def test_sign_matches_the_standard_webhooks_test_vector() -> None:
    secret = WebhookSecret.parse(VECTOR_SECRET)
    assert sign(secret, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_sign_is_hmac_sha256_of_id_timestamp_body() -> None:
    expected = hmac.new(SECRET.key, b"msg_1.1700000000.{}", hashlib.sha256).digest()
    assert sign(SECRET, "msg_1", 1700000000, b"{}") == "v1," + base64.b64encode(expected).decode()


def vector_headers(signature: str = VECTOR_SIGNATURE) -> dict[str, str]:
    return {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": signature,
    }


def test_verify_accepts_the_vector_and_any_one_of_several_signatures() -> None:
    secret = WebhookSecret.parse(VECTOR_SECRET)
    assert verify(secret, vector_headers(), VECTOR_BODY, now=VECTOR_TIMESTAMP)
    rotated = f"v1,{base64.b64encode(bytes(32)).decode()} {VECTOR_SIGNATURE}"
    assert verify(secret, vector_headers(rotated), VECTOR_BODY, now=VECTOR_TIMESTAMP)
    # Header names are case-insensitive.
    upper = {name.title(): value for name, value in vector_headers().items()}
    assert verify(secret, upper, VECTOR_BODY, now=VECTOR_TIMESTAMP)


def test_verify_rejects_tampering_wrong_secret_and_stale_timestamps() -> None:
    secret = WebhookSecret.parse(VECTOR_SECRET)
    headers = vector_headers()
    assert not verify(secret, headers, b'{"test": 2432232315}', now=VECTOR_TIMESTAMP)
    assert not verify(WebhookSecret.generate(), headers, VECTOR_BODY, now=VECTOR_TIMESTAMP)
    assert verify(secret, headers, VECTOR_BODY, now=VECTOR_TIMESTAMP + 300)
    assert not verify(secret, headers, VECTOR_BODY, now=VECTOR_TIMESTAMP + 301)
    assert not verify(secret, headers, VECTOR_BODY, now=VECTOR_TIMESTAMP - 301)
    assert not verify(secret, headers, VECTOR_BODY, now=VECTOR_TIMESTAMP + 10, tolerance_seconds=5)


@pytest.mark.parametrize(
    "changes",
    [
        {"webhook-id": "msg_other"},
        {"webhook-timestamp": str(VECTOR_TIMESTAMP + 1)},
        {"webhook-timestamp": "soon"},
        {"webhook-signature": VECTOR_SIGNATURE.replace("v1,", "v2,")},
        {"webhook-signature": "v1,ünïcödé"},
        {"webhook-signature": ""},
    ],
)
def test_verify_rejects_altered_or_garbled_headers(changes: dict[str, str]) -> None:
    secret = WebhookSecret.parse(VECTOR_SECRET)
    assert not verify(secret, {**vector_headers(), **changes}, VECTOR_BODY, now=VECTOR_TIMESTAMP)
    for missing in vector_headers():
        headers = {k: v for k, v in vector_headers().items() if k != missing}
        assert not verify(secret, headers, VECTOR_BODY, now=VECTOR_TIMESTAMP)


@settings(max_examples=50, deadline=None)
@given(
    msg_id=st.from_regex(r"[A-Za-z0-9_]{1,40}", fullmatch=True),
    timestamp=st.integers(0, 2**40),
    body=st.binary(max_size=200),
    flip=st.integers(0, 199),
)
def test_sign_verify_round_trip_and_any_flipped_byte_fails(
    msg_id: str, timestamp: int, body: bytes, flip: int
) -> None:
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(SECRET, msg_id, timestamp, body),
    }
    assert verify(SECRET, headers, body, now=timestamp)
    if body:
        index = flip % len(body)
        tampered = body[:index] + bytes([body[index] ^ 1]) + body[index + 1 :]
        assert not verify(SECRET, headers, tampered, now=timestamp)


# --- delivery ------------------------------------------------------------------------------


async def test_delivery_is_signed_json_with_the_given_event_id(
    receiver: Receiver, make_sender: Callable[..., WebhookSender], fake: FakeTime
) -> None:
    sender = make_sender()
    accepted = sender.send(f"{receiver.url}/ok", JOB, event_id="j_123.succeeded")
    assert sender.pending == 1 and not accepted.done()  # returned at once; stored soon after
    assert await accepted  # now durable
    assert await sender.drain(5)
    [request] = receiver.at("/ok")
    assert request.body == orjson.dumps(JOB)
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["webhook-id"] == "j_123.succeeded"
    assert request.headers["webhook-timestamp"] == str(int(NOW))
    assert_signed(request, now=fake.clock())
    assert (sender.delivered, sender.failed, sender.dropped, sender.pending) == (1, 0, 0, 0)
    assert fake.sleeps == []


async def test_5xx_is_retried_with_backoff_and_the_same_id(
    receiver: Receiver, make_sender: Callable[..., WebhookSender], fake: FakeTime
) -> None:
    # base 4 s: each jittered delay is at least 2 s, so every retry has a new timestamp.
    sender = make_sender(base_delay_seconds=4.0, rng=random.Random(7))
    assert await sender.send(f"{receiver.url}/flaky", JOB)
    assert await sender.drain(5)

    replay = random.Random(7)
    expected = [ceiling / 2 + replay.uniform(0, ceiling / 2) for ceiling in (4.0, 8.0)]
    assert fake.sleeps == pytest.approx(expected)
    assert 2.0 <= fake.sleeps[0] <= 4.0 and 4.0 <= fake.sleeps[1] <= 8.0

    requests = receiver.at("/flaky")
    assert len(requests) == 3
    assert len({r.headers["webhook-id"] for r in requests}) == 1
    assert requests[0].headers["webhook-id"].startswith("msg_")
    timestamps = [int(r.headers["webhook-timestamp"]) for r in requests]
    assert timestamps == sorted(set(timestamps))
    assert len({r.headers["webhook-signature"] for r in requests}) == 3
    for request in requests:
        # Each attempt is valid when it is sent (the receiver's clock is the fake one).
        assert_signed(request, now=int(request.headers["webhook-timestamp"]))
    assert (sender.delivered, sender.failed) == (1, 0)


async def test_gives_up_after_max_attempts_with_capped_delays(
    receiver: Receiver, make_sender: Callable[..., WebhookSender], fake: FakeTime
) -> None:
    sender = make_sender(max_attempts=2, base_delay_seconds=1.0, max_delay_seconds=1.0)
    assert await sender.send(f"{receiver.url}/flaky", JOB)
    assert await sender.drain(5)
    assert len(receiver.at("/flaky")) == 2
    assert len(fake.sleeps) == 1 and 0.5 <= fake.sleeps[0] <= 1.0
    assert (sender.delivered, sender.failed) == (0, 1)


async def test_410_is_final(
    receiver: Receiver, make_sender: Callable[..., WebhookSender], fake: FakeTime
) -> None:
    sender = make_sender()
    assert await sender.send(f"{receiver.url}/gone", JOB)
    assert await sender.drain(5)
    assert len(receiver.at("/gone")) == 1
    assert fake.sleeps == []
    assert (sender.delivered, sender.failed) == (0, 1)


@pytest.mark.parametrize(("max_delay", "expected"), [(300.0, 2.0), (1.5, 1.5)])
async def test_429_honours_retry_after_capped_at_max_delay(
    receiver: Receiver,
    make_sender: Callable[..., WebhookSender],
    fake: FakeTime,
    max_delay: float,
    expected: float,
) -> None:
    sender = make_sender(base_delay_seconds=0.1, max_delay_seconds=max_delay)
    assert await sender.send(f"{receiver.url}/busy", JOB)
    assert await sender.drain(5)
    assert fake.sleeps == [expected]
    assert len(receiver.at("/busy")) == 2
    assert sender.delivered == 1


async def test_connection_errors_are_retried(
    make_sender: Callable[..., WebhookSender], fake: FakeTime
) -> None:
    sender = make_sender(max_attempts=3)
    assert await sender.send(f"http://127.0.0.1:{free_port()}/nobody", JOB)
    assert await sender.drain(5)
    assert len(fake.sleeps) == 2
    assert (sender.delivered, sender.failed) == (0, 1)


async def test_a_hanging_receiver_times_out_per_attempt(
    receiver: Receiver, make_sender: Callable[..., WebhookSender], fake: FakeTime
) -> None:
    sender = make_sender(max_attempts=2, timeout_seconds=0.2)
    assert await sender.send(f"{receiver.url}/hang", JOB)
    assert await sender.drain(5)
    assert len(receiver.at("/hang")) == 2
    assert len(fake.sleeps) == 1
    assert (sender.delivered, sender.failed) == (0, 1)


async def test_a_slow_receiver_does_not_delay_another_delivery(
    receiver: Receiver, make_sender: Callable[..., WebhookSender]
) -> None:
    sender = make_sender(timeout_seconds=30)
    assert await sender.send(f"{receiver.url}/hang", JOB)
    await asyncio.wait_for(receiver.arrival("/hang").wait(), 2)
    assert await sender.send(f"{receiver.url}/ok", JOB)
    await asyncio.wait_for(receiver.arrival("/ok").wait(), 2)
    assert not await sender.drain(0.1)  # the slow one is still out
    assert (sender.pending, sender.delivered) == (1, 1)
    await sender.close()
    assert sender.pending == 1  # handed back to the store, not lost (see the restart tests)
    assert sender.failed == 0


async def test_max_concurrent_bounds_requests_in_flight(
    receiver: Receiver, make_sender: Callable[..., WebhookSender]
) -> None:
    sender = make_sender(max_concurrent=2)
    for _ in range(6):
        assert await sender.send(f"{receiver.url}/slow_ok", JOB)
    assert await sender.drain(5)
    assert receiver.max_in_flight == 2
    assert sender.delivered == 6


async def test_send_drops_beyond_max_pending_and_after_close(
    receiver: Receiver, make_sender: Callable[..., WebhookSender]
) -> None:
    sender = make_sender(max_pending=2)
    accepted = [sender.send(f"{receiver.url}/ok", {"n": n}) for n in range(3)]
    assert (sender.dropped, sender.pending) == (1, 2)  # counted at once, before any write
    assert [await future for future in accepted] == [True, True, False]
    assert await sender.drain(5)
    assert sender.delivered == 2
    assert sorted(r.body for r in receiver.at("/ok")) == [b'{"n":0}', b'{"n":1}']
    sender.send(f"{receiver.url}/ok", JOB)  # room again once delivered; fire and forget
    assert await sender.drain(5)
    assert sender.delivered == 3  # an ignored future is still stored and delivered

    await sender.close()
    assert not await sender.send(f"{receiver.url}/ok", JOB)
    assert sender.dropped == 2


@pytest.mark.parametrize(
    "url", ["ftp://example.com/hook", "file:///etc/passwd", "example.com/hook", "http://"]
)
async def test_only_absolute_http_urls_are_accepted(url: str) -> None:
    sender = WebhookSender(SECRET, LOCAL)
    with pytest.raises(ValueError, match="http"):
        sender.send(url, JOB)
    assert sender.pending == 0


@pytest.mark.parametrize("event_id", ["", "has space", "a\r\nX-Injected: 1", "x" * 129])
async def test_event_ids_must_be_header_safe(event_id: str) -> None:
    sender = WebhookSender(SECRET)
    with pytest.raises(ValueError, match="event id"):
        sender.send("https://example.com/hook", JOB, event_id=event_id)


# --- where a webhook may go ----------------------------------------------------------------
# Every refusal below happens before a socket is opened: IP literals and schemes are refused
# from the URL, names at resolution (only 'localhost', from /etc/hosts, is resolved for real).

NON_PUBLIC_HOSTS = [
    "127.0.0.1",
    "localhost",
    "[::ffff:127.0.0.1]",
    "0.0.0.0",
    "169.254.169.254",
    "10.1.2.3",
    "[::1]",
    "[2002:7f00:1::]",  # 6to4 around 127.0.0.1
    "2130706433",  # 127.0.0.1 written as one number
]


@pytest.mark.parametrize("host", NON_PUBLIC_HOSTS)
@pytest.mark.parametrize("scheme", ["https", "http"])
async def test_non_public_hosts_are_refused_when_checked(host: str, scheme: str) -> None:
    sender = WebhookSender(SECRET, UrlPolicy(allow_http=True))
    with pytest.raises(UrlRefused, match="non-public address"):
        await sender.check(f"{scheme}://{host}:8443/hook")


async def test_http_is_refused_unless_allowed() -> None:
    with pytest.raises(UrlRefused, match="https"):
        await WebhookSender(SECRET).check("http://hooks.example.com/hook")
    with pytest.raises(UrlRefused, match="https"):
        WebhookSender(SECRET).send("http://hooks.example.com/hook", JOB)


async def test_allow_private_addresses_lets_them_through(receiver: Receiver) -> None:
    await WebhookSender(SECRET, LOCAL).check(f"{receiver.url}/ok")
    await WebhookSender(SECRET, LOCAL).check("http://localhost:1/ok")


@pytest.mark.parametrize("host", ["127.0.0.1", "[::ffff:127.0.0.1]", "0.0.0.0", "169.254.169.254"])
async def test_send_refuses_ip_literals_outright(
    host: str, make_sender: Callable[..., WebhookSender]
) -> None:
    sender = make_sender(UrlPolicy(allow_http=True))
    with pytest.raises(UrlRefused, match="non-public address"):
        sender.send(f"http://{host}:9/hook", JOB)
    assert sender.pending == 0


async def test_a_name_resolving_to_loopback_is_refused_at_delivery_and_not_retried(
    receiver: Receiver, make_sender: Callable[..., WebhookSender], fake: FakeTime
) -> None:
    # send() does not resolve: the refusal comes from the connector's resolver, before connect.
    sender = make_sender(UrlPolicy(allow_http=True))
    port = URL(receiver.url).port
    assert await sender.send(f"http://localhost:{port}/ok", JOB)
    assert await sender.drain(5)
    assert receiver.requests == []
    assert (sender.delivered, sender.failed) == (0, 1)
    assert fake.sleeps == []  # a refusal is final


@dataclass
class ScriptedDns(AbstractResolver):
    """DNS whose answers change from one lookup to the next, as a rebinding attacker's does (no
    DNS server of ours can run here, so the answers are scripted). Only the last answer is
    ever connected to in these tests, and it is 127.0.0.1."""

    answers: list[str]
    asked: list[str] = field(default_factory=list)

    async def resolve(self, host: str, port: int = 0, family: Any = 0) -> list[ResolveResult]:
        self.asked.append(host)
        address = self.answers[min(len(self.asked), len(self.answers)) - 1]
        return [ResolveResult(hostname=host, host=address, port=port, family=2, proto=6,
                              flags=0)]  # fmt: skip

    async def close(self) -> None:
        pass


async def test_a_name_that_rebinds_after_the_check_is_refused_at_delivery(
    receiver: Receiver, make_sender: Callable[..., WebhookSender]
) -> None:
    dns = ScriptedDns(["93.184.215.14", "127.0.0.1"])  # public for the check, then loopback
    sender = make_sender(UrlPolicy(allow_http=True), resolver=dns)
    url = f"http://hooks.example.com:{URL(receiver.url).port}/ok"
    await sender.check(url)  # passes: the name is public now
    assert await sender.send(url, JOB)
    assert await sender.drain(5)
    assert dns.asked == ["hooks.example.com", "hooks.example.com"]
    assert receiver.requests == []
    assert (sender.delivered, sender.failed) == (0, 1)


async def test_the_scripted_dns_is_what_delivery_connects_to(
    receiver: Receiver, make_sender: Callable[..., WebhookSender]
) -> None:
    # The control for the test above: allowed, the same kind of name reaches the receiver.
    dns = ScriptedDns(["127.0.0.1"])
    sender = make_sender(LOCAL, resolver=dns)
    assert await sender.send(f"http://hooks.example.com:{URL(receiver.url).port}/ok", JOB)
    assert await sender.drain(5)
    assert len(receiver.at("/ok")) == 1 and sender.delivered == 1


async def test_redirects_are_not_followed(
    receiver: Receiver, make_sender: Callable[..., WebhookSender], fake: FakeTime
) -> None:
    sender = make_sender()
    assert await sender.send(f"{receiver.url}/moved", JOB)
    assert await sender.drain(5)
    assert len(receiver.at("/moved")) == 1
    assert receiver.at("/ok") == []
    assert (sender.delivered, sender.failed) == (0, 1)
    assert fake.sleeps == []


async def test_allowed_hosts_refuse_every_other_host_before_any_lookup() -> None:
    class NoLookups(AbstractResolver):
        async def resolve(self, *args: object, **kwargs: object) -> list[ResolveResult]:
            raise AssertionError("an unlisted host must be refused before DNS")

        async def close(self) -> None:
            pass

    policy = UrlPolicy(allowed_hosts=("hooks.example.com", ".corp.example"))
    for url in ("https://evil.example.net/h", "https://example.com/h", "https://xcorp.example/h"):
        with pytest.raises(UrlRefused, match="allowed hosts"):
            await check_url(url, policy, NoLookups())
    assert policy.host_listed("hooks.example.com") and policy.host_listed("a.corp.example")
    assert policy.host_listed("HOOKS.example.com.")


# --- durability: deliveries live in the store, not in the sender -----------------------------


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path / 'webhooks.db'}"


async def _pending_in(store_url: str) -> int:
    store = open_webhook_store(store_url)
    try:
        return await store.pending()
    finally:
        await store.close()


async def test_an_awaited_send_returns_once_the_delivery_is_durable(
    receiver: Receiver, make_sender: Callable[..., WebhookSender], store_url: str
) -> None:
    sender = make_sender(store_url=store_url, timeout_seconds=30)
    assert await sender.send(f"{receiver.url}/hang", JOB, event_id="j_1.complete")
    # Another connection to the file sees it: it is on disk, not in this sender's memory.
    assert await _pending_in(store_url) == 1
    await asyncio.wait_for(receiver.arrival("/hang").wait(), 2)


async def test_close_hands_an_unfinished_delivery_to_the_next_start(
    receiver: Receiver, make_sender: Callable[..., WebhookSender], store_url: str
) -> None:
    first = make_sender(store_url=store_url, timeout_seconds=30)
    assert await first.send(f"{receiver.url}/hang", JOB, event_id="j_1.complete")
    await asyncio.wait_for(receiver.arrival("/hang").wait(), 2)
    await first.close()  # mid-attempt: cancelled, and due again at once (not after the lease)
    receiver.arrival("/hang").clear()

    second = make_sender(store_url=store_url, timeout_seconds=30)
    await second.start()
    assert second.pending == 1
    await asyncio.wait_for(receiver.arrival("/hang").wait(), 2)
    assert len(receiver.at("/hang")) == 2
    assert {r.headers["webhook-id"] for r in receiver.at("/hang")} == {"j_1.complete"}
    assert first.delivered == second.delivered == 0


@pytest.mark.parametrize(
    ("max_attempts", "requests", "delivered"),
    [(3, 3, True), (2, 2, False)],  # the attempt made before the restart counts towards the limit
)
async def test_a_restart_resumes_retries_where_they_stopped(
    receiver: Receiver,
    make_sender: Callable[..., WebhookSender],
    fake: FakeTime,
    store_url: str,
    max_attempts: int,
    requests: int,
    delivered: bool,
) -> None:
    backoffs: list[float] = []
    backing_off = asyncio.Event()

    async def never(seconds: float) -> None:  # the first process dies during its first backoff
        backoffs.append(seconds)
        backing_off.set()
        await asyncio.Event().wait()

    first = make_sender(store_url=store_url, sleep=never)
    assert await first.send(f"{receiver.url}/flaky", JOB, event_id="j_1.complete")
    await asyncio.wait_for(backing_off.wait(), 5)  # attempt 1 got a 500; its retry is stored
    await first.close()
    assert len(receiver.at("/flaky")) == 1
    fake.clock.advance(backoffs[0])  # the retry is due when the next process starts

    second = make_sender(store_url=store_url, max_attempts=max_attempts)
    await second.start()
    assert await second.drain(5)
    hits = receiver.at("/flaky")
    assert len(hits) == requests
    assert {r.headers["webhook-id"] for r in hits} == {"j_1.complete"}
    for hit in hits:
        assert_signed(hit, now=int(hit.headers["webhook-timestamp"]))
    assert (second.delivered, second.failed) == (int(delivered), int(not delivered))
    assert len(fake.sleeps) == requests - 2  # only the second process's own backoffs
    assert await _pending_in(store_url) == 0


async def test_an_event_is_sent_once_however_often_it_is_sent(
    receiver: Receiver, make_sender: Callable[..., WebhookSender], store_url: str
) -> None:
    url = f"{receiver.url}/ok"
    first = make_sender(store_url=store_url)
    assert await first.send(url, JOB, event_id="j_1.complete")
    assert await first.send(url, JOB, event_id="j_1.complete")  # pending: already there
    assert await first.drain(5)
    assert await first.send(url, JOB, event_id="j_1.complete")  # finished: remembered
    assert await first.drain(5)
    await first.close()
    second = make_sender(store_url=store_url)  # a restart remembers it too
    assert await second.send(url, JOB, event_id="j_1.complete")
    assert await second.drain(5)
    assert len(receiver.at("/ok")) == 1
    assert (first.delivered, second.delivered, first.dropped, second.dropped) == (1, 0, 0, 0)


async def test_two_senders_sharing_a_store_deliver_each_event_once(
    receiver: Receiver, make_sender: Callable[..., WebhookSender], store_url: str
) -> None:
    # Two replicas: one takes the sends, both claim from the shared file (the other by polling).
    taking = make_sender(store_url=store_url, max_concurrent=2, poll_seconds=0.02)
    helping = make_sender(store_url=store_url, max_concurrent=2, poll_seconds=0.02)
    await helping.start()
    ids = [f"j_{n}.complete" for n in range(12)]
    for event_id in ids:
        assert await taking.send(f"{receiver.url}/slow_ok", JOB, event_id=event_id)
    assert await taking.drain(10)
    assert await helping.drain(10)
    assert sorted(r.headers["webhook-id"] for r in receiver.at("/slow_ok")) == sorted(ids)
    assert taking.delivered + helping.delivered == len(ids)
    assert await _pending_in(store_url) == 0


async def test_start_fails_when_the_store_cannot_be_opened(
    make_sender: Callable[..., WebhookSender], tmp_path: Path
) -> None:
    (tmp_path / "a-file").write_text("")
    sender = make_sender(store_url=f"sqlite://{tmp_path / 'a-file' / 'w.db'}")
    with pytest.raises(OSError):
        await sender.start()


async def test_a_store_that_refuses_the_write_is_a_drop(
    receiver: Receiver, make_sender: Callable[..., WebhookSender]
) -> None:
    store = open_webhook_store("memory://")
    await store.close()  # every operation now raises
    sender = make_sender(store=store)
    accepted = [sender.send(f"{receiver.url}/ok", JOB) for _ in range(2)]  # at once
    assert [await future for future in accepted] == [False, False]  # the writes failed
    assert sender.dropped == 2
    assert not await sender.drain(0.1)  # a store that cannot be read is never "nothing left"
    assert receiver.requests == [] and sender.pending == 0
