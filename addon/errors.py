"""routecar's errors: one hierarchy, each error mapping to one OpenAI-format body.

    RoutecarError                      500 routecar_error
    ├── ConfigError                    bad catalog/providers/tenants/rules file (fails at start)
    │   └── CatalogError
    ├── InvalidPolicy                  400 invalid_policy   (.errors: list of {path, message})
    ├── NoCandidate                    400 no_candidate     (.dropped: why each entry was dropped)
    ├── UnknownTenant                  403 unknown_tenant
    ├── TenantSourceUnavailable        503 tenant_source_unavailable (tenant database down, not cached)
    ├── TenantConflict                 403 tenant_conflict  (identification methods disagree)
    ├── UnsupportedEndpoint            404/405/400 unsupported_endpoint (governed call routecar cannot govern)
    ├── AdminTokenRequired             401 admin_token_required (/x/ details without the operator token)
    ├── BadRequest                     400 invalid_request  (malformed body or routing header)
    │   ├── PayloadTooLarge            413 request_too_large (also once decoded: a compression bomb)
    │   ├── UnsupportedEncoding        415 unsupported_encoding (a request Content-Encoding not decoded)
    │   ├── UnknownEndpoint            404 invalid_request  (no such /x/ endpoint)
    │   └── MethodNotAllowed           405 invalid_request  (an /x/ endpoint, another method)
    ├── MissingProviderKey             500 provider_key_missing (names the env var, never the key)
    ├── UpstreamFailed                 502 upstream_failed  (.attempts: each attempt's outcome)
    └── ShuttingDown                   503 shutting_down    (still running at the drain deadline)

Errors carry context (policy fingerprint, tenant, entry id) and are turned into
the client-facing body only at the edge (`to_openai`, or `to_anthropic` for
callers of the Anthropic API). Library users catch
`RoutecarError`; the CLI prints `str(err)` and exits 2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class RoutecarError(Exception):
    status: int = 500
    code: str = "routecar_error"
    type: str = "server_error"

    def __init__(self, message: str, *, fingerprint: str | None = None,
                 tenant: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fingerprint = fingerprint
        self.tenant = tenant
        self.param = param

    def details(self) -> dict[str, Any]:
        """Extra, error-specific data added to the OpenAI error object."""
        return {}

    def to_openai(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "message": self.message,
            "type": self.type,
            "code": self.code,
            "param": self.param,
        }
        body.update(self.details())
        return {"error": body}

    def to_anthropic(self) -> dict[str, Any]:
        """Anthropic's error JSON (`{"type": "error", "error": {"type", "message"}}`), with
        routecar's `code` and details alongside so both shapes carry the same facts."""
        body: dict[str, Any] = {"type": ANTHROPIC_TYPES.get(self.status, "api_error"),
                                "message": self.message, "code": self.code}
        body.update(self.details())
        return {"type": "error", "error": body}


# Anthropic's error `type` per HTTP status (https://docs.anthropic.com/en/api/errors).
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
                   429: "rate_limit_error", 500: "api_error", 502: "api_error", 503: "overloaded_error",
                   529: "overloaded_error"}


class ConfigError(RoutecarError):
    code = "config_error"


class CatalogError(ConfigError):
    code = "catalog_error"


class InvalidPolicy(RoutecarError):
    status = 400
    code = "invalid_policy"
    type = "invalid_request_error"

    def __init__(self, errors: Sequence[Mapping[str, str]], *, tenant: str | None = None) -> None:
        self.errors = [dict(e) for e in errors]
        lines = "; ".join(f"{e['path']}: {e['message']}" for e in self.errors)
        super().__init__(f"invalid policy ({len(self.errors)} error(s)): {lines}",
                         tenant=tenant, param="X-Route-Policy")

    def details(self) -> dict[str, Any]:
        return {"errors": self.errors}


