"""Fixtures shared by the contract suites: moto's S3 server on 127.0.0.1 (no real S3 runs on
this machine), for the object-store and asset suites' s3:// parameter."""

from __future__ import annotations

from support.moto import moto

__all__ = ["moto"]
