"""GET /audit/proofs/{request_id}: the inclusion proof of one of the caller's own requests."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from render_gateway.api.api_models import ERROR_RESPONSES, ProofBundle
from render_gateway.api.deps import caller, services
from render_gateway.api.http import ApiError
from render_gateway.audit.keys import public_key_line
from render_gateway.audit.proofs import ProofNotFound, bundle_from_log
from render_gateway.auth.principal import Principal
from render_gateway.stores.objects import ObjectStoreError

router = APIRouter()


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
    audit_log = audit.batcher.audit_log if audit.batcher is not None else None
    if audit_log is None:  # the batcher opens the log (and catches the index up) at start;
        # a replica that does not hold the audit role has none (another replica serves it).
        raise ApiError(
            503, "audit_unavailable", "the audit log is not open yet", headers={"Retry-After": "5"}
        )
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
        raise ApiError(503, "audit_unavailable", str(exc), headers={"Retry-After": "5"}) from exc
