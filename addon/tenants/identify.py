"""Which tenant a request belongs to: the identification methods, tried in order.

    header      `X-Tenant-Id`
    api_key     the app's own API key, looked up by its sha256 in the tenant table
    proxy_auth  the user of `HTTPS_PROXY=http://TENANT:x@host:port`
    body_user   the request body's `user` (opt-in: not in the addon's default order)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..errors import ConfigError
from .table import Tenant

__all__ = ["DEFAULT_ORDER", "IDENTIFICATION_METHODS", "Identification", "TENANT_HEADER", "TenantIndex", "claims",
           "identify",
           "validate_order"]

IDENTIFICATION_METHODS: tuple[str, ...] = ("header", "api_key", "proxy_auth", "body_user")
DEFAULT_ORDER: tuple[str, ...] = IDENTIFICATION_METHODS
TENANT_HEADER = "x-tenant-id"


class TenantIndex(Protocol):
    """What identification reads: a `TenantTable`, or a looked-up database seen as one."""

    def get(self, tenant_id: str) -> Tenant | None: ...
    def by_api_key(self, raw_key: str) -> Tenant | None: ...


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


def claims(order: Sequence[str], *, headers: Mapping[str, str], proxy_user: str | None,
           body_user: str | None, api_key: str | None) -> Iterator[tuple[str, str]]:
    """(method, value) for each method in `order` that has a value: the raw API key for
    `api_key`, a tenant id for the others. `headers` must have lower-cased names."""
    for method in validate_order(order):
        if method == "api_key":
            claim = api_key
        elif method == "header":
            claim = headers.get(TENANT_HEADER)
        elif method == "proxy_auth":
            claim = proxy_user
        else:
            claim = body_user
        claim = claim.strip() if isinstance(claim, str) and method != "api_key" else claim
        if claim:
            yield method, claim


def identify(order: Sequence[str], *, headers: Mapping[str, str], proxy_user: str | None,
             body_user: str | None, api_key: str | None,
             table: TenantIndex) -> Identification | None:
    """Apply the identification methods in `order`; the first that yields a claim wins.

    `headers` must have lower-cased names. An API key that is not in the table
    is not a claim (it may be a real provider key), so the next method is
    tried; every other method claims an id as soon as it has a non-empty
    value, and an id missing from the table gives `tenant=None`.
    Returns None when no method yields a claim.
    """
    for method, claim in claims(order, headers=headers, proxy_user=proxy_user, body_user=body_user,
                                api_key=api_key):
        if method != "api_key":
            return Identification(table.get(claim), claim, method)
        tenant = table.by_api_key(claim)
        if tenant is not None:
            return Identification(tenant, tenant.id, method)
    return None
