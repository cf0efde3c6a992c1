"""The worker's claim windows (worker/claim_signer.py), with real threads and real signatures:
claims finishing together share one signature and each verifies on its own, no claim waits much
longer than the linger, a full window goes at once, and a window of one claim is still one."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from render_gateway.usage_claim import (
    SignedClaim,
    WindowStatements,
    check_claim_text,
    verify_claim,
)
from render_gateway.worker.claim_signer import ClaimSigner

from support.audit_fixtures import make_claim

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def _sign_together(signer: ClaimSigner, count: int) -> list[SignedClaim]:
    """``count`` claims signed from ``count`` threads released at the same moment."""
    start = threading.Barrier(count)

    def one(index: int) -> SignedClaim:
        start.wait()
        return signer.sign(make_claim(index, key=KEY))

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_claims_finishing_together_share_one_window_and_each_verifies() -> None:
    signer = ClaimSigner(KEY, window_seconds=0.2, max_size=1024)
    signed = _sign_together(signer, 12)
    assert {s.algorithm for s in signed} == {"Ed25519-window"}
    assert len({s.signature for s in signed}) == 1 and signer.windows_signed == 1
    assert sorted(s.window.index for s in signed if s.window) == list(range(12))
    cache = WindowStatements()
    keys = {signed[0].key_id: KEY.public_key().public_bytes_raw()}
    for index, envelope in enumerate(signed):
        claim = verify_claim(envelope, KEY.public_key())
        check = check_claim_text(envelope.to_text(), keys, claim.request_id, 0.5, cache)
        assert check.error is None, (index, check.error)
    assert len(cache) == 1  # the gateway verified the window's statement once


def test_a_full_window_is_signed_at_once_and_the_rest_forms_the_next() -> None:
    signer = ClaimSigner(KEY, window_seconds=5.0, max_size=4)
    started = time.monotonic()
    signed = _sign_together(signer, 8)
    assert time.monotonic() - started < 2.0  # full windows never wait out the 5 s linger
    assert signer.windows_signed == 2 and signer.claims_signed == 8
    assert {s.window.size for s in signed if s.window} == {4}
    assert len({s.signature for s in signed}) == 2


def test_a_lone_claim_waits_about_the_linger_and_is_a_window_of_one() -> None:
    signer = ClaimSigner(KEY, window_seconds=0.002, max_size=1024)
    signer.sign(make_claim(0, key=KEY))  # warm up (imports, first signature)
    waits = []
    for index in range(20):
        started = time.perf_counter()
        envelope = signer.sign(make_claim(index, key=KEY))
        waits.append(time.perf_counter() - started)
        assert envelope.window is not None and envelope.window.size == 1
        assert envelope.window.path == ()
        verify_claim(envelope, KEY.public_key())
    waits.sort()
    assert 0.002 <= waits[len(waits) // 2] < 0.05  # the linger, plus one signature (shared host)


def test_no_linger_signs_what_is_waiting_at_once() -> None:
    signer = ClaimSigner(KEY, window_seconds=0.0, max_size=1024)
    signed = _sign_together(signer, 6)
    assert sum(1 for _ in signed) == 6 and signer.claims_signed == 6
    for envelope in signed:
        verify_claim(envelope, KEY.public_key())


def test_max_size_one_signs_each_claim_directly() -> None:
    signer = ClaimSigner(KEY, window_seconds=0.5, max_size=1)
    started = time.monotonic()
    envelope = signer.sign(make_claim(3, key=KEY))
    assert time.monotonic() - started < 0.4  # no linger
    assert envelope.algorithm == "Ed25519" and envelope.window is None
    assert verify_claim(envelope, KEY.public_key()).request_id == "req_test00000003"


def test_a_claim_of_another_key_fails_its_window_and_is_reported_to_its_callers() -> None:
    signer = ClaimSigner(KEY, window_seconds=0.0, max_size=8)
    with pytest.raises(ValueError, match="claim names key"):
        signer.sign(make_claim(1, key=Ed25519PrivateKey.generate()))
    signer.sign(make_claim(2, key=KEY))  # the signer goes on


@pytest.mark.parametrize(("seconds", "size"), [(-1.0, 4), (0.1, 0)])
def test_bad_settings_are_refused(seconds: float, size: int) -> None:
    with pytest.raises(ValueError, match="claim window"):
        ClaimSigner(KEY, seconds, size)
