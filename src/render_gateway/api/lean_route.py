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

import copy
import email.message
import functools
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from fastapi import HTTPException, Request, Response, params
from fastapi._compat import (
    ModelField,
    Undefined,
    field_annotation_is_sequence,
    get_missing_field_error,
)
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import (  # FastAPI's own readers, so no rule of its is redone
    _get_param_aliases,
    _get_param_model,
    _is_json_field,
    _should_embed_body_fields,
)
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.datastructures import Headers, ImmutableMultiDict

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
            if request.app.state.lean_routes:  # create_app sets it
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
    groups = [
        (source, [ParamReader(field, path) for field in fields])
        for source, fields in (
            ("path", dependant.path_params),
            ("query", dependant.query_params),
            ("headers", dependant.header_params),
        )
        if fields
    ]
    body_reader = BodyReader(dependant.body_params[0], embed_body_fields, path) if (
        dependant.body_params
    ) else None  # fmt: skip
    request_name, response_name = dependant.request_param_name, dependant.response_param_name

    async def handle(request: Request) -> Response:
        body = await read_body(request) if body_reader is not None else Undefined
        values: dict[str, Any] = {}
        for name, solve in solvers:  # FastAPI solves dependencies before the parameters
            values[name] = await solve(request)
        errors: list[Any] = []
        for source, readers in groups:
            received = getattr(request, PARAM_SOURCES[source])
            for reader in readers:
                reader.read(received, values, errors)
        if body_reader is not None:
            body_reader.read(body, values, errors)
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


PARAM_SOURCES = {"path": "path_params", "query": "query_params", "headers": "headers"}


class ParamReader:
    """FastAPI's reading of one path, query or header parameter (``request_params_to_args``
    for one field), with what depends only on the field worked out once instead of on every
    request: its request keys, whether it takes every value of a repeated key."""

    def __init__(self, field: ModelField, path: str) -> None:
        if _get_param_model(field) is not None:
            raise TypeError(f"{path}: a parameter model ({field.name})")
        info = field.field_info
        if not isinstance(info, params.Param):
            raise TypeError(f"{path}: {field.name} is not a parameter")
        self.field, self.name, self.where = field, field.name, info.in_.value
        self.keys = [key for _, key in _get_param_aliases(field)]
        self.sequence = field_annotation_is_sequence(info.annotation)
        self.every_value = self.sequence and not _is_json_field(field)

    def read(self, received: Any, values: dict[str, Any], errors: list[Any]) -> None:
        key = next((key for key in self.keys if key in received), self.keys[0])
        value: Any
        if self.every_value and isinstance(received, ImmutableMultiDict | Headers):
            value = received.getlist(key)
        else:
            value = received.get(key, None)
        if value is None or (self.sequence and len(value) == 0):
            value = Undefined  # defaults are applied by validation, as FastAPI does
        found, problems = validated(self.field, value, values, (self.where, key))
        if problems:
            errors.extend(problems)
        else:
            values[self.name] = found


class BodyReader:
    """FastAPI's validation of a body that is one model, not embedded (else its own)."""

    def __init__(self, field: ModelField, embed_body_fields: bool, path: str) -> None:
        form = isinstance(field.field_info, params.Form | params.File)
        if form or embed_body_fields or _should_embed_body_fields([field]):
            raise TypeError(f"{path}: a form, or an embedded body")
        self.field, self.name = field, field.name

    def read(self, body: Any, values: dict[str, Any], errors: list[Any]) -> None:
        found, problems = validated(self.field, body, values, ("body",))
        values[self.name] = found
        errors.extend(problems)


def validated(
    field: ModelField, value: Any, values: dict[str, Any], loc: tuple[str, ...]
) -> tuple[Any, list[Any]]:
    """FastAPI's ``_validate_value_with_model_field``."""
    if value is Undefined:
        if field.field_info.is_required():
            return None, [get_missing_field_error(loc=loc)]
        value = copy.deepcopy(field.default)
        if not field.field_info.validate_default:
            return value, []
    found, problems = field.validate(value, values, loc=loc)
    return found, list(problems)


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
