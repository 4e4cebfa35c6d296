"""Warnings about a valid policy that the catalog in service makes suspicious.

`["eq", "region", "EU"]`, `["eq", "provider", "openia"]` and
`["has", "capabilities", "tool"]` are legal policy_ir (a catalog may gain that
value later), but they are almost always typos that otherwise show up only as
`no_candidate`. `catalog_warnings` names each such value with the values the
catalog does hold and a "did you mean". As in jsonschema, validity and these
hints are separate questions: a warning never makes a policy invalid.

    >>> catalog_warnings(parse_policy({"rules": [["eq", "region", "EU"]]}), load_catalog())
    [PolicyErrorItem(path='rules[0][2]', message="no catalog entry has region 'EU' (did you mean 'eu'?); known: cn, eu, us")]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..catalog import Catalog
from ..fields import NUMERIC
from .model import Policy
from .spelling import suggest_value
from .validate import PolicyErrorItem

__all__ = ["catalog_warnings"]

MAX_SHOWN = 12  # known values listed in one warning


def catalog_warnings(policy: Policy, catalog: Catalog) -> list[PolicyErrorItem]:
    """Every value in `policy` that no entry of `catalog` has, and every comparison no
    entry can pass (a price per token where the catalog has per 1M, a score out of 100)."""
    known = _known_values(catalog)
    out: list[PolicyErrorItem] = []
    for c in policy.clauses:
        labelled = c.id is not None or c.from_ is not None
        base = f"rules[{c.index}].rule" if labelled else f"rules[{c.index}]"
        for path, expr in _leaves(c.rule, base):
            out.extend(_check_leaf(expr, path, known, catalog))
    return out


def _known_values(catalog: Catalog) -> dict[str, set[Any]]:
    """Field -> the values entries hold (list fields contribute each element)."""
    known: dict[str, set[Any]] = {}
    for row in catalog.rows:
        for name, value in row.items():
            values = value if isinstance(value, (list, tuple)) else [value]
            known.setdefault(name, set()).update(v for v in values if v is not None)
    return known


def _leaves(expr: Any, path: str) -> Iterator[tuple[str, list[Any]]]:
    """(path, leaf expression) of an already validated expression, as written."""
    op = expr[0]
    if op in ("and", "or"):
        for i, sub in enumerate(expr[1:], start=1):
            yield from _leaves(sub, f"{path}[{i}]")
    elif op == "not":
        yield from _leaves(expr[1], f"{path}[1]")
    else:
        yield path, expr


def _check_leaf(expr: list[Any], path: str, known: Mapping[str, set[Any]],
                catalog: Catalog) -> Iterator[PolicyErrorItem]:
    op, name = expr[0], expr[1]
    f = catalog.registry.get(name)
    if f is None or f.source not in ("catalog", "extra") or name not in known:
        return  # per-request and live fields (est_cost, healthy, latency_ms): nothing to compare
    if op == "cmp":
        yield from _check_range(name, expr[2], expr[3], path, known[name])
        return
    if f.type in NUMERIC or f.type == "boolean":
        return
    values = [(f"{path}[2]", expr[2])] if op in ("eq", "ne", "has") else \
        [(f"{path}[2][{i}]", v) for i, v in enumerate(expr[2])]
    what = "capability" if name == "capabilities" else name
    for vpath, v in values:
        if v not in known[name]:
            yield PolicyErrorItem(vpath, f"no catalog entry has {what} {v!r}{suggest_value(v, {str(k) for k in known[name]})}; "
                                         f"known: {_listed(known[name])}")


def _check_range(name: str, cmp: str, bound: float, path: str, values: set[Any]) -> Iterator[PolicyErrorItem]:
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not nums:
        return
    lo, hi = min(nums), max(nums)
    passes = {"ge": hi >= bound, "gt": hi > bound, "le": lo <= bound, "lt": lo < bound}[cmp]
    if not passes:
        yield PolicyErrorItem(f"{path}[3]", f"no catalog entry has {name} {cmp} {bound:g}: "
                                            f"the catalog's values range from {lo:g} to {hi:g}")


def _listed(values: Sequence[Any] | set[Any]) -> str:
    shown = sorted(str(v) for v in values)
    more = f", ... ({len(shown) - MAX_SHOWN} more)" if len(shown) > MAX_SHOWN else ""
    return ", ".join(shown[:MAX_SHOWN]) + more
