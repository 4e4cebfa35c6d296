"""The access log: one line per governed call in `routecar run`'s output.

    routecar: rt_19a3f2c4d5e6a1b2c3d4 tenant=acme-free pol_8f41c2 openai/gpt-5.5-mini@openai 200 ok attempts=1 412ms $0.000231

Fields: trace id, tenant, policy fingerprint, entry@provider (`-` when no entry
answered), status, outcome, attempts, duration, actual cost (`$-` when unknown).
Never a payload, never a key: the line is built from identifiers only, and the
one value an app controls freely (a tenant id that is not in the table) is
escaped, cut to 64 characters and scrubbed of anything credential-shaped.
Logged at INFO on the `routecar.access` logger; `routecar run --quiet`
(option `routecar_access_log=false`) turns it off.
"""

from __future__ import annotations

import logging

from .outcome import CallOutcome
from .traces.rows import scrub

log = logging.getLogger("routecar.access")
MAX_FIELD = 64


def _safe(text: str) -> str:
    """Printable, bounded, no spaces (one field), nothing that looks like a credential."""
    text = scrub(text)
    clean = "".join(c if c.isprintable() and not c.isspace() else f"\\x{ord(c):02x}" for c in text[:MAX_FIELD])
    return clean + ("..." if len(text) > MAX_FIELD else "")


def access_line(o: CallOutcome) -> str:
    tenant = o.tenant or (f"?{_safe(o.claimed_tenant)}" if o.claimed_tenant else "-")
    where = f"{o.entry}@{o.provider}" if o.entry else "-"
    cost = f"${o.cost.usd:.6f}" if o.cost is not None else "$-"
    return (f"routecar: {o.trace_id} tenant={tenant} {o.fingerprint or '-'} {where} {o.status} {o.outcome} "
            f"attempts={len(o.attempts)} {o.duration_s * 1000:.0f}ms {cost}")


class AccessLog:
    def __init__(self, logger: logging.Logger = log) -> None:
        self.logger = logger

    def observe(self, o: CallOutcome) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            self.logger.info("%s", access_line(o))
