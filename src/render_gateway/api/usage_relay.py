"""Usage reads relayed to the replica holding the metering lease (HTTP only).

Where to go is application/usage_holder.py's answer: only a URL read from the lease store,
never anything from the request. The caller's Authorization goes along (the holder judges it
again), and ``X-Render-Forwarded`` marks the request so that it is never relayed a second time:
a replica that receives a relayed read it cannot answer itself says 503 (the lease moved while
the request travelled), which also rules out loops between replicas.

The holder's answer is relayed as it is (status, JSON body, the headers a client acts on),
except that an answer that is not JSON, or a 5xx other than the holder's own 503, becomes this
replica's 503 ``usage_unavailable``; so does no answer within ``RELAY_TIMEOUT_SECONDS``.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import orjson
from fastapi import Request
from starlette.responses import Response

from render_gateway.api.http import ApiError, json_response

log = logging.getLogger(__name__)

FORWARDED_HEADER = "X-Render-Forwarded"
RELAY_TIMEOUT_SECONDS = 5.0
# The holder's response headers a client acts on; the rest (its request id, its server's
# names, lengths) are this replica's to set.
RELAYED_HEADERS = ("Retry-After", "WWW-Authenticate", "Cache-Control")
RETRY_SECONDS = "5"


def usage_unavailable(message: str) -> ApiError:
    return ApiError(503, "usage_unavailable", message, headers={"Retry-After": RETRY_SECONDS})


def was_forwarded(request: Request) -> bool:
    return FORWARDED_HEADER.lower() in request.headers


async def relay_usage_read(
    session: aiohttp.ClientSession, holder_url: str | None, request: Request, path: str
) -> Response:
    """``path`` (this route's own, with the caller's query) asked of the holder at
    ``holder_url``, its answer relayed; ApiError 503 when there is no holder to ask, the
    request was relayed already, or the holder does not answer properly in time."""
    if was_forwarded(request):
        raise usage_unavailable("the usage store is moving to another replica; retry shortly")
    if holder_url is None:
        raise usage_unavailable("no replica holds the usage store right now; retry shortly")
    url = holder_url + path
    headers = {FORWARDED_HEADER: "1", "Accept": "application/json"}
    if (authorization := request.headers.get("authorization")) is not None:
        headers["Authorization"] = authorization
    try:
        async with session.get(
            url,
            params=list(request.query_params.multi_items()),
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=RELAY_TIMEOUT_SECONDS),
        ) as answer:
            status = answer.status
            raw = await answer.read()
            relayed = {h: answer.headers[h] for h in RELAYED_HEADERS if h in answer.headers}
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("usage read relayed to %s failed: %r", holder_url, exc)
        raise usage_unavailable(
            "the replica holding the usage store did not answer; retry shortly"
        ) from exc
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict) or (status >= 500 and status != 503) or 300 <= status < 400:
        log.warning("usage read relayed to %s: unusable answer (status %d)", holder_url, status)
        raise usage_unavailable("the replica holding the usage store did not answer; retry shortly")
    if status == 503:
        relayed.setdefault("Retry-After", RETRY_SECONDS)
    return json_response(body, status, relayed)
