"""A real moto S3 server process for the audit tests.

No real S3 runs on this machine; moto's S3 server on 127.0.0.1 stands in for it. It is a real
process spoken to over HTTP, so obstore's S3 client (signing, conditional puts, listing) is
exercised exactly as against AWS.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from support.processes import free_port, stop_process, wait_until_ready

MOTO_SERVER = Path(sys.executable).with_name("moto_server")
BUCKET = "render-gateway-audit"
# moto accepts any credentials; explicit ones keep the host's AWS environment out of the test.
S3_CREDENTIALS = {"access_key_id": "testing", "secret_access_key": "testing"}
REGION = "us-east-1"


@dataclass
class Moto:
    endpoint: str
    client: Any  # a boto3 S3 client, for what the store under test must not do itself


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    wait_until_ready(process, f"{endpoint}/moto-api/", log_path, timeout=60)
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=S3_CREDENTIALS["access_key_id"],
        aws_secret_access_key=S3_CREDENTIALS["secret_access_key"],
    )
    client.create_bucket(Bucket=BUCKET)
    yield Moto(endpoint, client)
    stop_process(process)
