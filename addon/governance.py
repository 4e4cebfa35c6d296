"""What routecar does with a request to a provider: route, answer, pass or refuse (fail closed).

`Governance.classify(method, host, path, mode, headers)` looks only at the
request line and headers and returns a `Verdict`. Whether the request is
*governed* (a routing header, an identified tenant, a default) is the engine's
question; the router applies the verdict to governed requests only and leaves
ungoverned ones untouched. Decision table, first match wins:

    where                                         what                           verdict
    regular mode, target routecar.local           anything                       DRY_RUN
    reverse mode                                  path starts with /x/, or is    DRY_RUN
                                                    /metrics (Prometheus)
    regular mode, no name of the target is a      anything                       OUTSIDE
      provider host
    provider-bound (reverse mode: every request)  the target's names disagree    REFUSE 400
                                                  (host, Host, authority, SNI)
                                                  a method/URL override header   REFUSE 400
                                                  clean path under an operator   PASSTHROUGH
                                                    passthrough prefix
                                                  exactly <base><suffix> of a    ROUTE / ANSWER
                                                    Shape, its method, no query or
                                                    exactly one the Shape accepts
                                                  that path with another query   REFUSE 400
                                                  that path, another method      REFUSE 405
                                                  anything else                  REFUSE 404

Paths are compared as sent, byte for byte: a trailing slash, another case, `;x=1`,
percent-encoding, dot segments or `//` are other paths, hence refused. So are query
strings: a query can change what a provider does, and routecar builds the provider's
URL itself. The one exception is a query an official SDK always sends that means
nothing to routing (`Shape.queries`, compared byte for byte: the anthropic SDK's
`client.beta.messages` calls `POST /v1/messages?beta=true`); it is accepted and
dropped, never forwarded. A new API
shape plugs in as one more `Shape` (e.g. `Shape("POST", "/responses", Kind.ROUTE,
"responses")`, or `Shape("GET", "/models", Kind.ANSWER, "models")` for the list of
models routecar answers itself) and a branch in the router for its `api`.
No mitmproxy import here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal
from urllib.parse import unquote

from .errors import BadRequest, ConfigError, UnsupportedEndpoint

Mode = Literal["regular", "reverse"]
ErrorFormat = Literal["openai", "anthropic"]

LOCAL_HOST = "routecar.local"
POLICY_HEADER = "x-route-policy"
TENANT_HEADER = "x-tenant-id"
ROUTING_HEADERS = (POLICY_HEADER, TENANT_HEADER)
# Headers some servers and frameworks take to mean another method or another path
# than the request line's: a governed request must mean what its request line says.
OVERRIDE_HEADERS = frozenset({"x-http-method-override", "x-http-method", "x-method-override",
                              "x-original-method", "x-original-url", "x-rewrite-url"})
# Hosts whose callers speak the Anthropic API: refusals use Anthropic's error JSON.
ANTHROPIC_HOSTS = frozenset({"api.anthropic.com"})
DEFAULT_BASE_PATHS = frozenset({"/v1"})


METRICS_PATH = "/metrics"   # Prometheus scrapes it at routecar.local, or the sidecar's own address


class Kind(StrEnum):
    OUTSIDE = "outside"          # not for a provider: not routecar's business
    DRY_RUN = "dry_run"          # routecar's own /x/... endpoints
    ROUTE = "route"              # a shape routecar routes (Verdict.api says which)
    ANSWER = "answer"            # answered by routecar for the caller's policy (e.g. GET …/models)
    PASSTHROUGH = "passthrough"  # operator-listed prefix: forwarded unchanged, minus routing headers
    REFUSE = "refuse"            # 4xx unsupported_endpoint when governed


class Disposition(StrEnum):
    """What became of a governed request, as its trace row says."""

    ROUTED = "routed"            # a provider answered (its error too, when it was the caller's fault)
    REFUSED = "refused"          # routecar answered 4xx before (or instead of) any provider call
    FAILED = "failed"            # routecar could not get an answer (5xx, a stream that broke)
    PASSTHROUGH = "passthrough"  # forwarded unchanged under an operator passthrough prefix


@dataclass(frozen=True)
class Shape:
    method: str
    suffix: str      # after the base path, e.g. "/chat/completions"
    kind: Kind       # ROUTE or ANSWER
    api: str         # the router's name for it, e.g. "chat"
    queries: frozenset[str] = frozenset()   # the exact query strings accepted (and dropped)


# The anthropic SDK's `client.beta.messages.create/stream` mark their calls `?beta=true`
# (its beta features travel in the `anthropic-beta` header, which is forwarded).
ANTHROPIC_BETA = "beta=true"

SHAPES: tuple[Shape, ...] = (
    Shape("POST", "/chat/completions", Kind.ROUTE, "chat"),
    Shape("POST", "/responses", Kind.ROUTE, "responses"),
    Shape("POST", "/messages", Kind.ROUTE, "messages", frozenset({ANTHROPIC_BETA})),
    Shape("GET", "/models", Kind.ANSWER, "models"),   # the caller's policy's entries (Engine.models)
)


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    api: str | None = None            # ROUTE/ANSWER: the shape's api
    status: int = 0                   # REFUSE: the HTTP status
    reason: str = ""                  # REFUSE: what is wrong, for the error message
    error_format: ErrorFormat = "openai"

    def refusal(self, *, tenant: str | None, fingerprint: str | None) -> UnsupportedEndpoint:
        """The error for a governed call routecar does not route (REFUSE), or answers only once
        its shape's answer is built (ANSWER)."""
        if self.kind is Kind.ANSWER:
            return UnsupportedEndpoint(f"routecar does not answer {self.api} yet", tenant=tenant,
                                       fingerprint=fingerprint)
        return UnsupportedEndpoint(self.reason, status=self.status or 404, tenant=tenant, fingerprint=fingerprint)


