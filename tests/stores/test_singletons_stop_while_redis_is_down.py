"""The metering writer and the attestation batcher stop when asked even while Redis (their usage
stream) is unreachable. Their stop first drains what is waiting, and that read failed: the
thread stayed running while the lease's role counted as stopped, so when the lease was won
again a second writer and a second batcher ran in the same process — the chaos test
(tests/test_chaos_e2e.py) found ten usage records twice in ClickHouse and a second batcher
appending a different leaf at an index the first had written, after a kill -9 of Redis."""

from __future__ import annotations

import asyncio
import functools
import threading
from pathlib import Path

from render_gateway.audit.batcher import AttestationBatcher
from render_gateway.audit.keys import load_signer
from render_gateway.audit.log import open_audit_log
from render_gateway.metering.store import open_usage_store
from render_gateway.metering.writer import UsageWriter
from render_gateway.stores.jobs import open_job_store
from render_gateway.stores.objects import open_object_store

from support.redis_server import start_redis


def alive(name: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name == name and t.is_alive())


async def test_writer_and_batcher_stop_while_redis_is_down(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis")
    jobs = open_job_store(server.url)
    await jobs.open()
    writers_before, batchers_before = alive("usage-writer"), alive("audit-batcher")
    writer = UsageWriter(
        jobs.usage_log, lambda: open_usage_store(f"chdb://{tmp_path / 'ch'}"), flush_interval=0.05
    )
    objects = open_object_store((tmp_path / "cas").as_uri())
    signer = load_signer(tmp_path, "render-gateway/test")
    batcher = AttestationBatcher(
        jobs.usage_log, functools.partial(open_audit_log, objects, signer, "render-gateway/test"),
        5, 3600,
    )  # fmt: skip
    writer.start()
    batcher.start()
    try:
        assert alive("usage-writer") == writers_before + 1
        assert alive("audit-batcher") == batchers_before + 1
        server.process.kill()  # kill -9: the stream is unreachable from here on
        server.process.wait()
        await asyncio.wait_for(asyncio.to_thread(writer.stop, 1.0), 30)
        await asyncio.wait_for(asyncio.to_thread(batcher.stop, 1.0), 30)
        assert alive("usage-writer") == writers_before
        assert alive("audit-batcher") == batchers_before
        assert writer.store is None  # closed: the embedded store is free for the next holder
    finally:
        writer.stop(0)
        batcher.stop(0)
        await jobs.close()
