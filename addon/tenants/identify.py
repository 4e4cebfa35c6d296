"""Which tenant a request belongs to: the identification methods, tried in order.

    header      `X-Tenant-Id`
    api_key     the app's own API key, looked up by its sha256 in the tenant table
    proxy_auth  the user of `HTTPS_PROXY=http://TENANT:x@host:port`
    body_user   the request body's `user` (opt-in: not in the addon's default order)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import ConfigError
from .table import Tenant, TenantTable

__all__ = ["DEFAULT_ORDER", "IDENTIFICATION_METHODS", "Identification", "TENANT_HEADER", "identify",
           "validate_order"]

IDENTIFICATION_METHODS: tuple[str, ...] = ("header", "api_key", "proxy_auth", "body_user")
DEFAULT_ORDER: tuple[str, ...] = IDENTIFICATION_METHODS
TENANT_HEADER = "x-tenant-id"


@dataclass(frozen=True)
class Identification:
    """Who a request claims to be. `tenant` is None when the claimed id is unknown."""

    tenant: Tenant | None
    claimed_id: str | None
    method: str


def validate_order(order: Sequence[str]) -> tuple[str, ...]:
    """Check an identification order from configuration; raise ConfigError if bad."""
    unknown = [m for m in order if m not in IDENTIFICATION_METHODS]
    if unknown:
        raise ConfigError(f"unknown tenant identification method(s) {', '.join(map(repr, unknown))}; "
                          f"expected some of: {', '.join(IDENTIFICATION_METHODS)}")
    if len(set(order)) != len(order):
        raise ConfigError(f"tenant identification order repeats a method: {list(order)}")
    return tuple(order)


def identify(order: Sequence[str], *, headers: Mapping[str, str], proxy_user: str | None,
             body_user: str | None, api_key: str | None,
             table: TenantTable) -> Identification | None:
    """Apply the identification methods in `order`; the first that yields a claim wins.

    `headers` must have lower-cased names. An API key that is not in the table
    is not a claim (it may be a real provider key), so the next method is
    tried; every other method claims an id as soon as it has a non-empty
    value, and an id missing from the table gives `tenant=None`.
    Returns None when no method yields a claim.
    """
    for method in validate_order(order):
        if method == "api_key":
            if api_key:
                tenant = table.by_api_key(api_key)
                if tenant is not None:
                    return Identification(tenant, tenant.id, method)
            continue
        if method == "header":
            claim = headers.get(TENANT_HEADER)
        elif method == "proxy_auth":
            claim = proxy_user
        else:
            claim = body_user
        claim = claim.strip() if isinstance(claim, str) else None
        if claim:
            return Identification(table.get(claim), claim, method)
    return None
