"""Fixtures shared by the contract suites: moto's S3 server on 127.0.0.1 (no real S3 runs on
this machine), for the object-store and asset suites' s3:// parameter, and a real redis-server
on a free port (with AOF in a temp dir) for every suite's redis:// parameter."""

from __future__ import annotations

from support.moto import moto
from support.redis_server import redis_server

__all__ = ["moto", "redis_server"]
