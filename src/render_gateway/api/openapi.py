"""Print the gateway's OpenAPI document (``python -m render_gateway.api.openapi``)."""

from __future__ import annotations

import sys
from typing import Any

import orjson

from render_gateway.api.app import create_app
from render_gateway.config import GatewayConfig


def openapi_document() -> dict[str, Any]:
    # Building the app does not start it: no stores are opened, no worker is spawned.
    document: dict[str, Any] = create_app(GatewayConfig()).openapi()
    return document


if __name__ == "__main__":
    sys.stdout.write(
        orjson.dumps(openapi_document(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
        + "\n"
    )
