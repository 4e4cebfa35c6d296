"""policy_ir v1 (schema `sigma-pol/v1`): parse + validate, canonical form + fingerprint, evaluate.

    >>> from routecar.policy import parse_policy, evaluate
    >>> from routecar.catalog import load_catalog
    >>> p = parse_policy('{"rules": [["cmp", "bench_intelligence", "ge", 0.5]]}')
    >>> d = evaluate(p, load_catalog(), RequestProfile.from_body(body))
"""

from __future__ import annotations

from .cache import PolicyCache
from .evaluate import Decision, Failure, LiveHealth, Ranked, evaluate, static_failures
from .model import Clause, Policy, combine, fingerprint, parse_policy
from .ops import SCHEMA, compile_expr
from .request import RequestProfile, est_cost
from .validate import PolicyErrorItem, iter_errors

__all__ = [
    "SCHEMA", "Clause", "Decision", "Failure", "LiveHealth", "Policy", "PolicyCache", "PolicyErrorItem",
    "Ranked", "RequestProfile", "combine", "compile_expr", "est_cost", "evaluate", "fingerprint",
    "iter_errors", "parse_policy", "static_failures",
]
