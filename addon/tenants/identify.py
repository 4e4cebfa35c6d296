"""Which tenant a request belongs to: the identification methods, which must agree.

    header      `X-Tenant-Id`
    api_key     the app's own API key, looked up by its sha256 in the tenant table
    proxy_auth  the user of `HTTPS_PROXY=http://TENANT:x@host:port`
    body_user   the request body's `user` (opt-in: not in the addon's default order)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..errors import ConfigError, TenantConflict
from ..governance import TENANT_HEADER
from .table import Tenant

__all__ = ["DEFAULT_ORDER", "IDENTIFICATION_METHODS", "Identification", "TenantIndex", "agree", "claims",
           "identify",
           "validate_order"]

IDENTIFICATION_METHODS: tuple[str, ...] = ("header", "api_key", "proxy_auth", "body_user")
DEFAULT_ORDER: tuple[str, ...] = IDENTIFICATION_METHODS


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
           body_user: str | None, api_keys: Sequence[str]) -> Iterator[tuple[str, str]]:
    """(method, value) for each method in `order` that has a value: each raw API key the app
    sent for `api_key` (a second credential header must not hide a tenant's key), a tenant id
    for the others. `headers` must have lower-cased names."""
    for method in validate_order(order):
        if method == "api_key":
            yield from ((method, key) for key in api_keys if key)
            continue
        if method == "header":
            claim = headers.get(TENANT_HEADER)
        elif method == "proxy_auth":
            claim = proxy_user
        else:
            claim = body_user
        claim = claim.strip() if isinstance(claim, str) else None
        if claim:
            yield method, claim


def agree(found: Sequence[Identification]) -> Identification | None:
    """The first claim, when every claim names the same tenant id; two ids raise
    `TenantConflict`: a request cannot borrow another tenant's identity by adding a header.
    (The API key's tenant is not named: the caller only learns that they disagree.)"""
    if len({c.claimed_id for c in found}) > 1:
        raise TenantConflict([(c.method, "a tenant's key" if c.method == "api_key" else repr(c.claimed_id))
                              for c in found])
    return found[0] if found else None


def identify(order: Sequence[str], *, headers: Mapping[str, str], proxy_user: str | None,
             body_user: str | None, api_keys: Sequence[str],
             table: TenantIndex) -> Identification | None:
    """Apply every identification method in `order`: they must agree on the tenant (`agree`).

    An API key that is not in the table is not a claim (it may be a real provider key);
    every other method claims an id as soon as it has a non-empty value, and an id missing
    from the table gives `tenant=None`. Returns the first claim in `order`, or None when
    nothing claims.
    """
    found: list[Identification] = []
    for method, claim in claims(order, headers=headers, proxy_user=proxy_user, body_user=body_user,
                                api_keys=api_keys):
        if method != "api_key":
            found.append(Identification(table.get(claim), claim, method))
        elif (tenant := table.by_api_key(claim)) is not None:
            found.append(Identification(tenant, tenant.id, method))
    return agree(found)
