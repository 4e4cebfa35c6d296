"""What routecar itself puts on the wire around the shapes: the protocol headers a request
carries to a provider of another shape, and the `GET …/models` list it answers.
Pure functions, no I/O."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from ..errors import BadRequest
from ..policy.request import RequestProfile
from . import SHAPES
from .base import ApiName
from .translate import Translation, api_for, translation


class ListedEntry(Protocol):
    """What a models list needs from a catalog entry (`routecar.catalog.CatalogEntry` fits)."""

    @property
    def id(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def provider(self) -> str: ...


def protocol_headers(headers: Mapping[str, str], api_out: ApiName, defaults: Mapping[str, str]) -> dict[str, str]:
    """The app's headers for a provider speaking `api_out`: another shape's protocol headers
    dropped (`anthropic-*` to a chat provider, `openai-*` to a Messages one), and the shape's
    defaults (`anthropic-version`) filled in when the app sent none."""
    foreign = ("openai-",) if api_out == "messages" else ("anthropic-",)
    out = {k: v for k, v in headers.items() if not k.startswith(foreign)}
    for k, v in defaults.items():
        out.setdefault(k.lower(), v)
    return out


def carriers(api_in: ApiName, body: Mapping[str, Any],
             provider_apis: Mapping[str, Iterable[ApiName]]) -> frozenset[str] | None:
    """The providers that can carry this request (natively or translated), or None when every
    provider can: the `fit:api` check."""
    native_only = bool(SHAPES[api_in].native_only(body))
    ok = frozenset(n for n, apis in provider_apis.items() if api_for(api_in, apis, native_only) is not None)
    return None if len(ok) == len(provider_apis) else ok


def shape_profile(api_in: ApiName, body: Mapping[str, Any],
                  provider_apis: Mapping[str, Iterable[ApiName]]) -> RequestProfile:
    """What evaluation reads of this request: its shape's own fields and `fit:api`."""
    return dataclasses.replace(SHAPES[api_in].profile(body), api_providers=carriers(api_in, body, provider_apis))


def shaped_request(api_in: ApiName, provider_apis: Iterable[ApiName], body: Mapping[str, Any],
                   model: str, entry_id: str) -> tuple[ApiName, dict[str, Any], Translation | None]:
    """(api_out, the provider's request body, the translation or None when native) for
    `entry_id`, on a provider speaking `provider_apis`. BadRequest when the provider cannot
    carry the request or a translation cannot express it."""
    shape = SHAPES[api_in]
    apis = tuple(provider_apis)
    api_out = api_for(api_in, apis, bool(shape.native_only(body)))
    if api_out is None:
        raise BadRequest(f"this {api_in} request cannot be sent to {entry_id}: its provider speaks "
                         f"{', '.join(apis)} (see fit:api)")
    tr = translation(api_in, api_out) if api_out != api_in else None
    return api_out, tr.request(body, model) if tr is not None else shape.for_entry(body, model), tr


def model_list(entries: Iterable[ListedEntry], anthropic: bool = False) -> dict[str, Any]:
    """The entries as OpenAI's model list (`{"object": "list", "data": [...]}`) or Anthropic's
    (`{"data", "has_more", "first_id", "last_id"}`); `id` is the catalog entry id."""
    if anthropic:
        data = [{"type": "model", "id": e.id, "display_name": f"{e.model} ({e.provider})",
                 "created_at": "1970-01-01T00:00:00Z"} for e in entries]
        return {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None}
    return {"object": "list", "data": [{"id": e.id, "object": "model", "created": 0, "owned_by": e.provider}
                                       for e in entries]}
