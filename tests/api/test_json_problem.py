"""The body guard's JSON check: the fast path (orjson + one walk) judges every body exactly as
the exact parser (the stdlib's, with hooks naming each reason) does."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from render_gateway.api.http import MAX_JSON_DEPTH, _json_problem_exact, json_problem

EDGES = [
    b'{"a": 9223372036854775807}',
    b'{"a": 9223372036854775808}',  # 2^63: past int64, within orjson's uint64
    b'{"a": -9223372036854775808}',
    b'{"a": -9223372036854775809}',
    b'{"a": 18446744073709551616}',  # past uint64: orjson refuses, the exact parser names it
    b"123456789012345678901234567890",
    b'{"a": NaN}',
    b'{"a": Infinity}',
    b'{"a": -Infinity}',
    b'{"a": 1e400}',
    b'"\\ud800"',  # a lone surrogate
    b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH,
    b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1),
    b'{"a":' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * (MAX_JSON_DEPTH + 1),
    b"[" * 5000 + b"]" * 5000,
    b"{not json",
    b"",
    b"\xff\xfe",
    b'{"a": [1, {"b": [2**70]}]}',
    b'{"a": [1, {"b": [1180591620717411303424]}]}',
]


@pytest.mark.parametrize("body", EDGES)
def test_edges_are_judged_as_the_exact_parser_judges_them(body: bytes) -> None:
    assert json_problem(body) == _json_problem_exact(body)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=-(2**70), max_value=2**70) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=40,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(json_values, st.integers(min_value=0, max_value=MAX_JSON_DEPTH + 2))
def test_any_json_is_judged_as_the_exact_parser_judges_it(value: object, wrap: int) -> None:
    body = ("[" * wrap + json.dumps(value) + "]" * wrap).encode()
    assert json_problem(body) == _json_problem_exact(body)
