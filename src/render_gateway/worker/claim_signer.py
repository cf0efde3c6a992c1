"""Signing usage claims in windows: one Ed25519 signature for the claims that finish together.

Runs finish on their pipeline threads and each asks :meth:`ClaimSigner.sign` for its signed
claim. The first claim of a window waits until ``window_seconds`` after it arrived (or until
the window is full) for others to join, then its thread signs the window's statement
(``usage_claim.sign_window``) and hands every member its envelope; claims that arrive while a
window is being signed form the next one. A claim therefore waits at most the linger plus the
signing of one window before its run can answer — a few milliseconds against runs that take
seconds — and verifiers pay one Ed25519 verification per window instead of one per claim.
``max_size == 1`` signs every claim directly (algorithm ``Ed25519``), as before windows.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from render_gateway.signing_keys import key_id
from render_gateway.usage_claim import SignedClaim, UsageClaim, sign_claim, sign_window


@dataclass
class _Pending:
    claim: UsageClaim
    arrived: float  # time.monotonic()
    signed: SignedClaim | None = None
    error: BaseException | None = None


class ClaimSigner:
    def __init__(
        self, private_key: Ed25519PrivateKey, window_seconds: float, max_size: int
    ) -> None:
        if window_seconds < 0 or max_size < 1:
            raise ValueError("a claim window lingers 0 s or more and holds 1 claim or more")
        self._key = private_key
        self._key_id = key_id(private_key.public_key())
        self._linger = window_seconds
        self._max = max_size
        self._changed = threading.Condition()
        self._pending: list[_Pending] = []
        self._leading = False  # a thread is gathering or signing a window
        self.windows_signed = 0
        self.claims_signed = 0

    def sign(self, claim: UsageClaim) -> SignedClaim:
        """The signed claim, once its window is signed (thread-safe; blocks the caller)."""
        if self._max == 1:
            self.windows_signed += 1
            self.claims_signed += 1
            return sign_claim(claim, self._key)
        entry = _Pending(claim, time.monotonic())
        with self._changed:
            self._pending.append(entry)
            if len(self._pending) >= self._max:
                self._changed.notify_all()  # the gathering thread need not linger any more
            while entry.signed is None and entry.error is None:
                if self._leading:
                    self._changed.wait()
                else:
                    self._lead()
        if entry.error is not None:
            raise entry.error
        assert entry.signed is not None
        return entry.signed

    def _lead(self) -> None:
        """Gather and sign the next window (called, and returning, with the lock held)."""
        self._leading = True
        try:
            # The linger counts from the oldest waiting claim: none waits longer for others.
            deadline = self._pending[0].arrived + self._linger
            while len(self._pending) < self._max:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            window, self._pending = self._pending[: self._max], self._pending[self._max :]
            self._changed.release()  # claims arriving now join the next window
            try:
                signed = sign_window([entry.claim for entry in window], self._key, self._key_id)
            except Exception as exc:  # every waiting run must hear of it
                for entry in window:
                    entry.error = exc
            else:
                for entry, envelope in zip(window, signed, strict=True):
                    entry.signed = envelope
            finally:
                self._changed.acquire()
            self.windows_signed += 1
            self.claims_signed += len(window)
        finally:
            self._leading = False
            self._changed.notify_all()
