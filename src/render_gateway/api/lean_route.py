"""Hot routes answered without FastAPI's generic request handler, documented as any other.

FastAPI's per-request machinery — the request handler, the generic dependency solver with its
caches and exit stacks — cost more than the work it wraps: in the framework floor a FastAPI
route took 0.32–0.53 CPU-ms for a request a plain Starlette endpoint on the same app served in
0.14–0.26 (docs/BENCHMARKS.md, issue 16). A route marked ``@lean`` keeps everything FastAPI
gives it — its path and matching, its OpenAPI operation built from the endpoint's signature,
the app's exception handlers, the endpoint function itself — and replaces only that handler
with one specialised once, at start-up, for the endpoint's shape:

* the body is read as FastAPI reads it (JSON only when the content type is JSON, else the
  bytes, which fail validation); the value the body guard already parsed is reused;
* the caller is authenticated before any parameter is judged (a dependency is solved first);
* path, query and header parameters and the body are validated by FastAPI's own fields and
  helpers, in FastAPI's order, so every error is the one FastAPI would have raised.

An endpoint the lean handler cannot serve exactly (another dependency, cookies, a body that
is not one model, an answer that is not a ``Response``) is refused when the route is built,
not served differently. ``app.state.lean_routes = False`` serves every route with FastAPI's
own handler: tests/api/test_lean_route.py holds the two equal, answer for answer.
"""

from __future__ import annotations

import email.message
import functools
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from fastapi import HTTPException, Request, Response
from fastapi._compat import Undefined
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import request_body_to_args, request_params_to_args
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from render_gateway.auth.principal import Principal

# Set by the body guard (api/http.py) when its fast parse of a JSON body is exactly what the
# standard library's json.loads — FastAPI's parser — gives for it.
PARSED_JSON = "render.parsed_json"
LEAN_ATTRIBUTE = "__render_lean__"

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])
Handler = Callable[[Request], Coroutine[Any, Any, Response]]
# The dependencies a lean handler can solve: the function FastAPI would call, and what it is
# for the lean handler (the same work without the arguments that only document it).
Solver = Callable[[Request], Awaitable[Principal]]
LEAN_DEPENDENCIES: dict[Callable[..., Any], Solver] = {}


def lean(endpoint: Endpoint) -> Endpoint:
    """Serve this endpoint with the lean handler (its router's ``route_class`` is LeanRoute)."""
    setattr(endpoint, LEAN_ATTRIBUTE, True)
    return endpoint


def lean_dependency(declared: Callable[..., Any]) -> Callable[[Solver], Solver]:
    """Register how a lean handler solves the dependency ``declared``."""

    def register(solve: Solver) -> Solver:
        LEAN_DEPENDENCIES[declared] = solve
        return solve

    return register


class LeanRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        standard = super().get_route_handler()
        if not getattr(self.endpoint, LEAN_ATTRIBUTE, False):
            return standard
        fast = lean_handler(self.dependant, self.path, self._embed_body_fields)

        async def handler(request: Request) -> Response:
            if getattr(request.app.state, "lean_routes", True):
                return await fast(request)
            return await standard(request)

        return handler


def lean_handler(dependant: Dependant, path: str, embed_body_fields: bool) -> Handler:
    """The handler of one endpoint; raises TypeError for a shape it cannot serve exactly."""
    call = dependant.call
    if call is None:
        raise TypeError(f"{path}: no endpoint")
    solvers = []
    for sub in dependant.dependencies:
        solve = LEAN_DEPENDENCIES.get(sub.call) if sub.call is not None else None
        if solve is None or sub.name is None:
            raise TypeError(f"{path}: dependency {sub.call!r} has no lean solver")
        solvers.append((sub.name, solve))
    if dependant.cookie_params or len(dependant.body_params) > 1:
        raise TypeError(f"{path}: cookies or a body of several parts")
    body_fields = list(dependant.body_params)
    path_params, query_params = dependant.path_params, dependant.query_params
    header_params = dependant.header_params
    request_name, response_name = dependant.request_param_name, dependant.response_param_name

    async def handle(request: Request) -> Response:
        body = await read_body(request) if body_fields else Undefined
        values: dict[str, Any] = {}
        for name, solve in solvers:  # FastAPI solves dependencies before the parameters
            values[name] = await solve(request)
        found, errors = request_params_to_args(path_params, request.path_params)
        values.update(found)
        if query_params:
            found, more = request_params_to_args(query_params, request.query_params)
            values.update(found)
            errors += more
        if header_params:
            found, more = request_params_to_args(header_params, request.headers)
            values.update(found)
            errors += more
        if body_fields:
            found, more = await request_body_to_args(body_fields, body, embed_body_fields)
            values.update(found)
            errors += more
        if errors:
            raise RequestValidationError(errors, body=None if body is Undefined else body)
        if request_name:
            values[request_name] = request
        if response_name:  # as FastAPI makes it: headers only, no length, no status
            response = Response()
            del response.headers["content-length"]
            values[response_name] = response
        answer = await call(**values)
        if not isinstance(answer, Response):
            raise TypeError(f"{path}: a lean endpoint answers a Response, not {type(answer)}")
        return answer

    return handle


async def read_body(request: Request) -> Any:
    """The body as FastAPI's handler hands it to validation (strict content type): Undefined
    when empty, the parsed JSON when the content type is JSON, else the bytes."""
    data = await request.body()
    if not data:
        return Undefined
    content_type = request.headers.get("content-type")
    if not content_type or not _is_json_type(content_type):
        return data
    parsed = request.scope.get(PARSED_JSON, _UNPARSED)
    if parsed is not _UNPARSED:
        return parsed
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:  # FastAPI's own errors for both
        error = {
            "type": "json_invalid",
            "loc": ("body", exc.pos),
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": exc.msg},
        }
        raise RequestValidationError([error], body=exc.doc) from exc
    except Exception as exc:  # bytes that are no Unicode at all
        raise HTTPException(status_code=400, detail="There was an error parsing the body") from exc


_UNPARSED = object()


@functools.lru_cache(maxsize=64)
def _is_json_type(content_type: str) -> bool:
    """FastAPI's test of a content type, cached: the header's few distinct values repeat."""
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")
