"""Identifiers: prefix + base62 randomness, and the request-id syntax callers may use."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from render_gateway.core.ids import is_valid_request_id, new_asset_id, new_job_id, new_request_id

GENERATORS = [(new_request_id, "req_"), (new_job_id, "j_"), (new_asset_id, "a_")]


@pytest.mark.parametrize(("generate", "prefix"), GENERATORS)
def test_prefix_and_base62_body(generate: Callable[[], str], prefix: str) -> None:
    for _ in range(200):
        value = generate()
        assert value.startswith(prefix)
        assert re.fullmatch(r"[0-9A-Za-z]{12,}", value[len(prefix) :]), value


@pytest.mark.parametrize(("generate", "prefix"), GENERATORS)
def test_unique_across_draws(generate: Callable[[], str], prefix: str) -> None:
    draws = [generate() for _ in range(10_000)]
    assert len(set(draws)) == len(draws)


def test_body_uses_whole_alphabet() -> None:
    # A body drawn from a narrower alphabet (hex, lowercase only) would carry fewer bits.
    seen = set("".join(new_request_id()[4:] for _ in range(2_000)))
    assert len(seen) == 62


@pytest.mark.parametrize("generate", [g for g, _ in GENERATORS])
def test_generated_request_ids_are_valid(generate: Callable[[], str]) -> None:
    assert is_valid_request_id(generate())


@pytest.mark.parametrize("value", ["req_abc", "a", "A1.b:c-d_e", "9" * 128, "x" + "-" * 127])
def test_valid_request_ids(value: str) -> None:
    assert is_valid_request_id(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "req abc",
        " req",
        "x" * 129,
        "-abc",
        "_abc",
        ".abc",
        "req_abc\n",
        "req\nabc",
        "req/abc",
        "réq",
        "req\x00",
    ],
)
def test_invalid_request_ids(value: str) -> None:
    assert not is_valid_request_id(value)
