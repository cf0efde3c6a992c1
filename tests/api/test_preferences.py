"""Parsing of ``Prefer`` (RFC 7240) and ``Cancel-After``: what is honoured, what is ignored."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from render_gateway.api.preferences import (
    CANCEL_AFTER_PATTERN,
    MAX_WAIT_S,
    Preferences,
    parse_duration,
    parse_prefer,
)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], Preferences()),
        (["wait=5"], Preferences(5)),
        (["wait"], Preferences(MAX_WAIT_S)),
        (["wait=600"], Preferences(MAX_WAIT_S)),  # capped, not refused
        (["wait=0"], Preferences()),
        (['wait="7"'], Preferences(7)),
        (["respond-async, wait=10"], Preferences(10, True)),
        (["respond-async", "wait=3; foo=bar"], Preferences(3, True)),
        (["wait=2", "wait=9"], Preferences(2)),  # the first of a name counts
        (["WAIT=4"], Preferences(4)),
        (["wait=soon", "return=minimal", "respond-async=yes"], Preferences()),
    ],
)
def test_prefer(headers: list[str], expected: Preferences) -> None:
    assert parse_prefer(headers) == expected


@given(st.lists(st.text(max_size=40), max_size=4))
def test_any_prefer_header_parses_without_error(headers: list[str]) -> None:
    parsed = parse_prefer(headers)
    assert parsed.wait_seconds is None or 1 <= parsed.wait_seconds <= MAX_WAIT_S


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("1.5m", 90.0), ("1h30m", 5400.0), ("1500ms", 1.5),
     ("24h", 86400.0), ("1", 1.0), (" 5m ", 300.0), ("0.5", 1.0), ("25h", 86400.0),
     ("0", 1.0)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "-5s", "1d", "5 s", "m", "1h-1m"])
def test_what_is_not_a_duration_is_refused(text: str) -> None:
    assert not re.match(CANCEL_AFTER_PATTERN, text)  # the document says so too
    with pytest.raises(ValueError, match="Cancel-After"):
        parse_duration(text)


@given(st.from_regex(CANCEL_AFTER_PATTERN, fullmatch=True))
def test_every_value_of_the_documented_form_is_a_deadline(text: str) -> None:
    assert 1.0 <= parse_duration(text) <= 86400.0
