"""Unguessable identifiers: a prefix plus base62 text carrying at least 96 random bits."""

from __future__ import annotations

import re
import secrets

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# 17 base62 characters carry 17 * log2(62) ≈ 101 bits, above the 96-bit floor of API.md.
_LENGTH = 17

# What a caller may send as a request id (it becomes an NVTX range name and part of signed
# claims, so it is restricted to characters that need no escaping anywhere).
REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")


def random_base62(length: int = _LENGTH) -> str:
    # One uniform draw below 62**length, written in base 62: as random as one choice per
    # character, at a twentieth of the cost.
    value = secrets.randbelow(62**length)
    digits = []
    for _ in range(length):
        value, digit = divmod(value, 62)
        digits.append(_ALPHABET[digit])
    return "".join(digits)


def new_request_id() -> str:
    return "req_" + random_base62()


def new_job_id() -> str:
    return "j_" + random_base62()


def new_asset_id() -> str:
    return "a_" + random_base62()


def is_valid_request_id(value: str) -> bool:
    return REQUEST_ID_PATTERN.fullmatch(value) is not None
