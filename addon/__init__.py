"""routecar: a sidecar LLM router built as a mitmproxy addon.

The core is a library the tenant's backend can use too:

    from routecar import parse_policy, evaluate, fingerprint, compile_policy
"""

from __future__ import annotations

from .policy import Decision, Policy, RequestProfile, combine, evaluate, fingerprint, parse_policy
from .tenants.rules import compile_policy

__all__ = ["Decision", "Policy", "RequestProfile", "combine", "compile_policy", "evaluate",
           "fingerprint", "parse_policy"]

