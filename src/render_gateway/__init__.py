"""Render: a self-hostable inference gateway for generative media with verifiable billing."""

__version__ = "0.1.0"
