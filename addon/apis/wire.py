"""What routecar itself puts on the wire around the shapes: the protocol headers a request
carries to a provider of another shape, and the `GET …/models` list it answers.
Pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from .base import ApiName


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
