"""The cold path over HTTP: a request's inclusion proof (its customer's), the log's status
(anyone authenticated: it holds no customer data), and the gateway's own verification runs
(admins)."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from render_gateway.api.api_models import ERROR_RESPONSES, ProofBundle
from render_gateway.api.deps import caller, require_admin, services
from render_gateway.api.http import ApiError
from render_gateway.application.audit_verifications import Busy
from render_gateway.application.services import GatewayServices
from render_gateway.audit.keys import public_key_line
from render_gateway.audit.log import AuditLog
from render_gateway.audit.proofs import ProofNotFound, bundle_from_log
from render_gateway.audit.signed_note import Checkpoint, NoteError, NoteSigner, open_note
from render_gateway.audit.verification_runs import recent_verifications
from render_gateway.auth.principal import Principal
from render_gateway.stores.objects import ObjectStoreError

log = logging.getLogger(__name__)

router = APIRouter()


def audit_unavailable(exc: ObjectStoreError) -> ApiError:
    return ApiError(503, "audit_unavailable", str(exc), headers={"Retry-After": "5"})


def open_log(svc: GatewayServices) -> AuditLog:
    """This process's audit log; 503 ``audit_unavailable`` while it has none: the batcher opens
    the log (and catches the proof index up) at start, and a replica that does not hold the
    audit role has none (another replica serves it)."""
    batcher = svc.audit.batcher
    if batcher is None or batcher.audit_log is None:
        raise ApiError(
            503, "audit_unavailable", "the audit log is not open yet", headers={"Retry-After": "5"}
        )
    return batcher.audit_log


@router.get(
    "/audit/proofs/{request_id}",
    response_model=ProofBundle,
    responses=ERROR_RESPONSES,
    summary="Inclusion proof of a request's attestation",
)
async def get_proof(
    request_id: str, request: Request, principal: Annotated[Principal, Depends(caller)]
) -> dict[str, Any]:
    """A bundle `render-gateway audit verify-proof` checks offline. 404 until the request's
    batch is sealed and covered by a signed checkpoint (``audit.batch_seconds`` at most), and for
    another customer's request."""
    svc = services(request)
    audit = svc.audit
    if not request_id.startswith("req_") or len(request_id) > 64:
        raise ApiError(404, "proof_not_found", f"no attestation for request {request_id!r}")
    audit_log = open_log(svc)
    try:
        # One index lookup (an unknown id ends here), then one batch read in a thread.
        if audit.proof_index.find(request_id) is None:
            raise ProofNotFound(f"no attestation for request {request_id!r} in the log")
        return await asyncio.to_thread(
            bundle_from_log, audit_log, audit.proof_index, public_key_line(audit.signer),
            request_id, principal.customer_id,
        )  # fmt: skip
    except ProofNotFound as exc:
        raise ApiError(404, "proof_not_found", str(exc)) from exc
    except ObjectStoreError as exc:
        raise audit_unavailable(exc) from exc


def checkpoint_json(checkpoint: Checkpoint, note: bytes, signer: NoteSigner) -> dict[str, Any]:
    """The latest checkpoint and its signed note, re-checked here with the log's key."""
    try:
        text, _ = open_note(note, [signer.verifier()])
        signature_ok = Checkpoint.parse(text) == checkpoint
    except NoteError:
        signature_ok = False
    return {
        "origin": checkpoint.origin,
        "size": checkpoint.size,
        "root_hash": base64.b64encode(checkpoint.root_hash).decode(),
        "note": note.decode(errors="replace"),
        "signature_ok": signature_ok,
    }


@router.get(
    "/audit/status",
    response_model=dict[str, Any],
    responses=ERROR_RESPONSES,
    summary="The audit log: its key, size, latest signed checkpoint and last verification",
)
async def get_status(
    request: Request, principal: Annotated[Principal, Depends(caller)]
) -> dict[str, Any]:
    """For anyone authenticated: nothing in it is a customer's. ``attested_since_start`` and
    ``pending_records`` are this replica's batcher's (it holds the audit role)."""
    svc = services(request)
    audit_log = open_log(svc)
    batcher = svc.audit.batcher
    assert batcher is not None  # open_log found its log
    with audit_log.lock:  # the checkpoint together with the size it signs
        size, checkpoint, note = audit_log.size, audit_log.checkpoint, audit_log.checkpoint_note
    try:
        last = await asyncio.to_thread(recent_verifications, svc.audit.objects, 1)
    except ObjectStoreError as exc:
        raise audit_unavailable(exc) from exc
    return {
        "log_public_key": public_key_line(svc.audit.signer),
        "log_size": size,
        "attested_since_start": batcher.stats.attested,
        "pending_records": batcher.stats.backlog,
        "checkpoint": (
            checkpoint_json(checkpoint, note, svc.audit.signer)
            if checkpoint is not None and note is not None
            else None
        ),
        "last_verification": last[0] if last else None,
    }


@router.post(
    "/audit/verifications",
    response_model=dict[str, Any],
    responses=ERROR_RESPONSES,  # its 409: a verification is running on this replica
    summary="Verify the audit log now, as `render-gateway audit verify` does (admins)",
)
async def post_verification(
    request: Request, principal: Annotated[Principal, Depends(caller)]
) -> dict[str, Any]:
    """Every batch re-hashed, every backend claim checked, every checkpoint's signature and
    root, over the log as of its latest checkpoint; recorded in the audit store and answered
    when done (the request waits). 409 ``verification_running`` while one runs here."""
    svc = services(request)
    require_admin(request, principal, "verifying the audit log is for admins")
    audit_log = open_log(svc)
    try:
        return await svc.audit_verifications.run(
            svc.audit.objects, svc.audit.signer, svc.config.audit.origin, audit_log
        )
    except Busy as exc:
        raise ApiError(409, "verification_running", str(exc), headers={"Retry-After": "5"}) from exc
    except ObjectStoreError as exc:
        log.warning("audit verification failed on the store: %s", exc)
        raise audit_unavailable(exc) from exc


@router.get(
    "/audit/verifications",
    response_model=dict[str, Any],
    responses=ERROR_RESPONSES,
    summary="Recorded verification runs, newest first (admins)",
)
async def list_verifications(
    request: Request,
    principal: Annotated[Principal, Depends(caller)],
    limit: Annotated[int, Query(ge=1, le=500)] = 20,
) -> dict[str, Any]:
    """Every replica's runs (they share the audit store)."""
    svc = services(request)
    require_admin(request, principal, "verification runs are for admins")
    try:
        runs = await asyncio.to_thread(recent_verifications, svc.audit.objects, limit)
    except ObjectStoreError as exc:
        raise audit_unavailable(exc) from exc
    return {"runs": runs}
