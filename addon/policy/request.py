"""What a request needs of a catalog entry: its profile, what it would cost on the entry
(`usd`, the est_cost formula) and whether it fits (`misfit`, the implicit fit checks).

The evaluation's per-request loop inlines `usd` and `misfit` for speed; a property
test in tests/test_policy_evaluate.py pins that copy to these definitions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..catalog import CatalogEntry

DEFAULT_OUT_TOKENS = 256
IMAGE_TOKENS = 85  # a low-detail image; enough to route on, not to bill


def content_size(content: Any) -> tuple[int, bool]:
    """(characters of text, has an image) of one message's content, in any shape:
    a string, or a list of parts (`text`, chat `image_url`, Responses `input_image`,
    Messages `image`)."""
    if isinstance(content, str):
        return len(content), False
    chars, image = 0, False
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, Mapping):
                continue
            kind = part.get("type")
            if kind in ("image_url", "input_image", "image"):
                image = True
                chars += IMAGE_TOKENS * 4
            elif isinstance(part.get("text"), str):
                chars += len(part["text"])
    return chars, image


@dataclass(frozen=True, slots=True)
class RequestProfile:
    """What the router needs to know about one chat request."""

    model: str | None = None
    prompt_tokens: int = 0
    max_tokens: int | None = None
    tools: bool = False
    vision: bool = False
    stream: bool = False
    # The providers that can carry this request in some shape (`fit:api`); None: all of them.
    api_providers: frozenset[str] | None = None

    @property
    def out_tokens(self) -> int:
        return self.max_tokens if self.max_tokens is not None else DEFAULT_OUT_TOKENS

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> RequestProfile:
        """Estimate from an OpenAI chat body: ~4 characters per token, +4 per message."""
        chars, vision, n = 0, False, 0
        messages = body.get("messages")
        if isinstance(messages, list):
            for m in messages:
                if isinstance(m, Mapping):
                    c, img = content_size(m.get("content"))
                    chars += c
                    vision |= img
                    n += 1
        tools = body.get("tools") or body.get("functions")
        if tools:
            chars += len(json.dumps(tools, default=str))
        mt = body.get("max_completion_tokens", body.get("max_tokens"))
        max_tokens = mt if isinstance(mt, int) and not isinstance(mt, bool) and mt >= 0 else None
        model = body.get("model")
        return cls(model if isinstance(model, str) else None, chars // 4 + 4 * n + 3, max_tokens,
                   bool(tools), vision, body.get("stream") is True)

    def to_dict(self) -> dict[str, Any]:
        out = {"model": self.model, "prompt_tokens": self.prompt_tokens, "max_tokens": self.max_tokens,
               "out_tokens": self.out_tokens, "tools": self.tools, "vision": self.vision, "stream": self.stream}
        if self.api_providers is not None:
            out["api_providers"] = sorted(self.api_providers)
        return out


def usd(prompt_tokens: int, out_tokens: int, price_in: float, price_out: float) -> float:
    """THE est_cost formula: USD for this many tokens at these prices (USD per 1M tokens)."""
    return (prompt_tokens * price_in + out_tokens * price_out) / 1_000_000


def usd_sql(prompt_tokens: str, out_tokens: str, price_in: str, price_out: str) -> str:
    """`usd` as an SQLite expression over the given SQL operands (the trace store's
    `candidates` view); the same IEEE operations in the same order, so the same float
    (tests/test_traces_store.py pins it)."""
    return f"(({prompt_tokens}) * ({price_in}) + ({out_tokens}) * ({price_out})) / 1000000"


def est_cost(entry: CatalogEntry, req: RequestProfile) -> float:
    return usd(req.prompt_tokens, req.out_tokens, entry.price_in, entry.price_out)


# The implicit request-fit checks, in the order they are reported: (id, the entry field, the rule).
FIT_CHECKS: tuple[tuple[str, str, str], ...] = (
    ("fit:context_window", "context_window", "prompt_tokens + max_tokens <= context_window"),
    ("fit:max_output", "max_output", "max_tokens <= max_output"),
    ("fit:tools", "capabilities", "request has tools: capabilities must include 'tools'"),
    ("fit:vision", "capabilities", "request has images: capabilities must include 'vision'"),
    ("fit:api", "provider", "the provider must speak the request's API shape, or a translation must reach it"),
)
FIT_RULES = {check: rule for check, _, rule in FIT_CHECKS}


def misfit(need: int, max_tokens: int | None, tools: bool, vision: bool,
           context_window: int, max_output: int, has_tools: bool, has_vision: bool) -> int | None:
    """THE fit checks: the index in FIT_CHECKS of the first one an entry with these limits fails
    for a request needing `need` tokens in all, or None. (Positional and flat: called per entry.)"""
    if need > context_window:
        return 0
    if max_tokens is not None and max_tokens > max_output:
        return 1
    if tools and not has_tools:
        return 2
    if vision and not has_vision:
        return 3
    return None


def fit_failure(entry: CatalogEntry, req: RequestProfile) -> tuple[str, str, Any] | None:
    """The implicit request-fit checks: (check id, field, entry value) of the first that fails."""
    caps = entry.capabilities
    n = misfit(req.prompt_tokens + (req.max_tokens or 0), req.max_tokens, req.tools, req.vision,
               entry.context_window, entry.max_output, "tools" in caps, "vision" in caps)
    if n is None:
        if req.api_providers is None or entry.provider in req.api_providers:
            return None
        n = 4   # fit:api: checked apart from `misfit` (a per-provider set, not an entry limit)
    check, field_name, _ = FIT_CHECKS[n]
    value = getattr(entry, field_name)
    return check, field_name, list(value) if field_name == "capabilities" else value
