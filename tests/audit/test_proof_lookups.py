"""GET /audit/proofs/{id} on a real gateway over a log it did not write itself: request ids are
looked up in the proof index (caught up from the log at start, rebuilt if deleted), so a
proof reads one batch and an unknown id reads none."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import httpx

from support.audit_fixtures import signed_record
from support.audit_store import ORIGIN, build_log_of
from support.gateway import ONE_WORKER_CONFIG, GatewayProcess, start_gateway, stop_gateway
from support.processes import CLI, WorkerProcess

CONFIG = ONE_WORKER_CONFIG + f'\n[gateway.audit]\norigin = "{ORIGIN}"\nbatch_seconds = 0.3\n'


def proof(gateway: GatewayProcess, key: str, request_id: str) -> httpx.Response:
    return httpx.get(
        f"{gateway.url}/audit/proofs/{request_id}",
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def first_proof(gateway: GatewayProcess, key: str, request_id: str) -> httpx.Response:
    """The first lookup after a start: the batcher opens the log (and catches the index up)
    in its own thread, and until then the route says 503 with Retry-After."""
    deadline = time.monotonic() + 30
    while True:
        answer = proof(gateway, key, request_id)
        if answer.status_code != 503 or time.monotonic() > deadline:
            return answer
        assert answer.headers["retry-after"] == "5"
        time.sleep(0.2)


async def unknown_lookups(gateway: GatewayProcess, key: str, count: int) -> list[int]:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as client:
        answers = await asyncio.gather(
            *(
                client.get(f"{gateway.url}/audit/proofs/req_unknown{n:08d}", timeout=30)
                for n in range(count)
            )
        )
    return [answer.status_code for answer in answers]


def test_proofs_come_from_the_index_and_unknown_ids_read_nothing(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    data = tmp_path / "gateway"
    data.mkdir()
    # 60 batches of 3 written before this gateway ever ran: it must index them when it starts.
    asyncio.run(build_log_of(data, (signed_record(i) for i in range(180)), batch_records=3))
    config = CONFIG.format(worker=worker.url)
    gateway = start_gateway(data, config)
    try:
        acme = gateway.new_key("acme")
        found = first_proof(gateway, acme, "req_test00000004")
        assert found.status_code == 200, found.text
        bundle = tmp_path / "proof.json"
        bundle.write_bytes(found.content)
        checked = subprocess.run(
            [*CLI, "audit", "verify-proof", str(bundle), "--pubkey", str(data / "pubkey.txt")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "verified: request req_test00000004 (acme" in checked.stdout
        other = proof(gateway, gateway.new_key("zed"), "req_test00000004")
        assert other.status_code == 404 and other.json()["error"] == "proof_not_found"

        # With every batch out of reach, an unknown id still answers 404 (it reads nothing),
        # while a known one needs its batch and says the store is unavailable.
        blobs = data / "cas" / "blobs"
        blobs.rename(data / "cas" / "blobs-away")
        try:
            assert asyncio.run(unknown_lookups(gateway, acme, 40)) == [404] * 40
            unreadable = proof(gateway, acme, "req_test00000100")
            assert unreadable.status_code == 503, unreadable.text
            assert unreadable.json()["error"] == "audit_unavailable"
        finally:
            (data / "cas" / "blobs-away").rename(blobs)
    finally:
        stop_gateway(gateway)

    (data / "audit" / "proof_index.db").unlink()  # derived data: rebuilt from the log
    for suffix in ("-wal", "-shm"):
        (data / "audit" / f"proof_index.db{suffix}").unlink(missing_ok=True)
    gateway = start_gateway(data, config)
    try:
        again = first_proof(gateway, gateway.new_key("acme"), "req_test00000179")
        assert again.status_code == 200, again.text
    finally:
        stop_gateway(gateway)
