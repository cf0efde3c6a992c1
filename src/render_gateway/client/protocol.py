"""The client's one code path, free of I/O: it builds ``httpx.Request`` objects and reads
``httpx.Response`` objects; ``sync.py`` and ``asynchronous.py`` only move them.

Why sans-IO: every rule of the API — paths, headers, retries on 429/503 with ``Retry-After``,
the error body, the sync tier's headers, polling a job, following a 303 to its asset, resuming
an event stream with ``Last-Event-ID`` — lives here once. An operation is a generator that
yields a ``Request`` (and is sent its ``Response``) or a ``Pause`` (and is sent None once the
transport slept); its return value is the result. The two transports are a dozen lines each,
so the sync and async clients cannot drift apart.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import orjson

from render_gateway.client.errors import (
    InvalidRequestError,
    RenderConnectionError,
    RenderError,
    WaitTimeout,
    error_from,
    retry_after_of,
)

T = TypeVar("T")

TERMINAL_STATUSES = frozenset({"complete", "error", "cancelled"})
TERMINAL_EVENTS = frozenset({"complete", "error"})
RETRIED_STATUSES = frozenset({429, 503})  # nothing ran: the same request may be sent again
QUEUE_OPTIONS = ("format", "backend", "priority", "webhook", "ttl", "idempotency_key")


@dataclass(frozen=True)
class Pause:
    """Sleep this long, then go on (a retry's wait, a poll's interval)."""

    seconds: float


Operation = Generator["httpx.Request | Pause", "httpx.Response | None", T]


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of 429 and 503: at most ``max_retries``, each waiting the answer's
    ``Retry-After`` (else ``backoff_seconds`` doubling), never more than ``max_wait_seconds``."""

    max_retries: int = 3
    max_wait_seconds: float = 30.0
    backoff_seconds: float = 0.5

    def delay(self, attempt: int, response: httpx.Response) -> float:
        asked = retry_after_of(response)
        wanted = asked if asked is not None else self.backoff_seconds * 2**attempt
        return min(wanted, self.max_wait_seconds)


@dataclass(frozen=True)
class Generated:
    """A sync-tier answer: the output's bytes and what the headers say about the run."""

    data: bytes
    content_type: str
    request_id: str
    asset_url: str | None  # signed, expiring; readable without credentials
    seed: int | None
    gpu_seconds: float | None
    metered: bool | None  # False: the backend measured nothing, the gateway attributed it
    duration_ms: int | None


@dataclass(frozen=True)
class UploadedAsset:
    """An upload's asset (``POST /uploads``, then the PUT of its signed URL): yours, usable at
    once as ``image=``/``mask=`` of a job (``url`` or ``path``)."""

    id: str
    url: str  # the signed, expiring GET URL, absolute: readable without credentials
    content_type: str
    size: int
    request_id: str  # the PUT's X-Request-Id

    @property
    def path(self) -> str:
        """``/assets/{id}``: the plain asset URL; as a job's input it works for its owner."""
        return f"/assets/{self.id}"


# What ``upload`` may send, read from the first bytes when no type is given (the gateway
# checks the bytes again, with Pillow).
_IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"))


def image_type_of(data: bytes) -> str | None:
    """``image/png``, ``image/jpeg`` or ``image/webp`` by the bytes' magic; None otherwise."""
    for magic, media in _IMAGE_MAGIC:
        if data.startswith(magic):
            return media
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


@dataclass(frozen=True)
class Queued:
    """``POST /queue``'s 202."""

    id: str
    status: str
    position: int | None
    eta_seconds: float | None
    request_id: str


@dataclass(frozen=True)
class JobState:
    """``GET /jobs/{id}``; ``raw`` holds every field as the gateway sent it."""

    id: str
    status: str
    progress: float | None
    position: int | None
    output: str | None
    outputs: list[str]
    seed: int | None
    error: dict[str, Any] | None
    usage: dict[str, Any] | None
    raw: dict[str, Any] = field(repr=False)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> JobState:
        return cls(
            id=body["id"], status=body["status"], progress=body.get("progress"),
            position=body.get("position"), output=body.get("output"),
            outputs=list(body.get("outputs") or []), seed=body.get("seed"),
            error=body.get("error"), usage=body.get("usage"), raw=body,
        )  # fmt: skip


@dataclass(frozen=True)
class JobEvent:
    """One Server-Sent Event of a job: ``position``, ``started``, ``progress``, ``complete`` or
    ``error``; ``id`` is None for ``position`` events (they are not numbered)."""

    event: str
    data: dict[str, Any]
    id: int | None

    @property
    def terminal(self) -> bool:
        return self.event in TERMINAL_EVENTS


