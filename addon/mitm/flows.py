"""What the router reads from a flow and writes back: headers, the target's names, answers.

Small functions over mitmproxy's flow objects, so `router.py` keeps to the hooks.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Sequence
from typing import Any

from mitmproxy import http
from mitmproxy.proxy import mode_specs

from ..bodies import decode_request
from ..cabundle import env_command
from ..errors import BadRequest, RoutecarError
from ..governance import ErrorFormat, Governance, Mode, Verdict
from ..providers import FORWARD_HEADERS

log = logging.getLogger("routecar")
REDACTED = b"[redacted]"
# Header values a saved flow (or mitmweb) may keep of a governed request: everything else
# (credentials, cookies, routing headers, unknown headers) is replaced with [redacted].
KEEP_IN_FLOWS = FORWARD_HEADERS | {"host", "content-type", "content-length", "content-encoding",
                                   "transfer-encoding", "accept-encoding", "connection", "user-agent"}


def new_trace_id() -> str:
    return f"rt_{int(time.time() * 1000):x}{secrets.token_hex(4)}"


def mode_of(flow: http.HTTPFlow) -> Mode:
    return "reverse" if isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode) else "regular"


def decoded_headers(req: http.Request) -> dict[str, str]:
    """Lower-case names (mitmproxy keeps the case sent); values as text, undecodable bytes kept
    as surrogates (governance checks the headers that matter). Later duplicates win.
    Reads the raw fields: Headers.items() looks every name up again, O(n²)."""
    return {k.decode("latin-1").lower(): v.decode("utf-8", "surrogateescape") for k, v in req.headers.fields}


def request_bytes(req: http.Request, max_body: int) -> bytes:
    # Never mitmproxy's get_content(): it decodes without a bound.
    return decode_request(req.raw_content, req.headers.get_all("content-encoding"), max_body)


def proxy_user(flow: http.HTTPFlow) -> str | None:
    """The proxy-auth user (mitmproxy's proxyauth addon), a tenant identification method."""
    return (flow.metadata.get("proxyauth") or (None,))[0]


def check_forwarded(headers: dict[str, str]) -> None:
    """A header routecar forwards must be text it can send: 400, not a 500 later."""
    for name in FORWARD_HEADERS & set(headers):
        try:
            headers[name].encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(f"header {name!r} is not valid UTF-8", param=name) from None


def header_pairs(req: http.Request) -> list[tuple[str, str]]:
    """Every header as sent, duplicates included (lower-case names)."""
    return [(k.decode("latin-1").lower(), v.decode("utf-8", "surrogateescape")) for k, v in req.headers.fields]


def classify(governance: Governance, flow: http.HTTPFlow, headers: dict[str, str]) -> Verdict:
    """The verdict for this flow. The destination is `request.host` (where mitmproxy connects:
    the CONNECT target in a tunnel); the other names the client gave its target are the
    Host header (in `headers`), an absolute-form authority or HTTP/2 :authority, and the SNI."""
    req = flow.request
    # The method as sent: `Request.method` upper-cases it, and a lower-case `post` is another
    # method to a case-sensitive server (RFC 9110), so it is another spelling here too.
    return governance.classify(req.data.method.decode("latin-1"), req.host, req.path, mode_of(flow), headers,
                               names=(req.authority, flow.client_conn.sni))


def redact_headers(req: http.Request) -> None:
    """Keep the app's credentials and routing headers out of the flow (saved flows, mitmweb)."""
    fields = req.headers.fields
    if any(k.decode("latin-1").lower() not in KEEP_IN_FLOWS for k, _ in fields):
        req.headers.fields = tuple((k, v) if k.decode("latin-1").lower() in KEEP_IN_FLOWS else (k, REDACTED)
                                   for k, v in fields)


def make_response(status: int, body: bytes, headers: Sequence[tuple[str, str]]) -> http.Response:
    return http.Response.make(status, body, http.Headers([(k.encode(), v.encode()) for k, v in headers]))


def error_body(err: RoutecarError, fmt: ErrorFormat) -> bytes:
    """The error in the caller's format: Anthropic's error JSON for Anthropic callers."""
    return json.dumps(err.to_anthropic() if fmt == "anthropic" else err.to_openai()).encode()


def log_how_to_use(server: Any, modes: Sequence[str], confdir: str) -> None:
    """Where the app should point, with the port actually bound (also for port 0)."""
    addrs = server.listen_addrs() if server is not None else []
    if not addrs:
        return
    host, port = addrs[0][0], addrs[0][1]
    host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    url = f"http://{host}:{port}"
    reverse = any(m.startswith("reverse") for m in modes)
    # The CA this proxy signs with: routecar run's, or stock mitmdump's own confdir.
    cmd = env_command(url, reverse=reverse, ca_dir=confdir, env=os.environ)
    if reverse:
        log.info('routecar: reverse mode: eval "$(%s)" in the app\'s shell (base URLs %s/v1 for openai, '
                 "%s for anthropic); dry-run: curl %s/x/fields", cmd, url, url, url)
    else:
        log.info('routecar: regular mode: eval "$(%s)" in the app\'s shell; '
                 "dry-run: curl -x %s http://routecar.local/x/fields", cmd, url)
