"""The asyncio transport: ``AsyncRenderClient`` runs the Operations of ``protocol.py`` on an
``httpx.AsyncClient``. Nothing here knows the API; it only sends, sleeps and reads lines."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, TypeVar

import httpx

from render_gateway.client.errors import RenderConnectionError
from render_gateway.client.protocol import (
    EventFollower,
    Generated,
    JobEvent,
    JobState,
    Operation,
    Pause,
    Protocol,
    Queued,
    RetryPolicy,
    UploadedAsset,
)

T = TypeVar("T")


def _read(path: str | os.PathLike[str]) -> bytes:
    with open(path, "rb") as file:
        return file.read()


class AsyncRenderClient:
    """``AsyncRenderClient("http://127.0.0.1:8080", api_key)``; see docs/API.md, "Python client"."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.protocol = Protocol(base_url, api_key, retry or RetryPolicy())
        # Redirects are the protocol's to follow: a 303 to an asset must not carry the key.
        self._http = http or httpx.AsyncClient(timeout=timeout, follow_redirects=False)

    async def __aenter__(self) -> AsyncRenderClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def run(self, operation: Operation[T]) -> T:
        """Drive one Operation to its result."""
        try:
            step = next(operation)
            while True:
                if isinstance(step, Pause):
                    await asyncio.sleep(step.seconds)
                    step = operation.send(None)
                else:
                    step = operation.send(await self._send(step))
        except StopIteration as done:
            result: T = done.value
            return result

    async def _send(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._http.send(request)
        except httpx.TransportError as exc:
            raise RenderConnectionError(
                f"cannot reach {request.url.host}: {exc}", code="unreachable"
            ) from exc

    async def generate(
        self,
        modality: str,
        family: str,
        model: str,
        task: str,
        *,
        format: str | None = None,
        backend: str | None = None,
        **fields: Any,
    ) -> Generated:
        """The sync tier: run now, answer with the first output's bytes."""
        return await self.run(
            self.protocol.generate(modality, family, model, task, format, backend, fields)
        )

    async def submit(
        self,
        modality: str,
        family: str,
        model: str,
        task: str,
        *,
        format: str | None = None,
        backend: str | None = None,
        priority: str | None = None,
        webhook: str | None = None,
        ttl: int | None = None,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> AsyncJob:
        """The async tier: queue the job and hand back its handle."""
        routing = {"modality": modality, "family": family, "model": model, "task": task}
        options = {"format": format, "backend": backend, "priority": priority,
                   "webhook": webhook, "ttl": ttl, "idempotency_key": idempotency_key}  # fmt: skip
        queued = await self.run(self.protocol.submit(routing, options, fields))
        return AsyncJob(self, queued.id, queued)

    def job(self, job_id: str) -> AsyncJob:
        """The handle of a job submitted earlier."""
        return AsyncJob(self, job_id, None)

    async def usage(
        self,
        from_: str | None = None,
        to: str | None = None,
        group_by: str | None = None,
        customer_id: str | None = None,
    ) -> dict[str, Any]:
        """``GET /usage``: the report as the gateway sends it (docs/API.md)."""
        return await self.run(self.protocol.usage(from_, to, group_by, customer_id))

    async def upload(
        self, source: bytes | str | os.PathLike[str], content_type: str | None = None
    ) -> UploadedAsset:
        """Upload an image (bytes, or a file's path) as an asset of yours: PNG, JPEG or WebP,
        up to 50 MiB; the type is read from the bytes unless given."""
        data = source if isinstance(source, bytes) else await asyncio.to_thread(_read, source)
        return await self.run(self.protocol.upload(data, content_type))

    async def proof(self, request_id: str) -> dict[str, Any]:
        """``GET /audit/proofs/{request_id}``: check it with ``verify_proof``."""
        return await self.run(self.protocol.proof(request_id))

    async def events(
        self, job_id: str, last_event_id: int | None = None
    ) -> AsyncIterator[JobEvent]:
        follower = EventFollower(self.protocol, job_id, last_event_id)
        while (request := follower.next_request()) is not None:
            try:
                response = await self._http.send(request, stream=True)
                try:
                    if response.status_code != 200:
                        await response.aread()
                        follower.opened(response)
                    async for line in response.aiter_lines():
                        if (event := follower.feed(line)) is not None:
                            yield event
                finally:
                    await response.aclose()
                follower.ended()
            except httpx.TransportError as exc:
                await asyncio.sleep(follower.dropped(exc))


class AsyncJob:
    """A queued job: ask, wait, follow, cancel, fetch."""

    def __init__(self, client: AsyncRenderClient, job_id: str, queued: Queued | None) -> None:
        self.client, self.id, self.queued = client, job_id, queued

    def __repr__(self) -> str:
        return f"AsyncJob({self.id!r})"

    async def status(self) -> JobState:
        return await self.client.run(self.client.protocol.status(self.id))

    async def wait(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 (the same call as Job.wait)
        poll_seconds: float = 0.25,
    ) -> JobState:
        """The job once ended; WaitTimeout after ``timeout`` seconds (the job goes on)."""
        return await self.client.run(self.client.protocol.wait(self.id, timeout, poll_seconds))

    def events(self, last_event_id: int | None = None) -> AsyncIterator[JobEvent]:
        """The job's events to the terminal one, resuming by itself after a dropped
        connection."""
        return self.client.events(self.id, last_event_id)

    async def cancel(self) -> str:
        return await self.client.run(self.client.protocol.cancel(self.id))

    async def output(self) -> bytes:
        return await self.client.run(self.client.protocol.output(self.id))