class SseDecoder:
    """Lines of ``text/event-stream`` in, events out (the WHATWG rules the gateway needs:
    ``event``, ``data`` over several lines, ``id``, comments ignored)."""

    def __init__(self) -> None:
        self._event: str = "message"
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> JobEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: the gateway's pings
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> JobEvent | None:
        event, data, event_id = self._event, self._data, self._id
        self._event, self._data, self._id = "message", [], None
        if not data:
            return None
        try:
            parsed = orjson.loads("\n".join(data))
        except orjson.JSONDecodeError as exc:
            raise RenderError(f"the event stream sent data that is not JSON: {exc}") from exc
        body = parsed if isinstance(parsed, dict) else {"value": parsed}
        return JobEvent(event, body, int(event_id) if event_id and event_id.isdecimal() else None)


class EventFollower:
    """The resume policy of ``GET /jobs/{id}/events``: after a dropped connection it asks again
    with ``Last-Event-ID`` = the last id seen, so no event comes twice and none is missed; it
    stops after the terminal event, when the gateway closes the stream, or after
    ``max_reconnects`` drops in a row with no event between them."""

    def __init__(
        self,
        core: Protocol,
        job_id: str,
        last_event_id: int | None,
        max_reconnects: int = 5,
        reconnect_delay: float = 0.25,
    ) -> None:
        self._core, self._job_id = core, job_id
        self.last_event_id = last_event_id
        self._max_reconnects, self._delay = max_reconnects, reconnect_delay
        self._drops = 0
        self._finished = False
        self._decoder = SseDecoder()

    def next_request(self) -> httpx.Request | None:
        if self._finished:
            return None
        self._decoder = SseDecoder()  # a half-read event of a dropped stream is dropped too
        headers = {"Accept": "text/event-stream"}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = str(self.last_event_id)
        return self._core.request("GET", f"/jobs/{_segment(self._job_id)}/events", headers=headers)

    def opened(self, response: httpx.Response) -> None:
        """Raises the gateway's refusal (404, 401, …); the body must have been read."""
        if response.status_code != 200:
            self._finished = True
            raise error_from(response)

    def feed(self, line: str) -> JobEvent | None:
        event = self._decoder.feed(line)
        if event is None:
            return None
        self._drops = 0
        if event.id is not None:
            self.last_event_id = event.id
        if event.terminal:
            self._finished = True
        return event

    def ended(self) -> None:
        """The gateway closed the stream: after the terminal event, or when the caller's
        credentials stopped being valid; either way there is nothing more to ask for."""
        self._finished = True

    def dropped(self, exc: Exception) -> float:
        """The seconds to wait before asking again, or the error when it is time to give up."""
        self._drops += 1
        if self._drops > self._max_reconnects:
            self._finished = True
            raise RenderConnectionError(
                f"the event stream of {self._job_id} dropped {self._drops} times in a row: {exc}",
                code="unreachable",
            ) from exc
        return self._delay


def _segment(value: str) -> str:
    return quote(value, safe="")


def _optional_float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _optional_int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdecimal() else None


