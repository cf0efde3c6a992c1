"""Fixtures shared by the audit tests."""

from support.moto import moto

__all__ = ["moto"]
