"""What a customer checks without asking the gateway: webhook signatures (Standard Webhooks,
as ``application/webhooks.py`` signs them) and inclusion proofs (as ``render-gateway audit
verify-proof`` checks them, with ``audit/proofs.verify_bundle``)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from render_gateway.application.webhooks import WebhookSecret
from render_gateway.application.webhooks import verify as verify_signature
from render_gateway.audit.proofs import BundleError, verify_bundle
from render_gateway.audit.signed_note import Checkpoint, NoteError, parse_verifier_key
from render_gateway.client.errors import RenderError


class WebhookVerificationError(RenderError):
    """A delivery that is not signed with the secret, or is older than the tolerance."""


class ProofVerificationError(RenderError):
    """An inclusion proof that does not hold; the message names the step that failed."""


def verify_webhook(
    headers: Mapping[str, str],
    body: bytes,
    secret: str,
    *,
    tolerance_seconds: float = 300,
    now: float | None = None,
) -> dict[str, Any]:
    """The delivery's job JSON when ``webhook-id``, ``webhook-timestamp`` and
    ``webhook-signature`` prove it came from the gateway holding ``secret`` (``whsec_…``)
    within ``tolerance_seconds``; else WebhookVerificationError. Verify the raw body, before
    any JSON parsing: re-serialised JSON would not match."""
    try:
        key = WebhookSecret.parse(secret)
    except ValueError as exc:
        raise WebhookVerificationError(str(exc), code="invalid_secret") from None
    when = time.time() if now is None else now
    if not verify_signature(key, headers, body, when, tolerance_seconds):
        raise WebhookVerificationError(
            "the webhook's signature, id or timestamp does not verify (or it is too old)",
            code="invalid_signature",
        )
    payload = orjson.loads(body)
    if not isinstance(payload, dict):
        raise WebhookVerificationError(
            "the webhook's body is not a JSON object", code="invalid_body"
        )
    return payload


@dataclass(frozen=True)
class VerifiedProof:
    """The attested usage row, and the signed checkpoint of the log it is in."""

    row: dict[str, Any]
    checkpoint: Checkpoint


def verify_proof(
    bundle: Mapping[str, Any],
    public_key: str | None = None,
    pinned_node_keys: Mapping[str, str] | None = None,
) -> VerifiedProof:
    """Check a proof bundle (``GET /audit/proofs/{id}``) offline. ``public_key``: the log's
    published verifier key (``render-gateway audit pubkey``); without it the key inside the
    bundle is used, which proves consistency only — compare it with the published one."""
    try:
        verifier = parse_verifier_key(public_key or bundle["log_public_key"])
        row, checkpoint = verify_bundle(dict(bundle), [verifier], pinned_node_keys)
    except (NoteError, KeyError, TypeError, BundleError) as exc:
        raise ProofVerificationError(str(exc), code="proof_invalid") from exc
    return VerifiedProof(row, checkpoint)
