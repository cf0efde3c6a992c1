"""Run by a test as a separate process: submit jobs to a SqliteJobStore and print each id once
its submission has been acknowledged (``submit`` returned), and every CLAIM_EVERY jobs claim
one and print its id once the claim has returned, until killed.

    python job_store_driver.py DB_PATH CLAIM_EVERY
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from urllib.parse import quote

from render_gateway.core.ids import new_job_id
from render_gateway.core.jobs import Job, route_key
from render_gateway.core.lanes import Lane
from render_gateway.stores.jobs import open_job_store

REQUEST = {"family": "sd", "model": "tiny"}
EVERY_ROUTE = frozenset({route_key(REQUEST)})
UNLIMITED = 10**9


async def main(path: Path, claim_every: int) -> None:
    store = open_job_store(f"sqlite://{quote(str(path.resolve()))}")
    await store.open()
    lanes = [Lane.high, Lane.normal, Lane.low]
    count = 0
    while True:
        batch = [
            Job(
                id=new_job_id(),
                customer_id="c1",
                lane=lanes[(count + i) % 3],
                request={**REQUEST, "n": count + i},
                created_at=time.time(),
            )
            for i in range(8)
        ]
        results = await asyncio.gather(
            *(
                store.submit(job, max_queued_for_customer=UNLIMITED, max_queued_total=UNLIMITED)
                for job in batch
            )
        )
        for job, _created in results:
            print(f"ack {job.id}", flush=True)
        count += len(batch)
        if claim_every and count % claim_every == 0:
            claimed = await store.claim(
                time.time(),
                runnable=EVERY_ROUTE,
                served=EVERY_ROUTE,
                holder="driver",
                lease_seconds=60.0,
            )
            if claimed is not None:
                print(f"running {claimed.id}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
