"""The CLI's calls to a running gateway: one method per endpoint it uses, one place for errors.

Used when a running gateway owns the embedded usage store (chDB allows one process), so the
CLI asks that gateway instead of opening the store itself. Every request goes to ``base_url``
(the paths are fixed, redirects are not followed).
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import httpx

# The JSON bodies as the gateway answers them; the CLI prints them as they are (``--json``) or
# as a table, the same as the reports it builds itself when it can open the stores.
UsageReport = dict[str, Any]  # GET /usage: the shape of metering.report.usage_report
ReconciliationReport = dict[str, Any]  # POST /reconciliations: ReconcileResult.to_json()


class GatewayError(Exception):
    """A call that got no usable answer; its text is the CLI's message for it."""


class GatewayClient:
    def __init__(self, base_url: str, token: str, timeout: float) -> None:
        self.base_url = base_url
        try:
            self._http = httpx.Client(
                base_url=base_url,
                headers={"Authorization": f"Bearer {token}"},
                timeout=timeout,
                follow_redirects=False,
            )
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
        self._http.close()

    def usage(
        self, customer_id: str | None, from_: str | None, to: str | None, group_by: str
    ) -> UsageReport:
        """GET /usage; ``customer_id`` needs an admin key for anyone but the key's customer."""
        params = {"from": from_, "to": to, "group_by": group_by, "customer_id": customer_id}
        return self._call(
            "GET", "/usage", params={k: v for k, v in params.items() if v is not None}
        )

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
            response = self._http.request(method, path, params=params, json=json)
        except httpx.HTTPError as exc:
            raise GatewayError(f"cannot reach the gateway at {self.base_url}: {exc}") from exc
        if response.status_code != 200:
            raise GatewayError(f"{method} {path} answered {response.status_code}: {response.text}")
        try:
            body = response.json()
        except ValueError as exc:  # json.JSONDecodeError, or bytes that are not UTF-8
            raise GatewayError(f"{method} {path} answered with a body that is not JSON") from exc
        if not isinstance(body, dict):
            raise GatewayError(f"{method} {path} answered JSON that is not an object")
        return body