class Protocol:
    """Every call of the API as an Operation; shared by both clients."""

    def __init__(self, base_url: str, api_key: str | None, retry: RetryPolicy) -> None:
        self.base_url = httpx.URL(base_url.rstrip("/") + "/")
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.retry = retry

    def url(self, path_or_url: str) -> httpx.URL:
        """An absolute URL for a path the gateway handed out (``/assets/a_…?…``)."""
        return self.base_url.join(path_or_url)

    def request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        authenticated: bool = True,
    ) -> httpx.Request:
        return httpx.Request(
            method,
            self.url(path.lstrip("/")),
            json=json,
            params=params,
            headers={**(self._auth if authenticated else {}), **(headers or {})},
        )

    def send(self, request: httpx.Request) -> Operation[httpx.Response]:
        """One request, again after a 429 or 503 as the policy allows."""
        attempt = 0
        while True:
            response = yield request
            if response is None:
                raise TypeError("a transport must send the response of a request")
            if response.status_code not in RETRIED_STATUSES or attempt >= self.retry.max_retries:
                return response
            yield Pause(self.retry.delay(attempt, response))
            attempt += 1

    def json_call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
    ) -> Operation[dict[str, Any]]:
        """Any JSON route answering 200 with an object (the CLI's admin calls use it)."""
        return (yield from self._json(self.request(method, path, params=params, json=json)))

    def _json(self, request: httpx.Request, expected: int = 200) -> Operation[dict[str, Any]]:
        response = yield from self.send(request)
        if response.status_code != expected:
            raise error_from(response)
        try:
            body = response.json()
        except ValueError:  # json.JSONDecodeError, or bytes that are not UTF-8
            body = None
            problem = "a body that is not JSON"
        else:
            problem = "JSON that is not an object"
        if not isinstance(body, dict):
            raise RenderError(
                f"the gateway answered with {problem}",
                status=response.status_code,
                code="unreadable_answer",
                request_id=response.headers.get("x-request-id"),
            )
        return body

    # The operations, one per call of the API.

    def generate(
        self,
        modality: str,
        family: str,
        model: str,
        task: str,
        format: str | None,
        backend: str | None,
        fields: dict[str, Any],
    ) -> Operation[Generated]:
        params = {k: v for k, v in (("format", format), ("backend", backend)) if v is not None}
        path = "/".join(_segment(part) for part in (modality, family, model, task))
        response = yield from self.send(self.request("POST", path, json=fields, params=params))
        if response.status_code != 200:
            raise error_from(response)
        headers = response.headers
        location = headers.get("content-location")
        metered = headers.get("x-metered")
        return Generated(
            data=response.content,
            content_type=headers.get("content-type", "application/octet-stream"),
            request_id=headers.get("x-request-id", ""),
            asset_url=str(self.url(location)) if location else None,
            seed=_optional_int(headers.get("x-seed")),
            gpu_seconds=_optional_float(headers.get("x-gpu-seconds")),
            metered=None if metered is None else metered == "true",
            duration_ms=_optional_int(headers.get("x-duration-ms")),
        )

    def submit(
        self, routing: dict[str, Any], options: dict[str, Any], fields: dict[str, Any]
    ) -> Operation[Queued]:
        body = {**fields, **routing, **{k: v for k, v in options.items() if v is not None}}
        response = yield from self.send(self.request("POST", "/queue", json=body))
        if response.status_code != 202:
            raise error_from(response)
        queued = response.json()
        return Queued(
            id=queued["id"], status=queued["status"], position=queued.get("position"),
            eta_seconds=queued.get("eta_seconds"),
            request_id=response.headers.get("x-request-id", ""),
        )  # fmt: skip

    def status(self, job_id: str) -> Operation[JobState]:
        body = yield from self._json(self.request("GET", f"/jobs/{_segment(job_id)}"))
        return JobState.from_json(body)

    def wait(self, job_id: str, timeout: float | None, poll_seconds: float) -> Operation[JobState]:
        """The job once it has ended (complete, error or cancelled: look at ``status``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = yield from self.status(job_id)
            if state.done:
                return state
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(
                    f"job {job_id} is still {state.status} after {timeout} s", code="wait_timeout"
                )
            left = poll_seconds if deadline is None else deadline - time.monotonic()
            yield Pause(max(0.0, min(poll_seconds, left)))

    def cancel(self, job_id: str) -> Operation[str]:
        """``cancelled`` (204), or ``recorded`` (202: running, and no run answered yet — the
        job ends cancelled when its run is recovered)."""
        response = yield from self.send(self.request("DELETE", f"/jobs/{_segment(job_id)}"))
        if response.status_code == 204:
            return "cancelled"
        if response.status_code == 202:
            return "recorded"
        raise error_from(response)

    def output(self, job_id: str) -> Operation[bytes]:
        """The first output's bytes: the 303 of ``/jobs/{id}/output``, then its signed URL,
        fetched without credentials (they are not needed, and must not leave for another
        host)."""
        response = yield from self.send(self.request("GET", f"/jobs/{_segment(job_id)}/output"))
        if response.status_code != 303 or "location" not in response.headers:
            raise error_from(response)
        asset = yield from self.send(
            self.request("GET", str(self.url(response.headers["location"])), authenticated=False)
        )
        if asset.status_code != 200:
            raise error_from(asset)
        return asset.content

    def usage(
        self,
        from_: str | None,
        to: str | None,
        group_by: str | None,
        customer_id: str | None,
    ) -> Operation[dict[str, Any]]:
        params = {"from": from_, "to": to, "group_by": group_by, "customer_id": customer_id}
        present = {k: v for k, v in params.items() if v is not None}
        return (yield from self.json_call("GET", "/usage", params=present))

    def upload(self, data: bytes, content_type: str | None) -> Operation[UploadedAsset]:
        """``POST /uploads`` for the bytes' type and size, then the PUT of the signed URL it
        gives (without credentials: the URL is the credential; they must not leave for
        another host)."""
        media = content_type or image_type_of(data)
        if media is None:
            raise InvalidRequestError(
                "upload: the bytes are not a PNG, JPEG or WebP image; pass content_type",
                code="invalid_request",
            )
        declared = {"content_type": media, "bytes": len(data)}
        ticket = yield from self._json(self.request("POST", "/uploads", json=declared))
        put = httpx.Request(
            "PUT",
            self.url(str(ticket["upload_url"])),
            content=data,
            headers={"Content-Type": media},
        )
        response = yield from self.send(put)
        if response.status_code != 201:
            raise error_from(response)
        stored = response.json()
        return UploadedAsset(
            id=stored["id"], url=str(self.url(stored["asset_url"])),
            content_type=stored["content_type"], size=stored["bytes"],
            request_id=response.headers.get("x-request-id", ""),
        )  # fmt: skip

    def proof(self, request_id: str) -> Operation[dict[str, Any]]:
        path = f"/audit/proofs/{_segment(request_id)}"
        return (yield from self._json(self.request("GET", path)))
