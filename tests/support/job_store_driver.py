"""Run by a test as a separate process: submit jobs to a SqliteJobStore and print each id once
its submission has been acknowledged (i.e. ``submit`` returned), until killed.

    python job_store_driver.py DB_PATH CLAIM_EVERY
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from render_gateway.core.ids import new_job_id
from render_gateway.core.jobs import Job
from render_gateway.core.lanes import Lane
from render_gateway.stores.jobs import RecoveryPolicy
from render_gateway.stores.sqlite_jobs import SqliteJobStore


async def main(path: Path, claim_every: int) -> None:
    store = SqliteJobStore(path)
    await store.open(RecoveryPolicy.requeue, max_retries=5)
    lanes = [Lane.high, Lane.normal, Lane.low]
    count = 0
    while True:
        batch = [
            Job(
                id=new_job_id(),
                customer_id="c1",
                lane=lanes[(count + i) % 3],
                request={"n": count + i},
                created_at=time.time(),
            )
            for i in range(8)
        ]
        results = await asyncio.gather(*(store.submit(job) for job in batch))
        for job, _created in results:
            print(f"ack {job.id}", flush=True)
        count += len(batch)
        if claim_every and count % claim_every == 0:
            claimed = await store.claim_next(time.time())
            if claimed is not None:
                print(f"running {claimed.id}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
