"""One request's or one job's usage records, as the hot path holds them (GET /usage/records).

From the raw table: it alone has a row per record. Its sort key leads with the customer, so a
customer's lookup reads only their own granules; an admin's (any customer) scans the table's
request or job column, bounded by the retention. A job has one record per run that ended (a
retried job can have several).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from render_gateway.metering.store import UsageStore

MAX_RECORDS = 1000


@dataclass(frozen=True)
class StoredRecord:
    request_id: str
    job_id: str | None
    timestamp: datetime
    customer_id: str
    model_name: str
    status: str
    error_code: str | None
    gpu_seconds: float
    queue_time_us: int
    inference_time_us: int
    total_time_us: int
    cost_nanos: int
    currency: str
    backend: str | None
    device_uuid: str | None
    metered: bool
    billable: bool


RECORDS_SQL = """
SELECT request_id, job_id, toUnixTimestamp64Micro(timestamp), customer_id, model_name,
    toString(status), error_code, gpu_seconds, queue_time_us, inference_time_us, total_time_us,
    cost_nanos, currency, backend, device_uuid, metered, billable
FROM inference_events
WHERE ({request:Nullable(String)} IS NULL OR request_id = {request:Nullable(String)})
    AND ({job:Nullable(String)} IS NULL OR job_id = {job:Nullable(String)})
    AND ({customer:Nullable(String)} IS NULL OR customer_id = {customer:Nullable(String)})
ORDER BY timestamp, request_id
LIMIT {limit:UInt32}
"""


def find_records(
    store: UsageStore,
    *,
    request_id: str | None = None,
    job_id: str | None = None,
    customer_id: str | None = None,
) -> list[StoredRecord]:
    """The records of ``request_id`` or ``job_id`` (one of them), oldest first; only
    ``customer_id``'s when given (another customer's come back as none)."""
    if (request_id is None) == (job_id is None):
        raise ValueError("exactly one of request_id and job_id")
    parameters = {
        "request": request_id, "job": job_id, "customer": customer_id, "limit": MAX_RECORDS,
    }  # fmt: skip
    found = []
    for row in store.rows(RECORDS_SQL, parameters):
        (rid, jid, at_us, customer, model, status, code, gpu, queue_us, inference_us,
         total_us, cost, currency, backend, device, metered, billable) = row  # fmt: skip
        found.append(
            StoredRecord(
                str(rid),
                str(jid) or None,
                datetime.fromtimestamp(int(at_us) / 1_000_000, UTC),
                str(customer),
                str(model),
                str(status),
                None if code is None else str(code),
                float(gpu),
                int(queue_us),
                int(inference_us),
                int(total_us),
                int(cost),
                str(currency),
                str(backend) or None,
                str(device) or None,
                bool(metered),
                bool(billable),
            )
        )
    return found
