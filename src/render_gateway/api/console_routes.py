"""GET /console…: the web console's page shells and its static files (no data: see console/).

Served with a strict Content-Security-Policy: only this origin's scripts, styles and API, no
inline script, no framing, so a page cannot be made to load or send anything elsewhere.
"""

from __future__ import annotations

import hashlib
import re
from functools import cache
from importlib import resources

from fastapi import APIRouter, Request
from starlette.responses import Response

from render_gateway.api.http import ApiError
from render_gateway.console.pages import BY_SLUG, JOB, SIGN_IN, Page, render

router = APIRouter(include_in_schema=False)  # HTML for people; the API is what /docs shows

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
STATIC_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Flat names only: nothing outside the package's static folder can be named.
STATIC_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}\.(js|css|svg)")
JOB_ID = re.compile(r"j_[A-Za-z0-9]{12,64}")


def _page(page: Page) -> Response:
    return Response(render(page), media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


@router.get("/console")
async def sign_in() -> Response:
    return _page(SIGN_IN)


@router.get("/console/jobs/{job_id}")
async def job_page(job_id: str) -> Response:
    if not JOB_ID.fullmatch(job_id):
        raise ApiError(404, "not_found", "no such console page")
    return _page(JOB)


@router.get("/console/static/{name}")
async def static_file(name: str, request: Request) -> Response:
    found = _static(name) if STATIC_NAME.fullmatch(name) else None
    if found is None:
        raise ApiError(404, "not_found", "no such console file")
    content, etag = found
    headers = {**PAGE_HEADERS, "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    suffix = name[name.rindex(".") :]
    return Response(content, media_type=STATIC_TYPES[suffix], headers=headers)


@router.get("/console/{slug}")
async def page(slug: str) -> Response:
    found = BY_SLUG.get(slug)
    if found is None:
        raise ApiError(404, "not_found", "no such console page")
    return _page(found)


@cache
def _static(name: str) -> tuple[bytes, str] | None:
    path = resources.files("render_gateway.console").joinpath("static", name)
    if not path.is_file():
        return None
    content = path.read_bytes()
    return content, '"' + hashlib.blake2b(content, digest_size=12).hexdigest() + '"'
