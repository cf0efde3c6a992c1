"""Random generation requests against the real worker: every answer is a 200 or a JSON 4xx."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from support.processes import WorkerProcess

FIELDS = [
    "task", "prompt", "negative_prompt", "image", "mask", "seed", "steps", "guidance", "cfg",
    "strength", "count", "duration", "format", "width", "height", "eta", "clip_skip", "unknown",
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(max_size=20),
    st.sampled_from(["t2i", "i2i", "edit", "t2v", "512", "1024", "data:image/png;base64,AA=="]),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=5), scalars, max_size=2),
)
# Small sizes and step counts keep each accepted run to a few milliseconds.
small = {
    "steps": st.integers(min_value=-1, max_value=3),
    "width": st.sampled_from([-8, 0, 7, 64, 72, 100]),
    "height": st.sampled_from([-8, 0, 7, 64, 72, 100]),
    "count": st.integers(min_value=-1, max_value=5),
    "format": st.sampled_from(["512", "square", "nope", ""]),
}
requests = st.fixed_dictionaries(
    {"prompt": st.one_of(st.text(min_size=0, max_size=30), scalars)},
    optional={name: small.get(name, values) for name in FIELDS if name != "prompt"},
)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests)
# Found by this test: a pass-through field the pipeline accepts and then breaks on before its
# first step (the tiny CLIP text encoder has no layers to skip) was a 500, not a 400.
@example(request={"prompt": "0", "negative_prompt": None, "count": 1, "clip_skip": False})
def test_random_requests_never_break_the_worker(
    worker: WorkerProcess, request: dict[str, Any]
) -> None:
    body = {
        "inputs": [
            {
                "name": "request",
                "datatype": "BYTES",
                "shape": [1],
                "data": [orjson.dumps(request).decode()],
            }
        ]
    }
    response = httpx.post(
        worker.url + "/v2/models/demo/infer", content=orjson.dumps(body), timeout=60
    )
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        error = response.json()
        assert error["code"] == "invalid_request" and error["message"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.binary(max_size=200),
    # Header values are printable ASCII: anything else is refused by the HTTP parser itself.
    header=st.one_of(
        st.none(),
        st.integers(-5, 300).map(str),
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=4),
    ),
)
def test_random_bodies_are_json_400s(
    worker: WorkerProcess, body: bytes, header: str | None
) -> None:
    headers = {} if header is None else {"Inference-Header-Content-Length": header}
    response = httpx.post(
        worker.url + "/v2/models/demo/infer", content=body, headers=headers, timeout=30
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_tensor"


def test_wrong_method_is_json_405(worker: WorkerProcess) -> None:
    response = httpx.get(worker.url + "/v2/models/demo/infer")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
