"""Compiled policies cached by their text, de-duplicated by fingerprint.

A sidecar sees the same few policies over and over (one per tenant or app);
a repeated header costs one dict lookup, not a parse. Policies that differ
only in spelling share one `Policy` object, so its per-catalog memo is shared.
The de-duplication key is the digest *and* which of rank/fallback were written
explicitly: `combine` lets a request's explicit rank/fallback override its
tenant's, so two fingerprint-equal spellings may combine differently and must
not be merged (else the result would depend on which spelling came first).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cachetools import LRUCache

from ..errors import InvalidPolicy
from ..fields import FieldRegistry
from .model import Policy, combine, parse_policy


class PolicyCache:
    def __init__(self, registry: FieldRegistry, maxsize: int = 4096) -> None:
        self.registry = registry
        self._by_text: LRUCache[str | bytes, Policy | InvalidPolicy] = LRUCache(maxsize)
        self._by_identity: LRUCache[str, Policy] = LRUCache(maxsize)
        self._combined: LRUCache[tuple[str, str], Policy] = LRUCache(maxsize)
        self.hits = self.misses = 0

    def parse(self, source: str | bytes | Mapping[str, Any]) -> Policy:
        """parse_policy with a cache; raises InvalidPolicy (also cached) like parse_policy."""
        if isinstance(source, Mapping):
            return self._dedupe(parse_policy(source, self.registry))
        hit = self._by_text.get(source)
        if hit is None:
            self.misses += 1
            try:
                hit = self._dedupe(parse_policy(source, self.registry))
            except InvalidPolicy as e:
                hit = e
            self._by_text[source] = hit
        else:
            self.hits += 1
        if isinstance(hit, InvalidPolicy):
            raise InvalidPolicy(hit.errors)
        return hit

    def combine(self, tenant: Policy, request: Policy) -> Policy:
        key = (tenant.identity, request.identity)
        hit = self._combined.get(key)
        if hit is None:
            hit = self._combined[key] = self._dedupe(combine(tenant, request, self.registry))
        return hit

    def conjunction(self, tenant: Policy | None, request: Policy | None) -> Policy | None:
        """The policy in force: both combined, either alone, or None."""
        if tenant is not None and request is not None:
            return self.combine(tenant, request)
        return tenant or request

    def _dedupe(self, policy: Policy) -> Policy:
        # Same digest *and* same spelling of ids/origins/rules: traces must show the
        # clauses as this policy wrote them, not as an equal policy seen earlier did.
        return self._by_identity.setdefault(policy.identity, policy)
