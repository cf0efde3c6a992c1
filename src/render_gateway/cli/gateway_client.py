"""The CLI's calls to a running gateway: one method per endpoint it uses, one place for errors.

Used when a running gateway owns the embedded usage store (chDB allows one process), so the
CLI asks that gateway instead of opening the store itself. Every request goes to ``base_url``
(the paths are fixed, redirects are not followed). The calls are ``render_gateway.client``'s
(its retries of 429/503 included); this module only words its errors for the CLI.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx

from render_gateway.client import RenderClient, RenderConnectionError, RenderError

# The JSON bodies as the gateway answers them; the CLI prints them as they are (``--json``) or
# as a table, the same as the reports it builds itself when it can open the stores.
UsageReport = dict[str, Any]  # GET /usage: the shape of metering.report.usage_report
ReconciliationReport = dict[str, Any]  # POST /reconciliations: ReconcileResult.to_json()
CapacityReport = dict[str, Any]  # GET /capacity: application.capacity.capacity_report


class GatewayError(Exception):
    """A call that got no usable answer; its text is the CLI's message for it."""


class GatewayClient:
    def __init__(self, base_url: str, token: str, timeout: float) -> None:
        self.base_url = base_url
        try:
            self._render = RenderClient(base_url, token, timeout=timeout)
        except httpx.InvalidURL as exc:
            raise GatewayError(f"cannot reach the gateway at {base_url}: {exc}") from exc

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._render.close()

    def usage(
        self, customer_id: str | None, from_: str | None, to: str | None, group_by: str
    ) -> UsageReport:
        """GET /usage; ``customer_id`` needs an admin key for anyone but the key's customer."""
        params = {"from": from_, "to": to, "group_by": group_by, "customer_id": customer_id}
        return self._call(
            "GET", "/usage", params={k: v for k, v in params.items() if v is not None}
        )

    def capacity(self, window: float, target_wait: float, model: str | None) -> CapacityReport:
        """GET /capacity (admin keys only)."""
        params = {"window": f"{window:g}", "target_wait": f"{target_wait:g}"}
        if model is not None:
            params["model"] = model
        return self._call("GET", "/capacity", params=params)

    def reconcile(
        self, start: str, end: str, threshold: float, repair: bool
    ) -> ReconciliationReport:
        """POST /reconciliations (admin keys only): one run over [start, end), recorded."""
        body = {"from": start, "to": end, "threshold": threshold, "repair": repair}
        return self._call("POST", "/reconciliations", json=body)

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The one place where a failed call becomes a message: unreachable, a status other
        than 200, or a body that is not a JSON object."""
        try:
            return self._render.run(
                self._render.protocol.json_call(method, path, params=params, json=json)
            )
        except RenderConnectionError as exc:
            raise GatewayError(
                f"cannot reach the gateway at {self.base_url}: {exc.message}"
            ) from exc
        except httpx.InvalidURL as exc:
            raise GatewayError(f"cannot reach the gateway at {self.base_url}: {exc}") from exc
        except RenderError as exc:
            code = "" if exc.code.startswith(("http_", "unreadable_")) else f" {exc.code}"
            raise GatewayError(
                f"{method} {path} answered {exc.status}{code}: {exc.message}"
            ) from exc