class NoCandidate(RoutecarError):
    status = 400
    code = "no_candidate"
    type = "invalid_request_error"

    def __init__(self, dropped: Sequence[Mapping[str, Any]], *, fingerprint: str | None = None,
                 tenant: str | None = None) -> None:
        self.dropped = [dict(d) for d in dropped]
        reasons = "; ".join(f"{d['id']}: {d['reason']}" for d in self.dropped[:20])
        more = f" (+{len(self.dropped) - 20} more)" if len(self.dropped) > 20 else ""
        super().__init__(f"no catalog entry satisfies policy {fingerprint}: {reasons}{more}",
                         fingerprint=fingerprint, tenant=tenant)

    def details(self) -> dict[str, Any]:
        return {"dropped": self.dropped}


class UnknownTenant(RoutecarError):
    status = 403
    code = "unknown_tenant"
    type = "permission_error"

    def __init__(self, tenant: str | None, method: str | None = None) -> None:
        how = f" (identified by {method})" if method else ""
        who = repr(tenant) if tenant else "no tenant could be identified"
        super().__init__(f"unknown tenant {who}{how}", tenant=tenant)


class TenantSourceUnavailable(RoutecarError):
    """The tenant database could not answer and the tenant is not (or no longer) cached:
    the call is refused rather than routed as another tenant or passed through ungoverned."""

    status = 503
    code = "tenant_source_unavailable"
    type = "server_error"


class TenantConflict(RoutecarError):
    """Two identification methods name different tenants: routecar will not pick one."""

    status = 403
    code = "tenant_conflict"
    type = "permission_error"

    def __init__(self, claims: Sequence[tuple[str, str]]) -> None:
        # (method, what to show): an API key's tenant is shown by method only.
        self.claims = [tuple(c) for c in claims]
        said = ", ".join(f"{m} says {shown}" for m, shown in self.claims)
        super().__init__(f"tenant identification methods disagree: {said}; send one identity")


class UnsupportedEndpoint(RoutecarError):
    """A governed call routecar cannot route or answer: refused rather than forwarded ungoverned."""

    code = "unsupported_endpoint"
    type = "invalid_request_error"

    def __init__(self, message: str, *, status: int = 404, tenant: str | None = None,
                 fingerprint: str | None = None) -> None:
        super().__init__(message, tenant=tenant, fingerprint=fingerprint)
        self.status = status


class AdminTokenRequired(RoutecarError):
    status = 401
    code = "admin_token_required"
    type = "authentication_error"


class BadRequest(RoutecarError):
    status = 400
    code = "invalid_request"
    type = "invalid_request_error"


class PayloadTooLarge(BadRequest):
    status = 413
    code = "request_too_large"


class UnsupportedEncoding(BadRequest):
    status = 415
    code = "unsupported_encoding"


class UnknownEndpoint(BadRequest):
    status = 404


class MethodNotAllowed(BadRequest):
    status = 405


class MissingProviderKey(RoutecarError):
    code = "provider_key_missing"

    def __init__(self, provider: str, env_var: str, *, fingerprint: str | None = None) -> None:
        self.provider = provider
        self.env_var = env_var
        super().__init__(f"no API key for provider {provider!r}: set the environment variable {env_var}",
                         fingerprint=fingerprint)


class UpstreamFailed(RoutecarError):
    status = 502
    code = "upstream_failed"
    type = "server_error"

    def __init__(self, attempts: Sequence[Mapping[str, Any]], *, fingerprint: str | None = None,
                 tenant: str | None = None) -> None:
        self.attempts = [dict(a) for a in attempts]
        summary = ", ".join(f"{a.get('entry')}: {a.get('status') or a.get('error_class')}" for a in self.attempts)
        super().__init__(f"all {len(self.attempts)} attempt(s) failed: {summary}",
                         fingerprint=fingerprint, tenant=tenant)

    def details(self) -> dict[str, Any]:
        return {"attempts": self.attempts}


class ShuttingDown(RoutecarError):
    status = 503
    code = "shutting_down"
    type = "server_error"
