"""A process that appends usage records and batches them into the audit log until killed.

    python audit_driver.py DATA_DIR START COUNT [backlog]

Appends records START..START+COUNT-1 (in small transactions) while an AttestationBatcher seals
batches of 7 every 20 ms; prints "running" once both are going. The parent kills it with
SIGKILL at a random moment. With ``backlog`` the records are all appended first and the
batcher then starts on them (a restart's catch-up: it reads two batches ahead throughout).
"""

from __future__ import annotations

import asyncio
import functools
import sys
from pathlib import Path

from render_gateway.audit.batcher import AttestationBatcher
from render_gateway.audit.keys import load_signer
from render_gateway.audit.log import open_audit_log
from render_gateway.stores.objects import open_object_store
from render_gateway.stores.sqlite_jobs import SqliteJobStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.audit_fixtures import signed_record

ORIGIN = "render-gateway/test"


async def main(data: Path, start: int, count: int, backlog: bool) -> None:
    jobs = SqliteJobStore(data / "jobs.db")
    await jobs.open()
    objects = open_object_store((data / "cas").as_uri())
    signer = load_signer(data, ORIGIN)

    open_log = functools.partial(open_audit_log, objects, signer, ORIGIN)

    batcher = AttestationBatcher(jobs.usage_log, open_log, 7, 0.02)
    if backlog:
        await asyncio.gather(
            *(jobs.usage_log.append_usage(signed_record(i)) for i in range(start, start + count))
        )
        count = 0
    batcher.start()
    print("running", flush=True)
    for index in range(start, start + count):
        await jobs.usage_log.append_usage(signed_record(index))
        batcher.notify()
        if index % 5 == 0:
            await asyncio.sleep(0.005)
    await asyncio.to_thread(batcher.stop, 30.0)
    await jobs.close()
    print("done", flush=True)


if __name__ == "__main__":
    backlog = sys.argv[4:] == ["backlog"]
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), backlog))
