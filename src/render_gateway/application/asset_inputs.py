"""``image``/``mask`` given as an asset URL of this gateway: checked at submit, inlined before
forwarding.

The contract lets a request name an input by its asset URL — the path ``/assets/a_…`` or an
absolute URL on the host the request came in on, signed or not. At submit the caller must be
able to read the asset (its owner, an admin, or the holder of a valid signed URL) and it must be
an image; the field is then stored as the plain path. Before the request goes to a backend the
path becomes a ``data:`` URI of the bytes: a backend never fetches the gateway (it could not
authenticate, and a worker refuses private addresses anyway).
"""

from __future__ import annotations

import base64
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from render_gateway.application.asset_urls import AssetUrlSigner, UrlCheck, is_signed
from render_gateway.application.refusals import RefusalKind, Refused
from render_gateway.auth.principal import Principal
from render_gateway.inference.backend import BackendError
from render_gateway.stores.assets import (
    Asset,
    AssetNotFound,
    AssetStore,
    CorruptAsset,
    is_asset_id,
)

INPUT_FIELDS = ("image", "mask")
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})
_PREFIX = "/assets/"


@dataclass(frozen=True)
class AssetReference:
    asset_id: str
    query: dict[str, str]  # ``expires`` and ``signature`` of a signed URL, else empty

    @property
    def path(self) -> str:
        return _PREFIX + self.asset_id


class NotAnAsset(ValueError):
    """A URL of this gateway's assets that names no asset (e.g. ``/assets/../x``)."""


def asset_reference(value: str, own_hosts: Collection[str]) -> AssetReference | None:
    """The asset a field names if it is an asset URL of this gateway; None for anything else
    (a data URI, another host's URL: forwarded as given)."""
    if value.startswith(_PREFIX):
        parts = urlsplit(value)
    elif value[:8].lower().startswith(("http://", "https://")):
        parts = urlsplit(value)
        if parts.netloc.lower() not in own_hosts or not parts.path.startswith(_PREFIX):
            return None
    else:
        return None
    asset_id = parts.path.removeprefix(_PREFIX)
    if not is_asset_id(asset_id):
        raise NotAnAsset(f"{value[:100]!r} names no asset of this gateway")
    return AssetReference(asset_id, dict(parse_qsl(parts.query)))


def asset_paths(generation: Mapping[str, Any]) -> dict[str, str]:
    """The input fields of a stored request that name an asset (by its plain path)."""
    return {
        name: value
        for name in INPUT_FIELDS
        if isinstance(value := generation.get(name), str) and value.startswith(_PREFIX)
    }


async def inline_asset_inputs(assets: AssetStore, request: Mapping[str, Any]) -> dict[str, Any]:
    """The routed request with every asset input replaced by a ``data:`` URI of its bytes.

    The asset was found readable at submit; if it is gone or corrupt now, the run fails like a
    backend's 400 would (not retriable: a retry cannot bring the bytes back)."""
    generation = dict(request.get("generation", {}))
    for name, path in asset_paths(generation).items():
        asset_id = path.removeprefix(_PREFIX)
        try:
            found, data = await assets.get(asset_id)
        except (AssetNotFound, CorruptAsset):
            raise BackendError(
                f"{name}: asset {asset_id} can no longer be read",
                status=400, code="invalid_request", retriable=False,
            ) from None  # fmt: skip
        generation[name] = f"data:{found.content_type};base64,{base64.b64encode(data).decode()}"
    return {**request, "generation": generation}


class AssetInputs:
    """The submit-time rule: each input naming an asset of this gateway must be readable by the
    caller (owner, admin, or a valid signed URL) and an image; it is kept as the plain path."""

    def __init__(self, assets: AssetStore, urls: AssetUrlSigner) -> None:
        self._assets, self._urls = assets, urls

    async def admit(
        self,
        principal: Principal,
        admin: bool,
        generation: dict[str, Any],
        own_hosts: Collection[str],
    ) -> dict[str, Any]:
        """``generation`` with its asset inputs admitted; invalid refusals naming the field."""
        admitted = dict(generation)
        for name in INPUT_FIELDS:
            value = generation.get(name)
            if not isinstance(value, str):
                continue
            try:
                reference = asset_reference(value, own_hosts)
            except NotAnAsset as exc:
                raise Refused(
                    RefusalKind.invalid, "invalid_request", f"{name}: {exc}", {"field": name}
                ) from exc
            if reference is not None:
                await self._readable(principal, admin, name, reference)
                admitted[name] = reference.path
        return admitted

    async def _readable(
        self, principal: Principal, admin: bool, name: str, reference: AssetReference
    ) -> Asset:
        check = (
            self._urls.check(reference.asset_id, reference.query)
            if is_signed(reference.query)
            else UrlCheck.invalid
        )
        details = {"field": name, "asset_id": reference.asset_id}
        try:
            found: Asset | None = await self._assets.describe(reference.asset_id)
        except AssetNotFound:
            found = None
        readable = found is not None and (
            check is UrlCheck.valid or found.owner == principal.customer_id or admin
        )
        if found is None or not readable:
            why = (
                "its signed URL has expired"
                if check is UrlCheck.expired
                else "no such asset is yours"
            )
            message = f"{name}: cannot use asset {reference.asset_id} ({why})"
            raise Refused(RefusalKind.invalid, "invalid_request", message, details)
        if found.content_type not in IMAGE_TYPES:
            message = f"{name}: asset {reference.asset_id} is {found.content_type}, not an image"
            raise Refused(RefusalKind.invalid, "invalid_request", message, details)
        return found