def normal_host(name: str) -> str:
    """A host name as routecar compares it: lower case, no port, no trailing dot(s)."""
    host = name.strip().lower()
    if host.startswith("["):
        host = host[1:host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


# A passthrough path must mean the same to every server: plain segments only (no
# percent-encoding, dot segments, empty segments, `;` parameters or backslashes).
_CLEAN_PATH = re.compile(r"(?:/(?!\.\.?(?:/|\Z))[A-Za-z0-9._~!$&'()*+,=:@-]+)+/?\Z")


def clean_path(path: str) -> bool:
    return bool(_CLEAN_PATH.match(path))


def loose_path(path: str) -> str:
    """How a lenient server might read `path`: decoded, lower case, `;params`, dot and empty
    segments gone. Only used to explain a refusal and to recognise Anthropic callers."""
    text = path.split("?", 1)[0].split("#", 1)[0]
    for _ in range(3):  # double encoding
        text = unquote(text)
    out: list[str] = []
    for seg in text.replace("\\", "/").lower().split("/"):
        seg = seg.split(";", 1)[0].strip()
        if seg in ("", "."):
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    return "/" + "/".join(out)


@dataclass(frozen=True)
class Governance:
    """The classifier, configured once from providers.yaml and the routecar_* options."""

    provider_hosts: frozenset[str]
    base_paths: frozenset[str] = DEFAULT_BASE_PATHS
    passthrough: tuple[str, ...] = ()
    shapes: tuple[Shape, ...] = SHAPES
    _paths: dict[str, Shape] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "provider_hosts", frozenset(normal_host(h) for h in self.provider_hosts))
        # Computed once: classify runs on every request.
        object.__setattr__(self, "_paths", {base.rstrip("/") + s.suffix: s
                                            for base in sorted(self.base_paths) for s in self.shapes})
        for prefix in self.passthrough:
            if not prefix.startswith("/") or not clean_path(prefix):
                raise ConfigError(f"routecar_passthrough: {prefix!r} is not a plain path prefix "
                                  "(/segment/..., no percent-encoding, dot segments or parameters)")
            for path in self.paths():
                # Compared loosely: a prefix a lenient provider would read as covering a
                # governed path would let any spelling of that path through ungoverned.
                low = prefix.lower().rstrip("/")
                if path.lower() == low or path.lower().startswith(low + "/"):
                    raise ConfigError(f"routecar_passthrough: {prefix!r} covers {path}, which routecar "
                                      "governs; list narrower prefixes")

    def paths(self) -> dict[str, Shape]:
        """Every exact path routecar routes or answers, with its shape."""
        return self._paths

    def classify(self, method: str, host: str, path: str, mode: Mode, headers: Mapping[str, str],
                 names: Iterable[str | None] = ()) -> Verdict:
        """`host` is where the request goes; `names` the other names it gives its target
        (Host header, absolute-form authority, TLS SNI; unused in reverse mode). `headers`
        have lower-case names."""
        target = normal_host(host)
        if mode == "regular":
            if target == LOCAL_HOST:
                return Verdict(Kind.DRY_RUN)
            others = {normal_host(n) for n in (*names, headers.get("host")) if n}
            if not ({target} | others) & self.provider_hosts:
                return Verdict(Kind.OUTSIDE)
        elif path.startswith("/x/") or path == METRICS_PATH:
            return Verdict(Kind.DRY_RUN)
        else:
            others = set()

        def refuse(status: int, reason: str) -> Verdict:
            fmt: ErrorFormat = "anthropic" if self._anthropic(target, path, headers) else "openai"
            return Verdict(Kind.REFUSE, status=status, reason=reason, error_format=fmt)

        if others - {target}:
            return refuse(400, f"the request names more than one host ({', '.join(sorted(others | {target}))})")
        override = [h for h in OVERRIDE_HEADERS if h in headers]
        if override:
            return refuse(400, f"{min(override)} is not accepted: the request line alone says what is called")
        bare, sep, query = path.partition("?")
        if self._passthrough(bare):
            return Verdict(Kind.PASSTHROUGH)
        shape = self._paths.get(bare)
        if shape is not None:
            if method != shape.method:
                return refuse(405, f"{method} {bare}: only {shape.method} is supported")
            if sep and query not in shape.queries:
                but = f" but {' or '.join('?' + q for q in sorted(shape.queries))}" if shape.queries else ""
                return refuse(400, f"{bare} takes no query string{but} (routecar builds the provider's URL)")
            return Verdict(shape.kind, api=shape.api)
        return refuse(404, self._why(method, path))

    def _passthrough(self, bare: str) -> bool:
        if not self.passthrough or not clean_path(bare):
            return False
        return any(bare == p or bare.startswith(p.rstrip("/") + "/") for p in self.passthrough)

    def _anthropic(self, host: str, path: str, headers: Mapping[str, str]) -> bool:
        if "anthropic-version" in headers or host in ANTHROPIC_HOSTS:
            return True
        loose = loose_path(path)
        return any(loose == f"{b}/messages" or loose.startswith(f"{b}/messages/") for b in self.base_paths)

    def _why(self, method: str, path: str) -> str:
        loose = loose_path(path)
        for exact, shape in self.paths().items():
            if loose == exact.lower():
                return (f"{method} {path} is not {exact} as routecar routes it: paths are matched "
                        "exactly (no trailing slash, other case, parameters, encoding or dot segments)")
        routed = ", ".join(f"{s.method} {p}" for p, s in self.paths().items())
        return f"routecar does not govern {method} {path} (it routes {routed}), so it refuses it"


def check_routing_headers(fields: Sequence[tuple[bytes, bytes]]) -> None:
    """A routing header must come once, as UTF-8 text: raise BadRequest otherwise.

    `fields` are the raw header fields (name, value), any case.
    """
    seen: set[str] = set()
    for raw_name, raw_value in fields:
        name = raw_name.decode("latin-1").lower()
        if name not in ROUTING_HEADERS:
            continue
        title = "X-Route-Policy" if name == POLICY_HEADER else "X-Tenant-Id"
        if name in seen:
            raise BadRequest(f"{title} is sent more than once", param=title)
        seen.add(name)
        try:
            raw_value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"{title} is not valid UTF-8", param=title) from None


def has_routing_header(headers: Mapping[str, str]) -> bool:
    return any(h in headers for h in ROUTING_HEADERS)
