"""Compile rules: tenant attributes -> policy_ir (docs/tenants.md).

`policies/rules.yaml` is a list of rules `{id, when, add}`. `when` tests the
tenant's attributes; every matching rule contributes its `add`: policy_ir
clauses (with `$attribute` substitution in value positions), `no_log`,
`rank` and `fallback`. `compile_ir` is plain dicts; `compile_policy` hands
the result to the policy core for validation and fingerprinting.

    ConfigError
    ├── RuleCompileError    a tenant's attributes do not fit a rule (missing/wrong type)
    └── TenantPolicyError   the compiled policy_ir is invalid (.errors from the core)
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, InvalidPolicy
from ..fields import FieldRegistry
from ..policy import Policy, parse_policy
from ..policy.ops import OPS, SCHEMA
from .table import Tenant

# `from` of every clause compiled from a tenant rule: `rule:<rule id>`. Reserved: a request's
# own clauses may not claim it (engine.check_request_origins).
RULE_ORIGIN = "rule:"
_RULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*\Z")
_REF = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)\Z")
_ADD_KEYS = ("rules", "no_log", "rank", "fallback")


class RuleCompileError(ConfigError):
    """A tenant's attribute is missing or has the wrong type for a rule."""

    def __init__(self, message: str, *, tenant: str, rule: str, attribute: str) -> None:
        super().__init__(message, tenant=tenant)
        self.rule = rule
        self.attribute = attribute


class TenantPolicyError(ConfigError):
    """The policy compiled for a tenant does not validate; `.errors` come from the core."""

    def __init__(self, message: str, *, tenant: str, errors: Sequence[Mapping[str, str]]) -> None:
        super().__init__(message, tenant=tenant)
        self.errors = [dict(e) for e in errors]


# --- the `when` language ----------------------------------------------------
# A test is a function (present, value, operand) -> bool; raising TypeError
# means "this attribute has the wrong type for the operator".

def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _same(a: Any, b: Any) -> bool:
    # true must not equal 1: booleans compare only with booleans.
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _cmp(op: Callable[[float, float], bool]) -> Callable[[bool, Any, Any], bool]:
    def test(present: bool, value: Any, operand: Any) -> bool:
        if not present:
            return False
        if not _num(value):
            raise TypeError("a number")
        return op(value, operand)
    return test


def _contains(present: bool, value: Any, operand: Any) -> bool:
    if not present:
        return False
    if not isinstance(value, (list, tuple)):
        raise TypeError("a list")
    return any(_same(v, operand) for v in value)


_TESTS: dict[str, Callable[[bool, Any, Any], bool]] = {
    "present": lambda present, _v, operand: present == operand,
    "eq": lambda present, v, operand: present and _same(v, operand),
    "ne": lambda present, v, operand: not (present and _same(v, operand)),
    "in": lambda present, v, operand: present and any(_same(v, o) for o in operand),
    "not_in": lambda present, v, operand: not (present and any(_same(v, o) for o in operand)),
    "ge": _cmp(lambda a, b: a >= b),
    "gt": _cmp(lambda a, b: a > b),
    "le": _cmp(lambda a, b: a <= b),
    "lt": _cmp(lambda a, b: a < b),
    "contains": _contains,
}


def _check_operand(op: str, operand: Any) -> str | None:
    scalar = isinstance(operand, (str, int, float, bool))
    if op == "present":
        ok = isinstance(operand, bool)
        expected = "true or false"
    elif op in ("in", "not_in"):
        ok = isinstance(operand, list) and all(isinstance(o, (str, int, float, bool)) for o in operand)
        expected = "a list of strings, numbers or booleans"
    elif op in ("ge", "gt", "le", "lt"):
        ok, expected = _num(operand), "a number"
    else:
        ok, expected = scalar, "a string, number or boolean"
    return None if ok else f"{op} needs {expected}, got {json.dumps(operand)}"


def _parse_when(when: Any) -> tuple[tuple[str, str, Any], ...]:
    """Normalise `when` to (attribute, operator, operand) triples; raise ValueError(path: msg)."""
    if when is None or when == "always":
        return ()
    if not isinstance(when, Mapping):
        raise ValueError(f"when: expected a mapping of attribute tests or 'always', got {json.dumps(when)}")
    tests: list[tuple[str, str, Any]] = []
    for attr, test in when.items():
        path = f"when.{attr}"
        if test is None:
            raise ValueError(f"{path}: null is not a value; use {{present: false}}")
        if isinstance(test, list):
            test = {"in": test}
        elif not isinstance(test, Mapping):
            test = {"eq": test}
        if not test:
            raise ValueError(f"{path}: empty test")
        for op, operand in test.items():
            if op not in _TESTS:
                raise ValueError(f"{path}: unknown operator {op!r} (expected one of: {', '.join(_TESTS)})")
            problem = _check_operand(op, operand)
            if problem:
                raise ValueError(f"{path}.{op}: {problem}")
            tests.append((str(attr), op, operand))
    return tuple(tests)


# --- policy_ir expressions with $references ---------------------------------
# Which positions hold values (and of what kind) is the operator table's (ops.OPS).

def _check_expr(expr: Any, path: str) -> None:
    """Structural check at load; the policy core does the full validation per tenant."""
    if not isinstance(expr, list) or not expr or not isinstance(expr[0], str):
        raise ValueError(f"{path}: expected an expression like [\"eq\", field, value], got {json.dumps(expr)}")
    op, spec = expr[0], OPS.get(expr[0])
    if spec is None:
        raise ValueError(f"{path}[0]: unknown operator {op!r} (expected one of: {', '.join(OPS)})")
    if spec.logical:
        if spec.arity is not None and len(expr) != spec.arity or len(expr) < 2:
            raise ValueError(f"{path}: {op} needs {'one expression' if spec.arity == 2 else 'expressions'}")
        for i, sub in enumerate(expr[1:], 1):
            _check_expr(sub, f"{path}[{i}]")
        return
    if len(expr) != spec.arity:
        raise ValueError(f"{path}: {op} takes {(spec.arity or 0) - 1} arguments, got {len(expr) - 1}")
    for i, arg in enumerate(expr[1:], 1):
        if i not in spec.slots and isinstance(arg, str) and arg.startswith("$"):
            raise ValueError(f"{path}[{i}]: $references are only allowed in value positions")


def _resolve(value: Any, kind: str, ctx: _Ctx, path: str) -> Any:
    if isinstance(value, list):
        if kind != "list":
            return value  # the core reports the type error
        return [_resolve(v, "scalar", ctx, f"{path}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str) or not value.startswith("$"):
        return value
    if value.startswith("$$"):
        return value[1:]  # "$$x" is the literal string "$x"
    m = _REF.match(value)
    if m is None:
        raise ctx.error(value[1:], f"bad reference {value!r} at {path}")
    name = m.group(1)
    if name not in ctx.attributes:
        raise ctx.error(name, f"attribute {name!r} is missing (needed at {path})")
    got = ctx.attributes[name]
    ok = {"scalar": isinstance(got, (str, int, float, bool)),
          "number": _num(got),
          "list": isinstance(got, (list, tuple)) and all(isinstance(v, (str, int, float, bool)) for v in got)}[kind]
    if not ok:
        need = {"scalar": "a string, number or boolean", "number": "a number",
                "list": "a list"}[kind]
        got_type = "list" if isinstance(got, (list, tuple)) else type(got).__name__
        raise ctx.error(name, f"attribute {name!r} must be {need}, got {got_type} "
                              f"{json.dumps(_plain(got))} (at {path})")
    return list(got) if isinstance(got, tuple) else got


def _substitute(expr: Any, ctx: _Ctx, path: str) -> Any:
    op = expr[0]
    if OPS[op].logical:
        return [op, *(_substitute(sub, ctx, f"{path}[{i}]") for i, sub in enumerate(expr[1:], 1))]
    slots = OPS[op].slots
    return [_resolve(arg, slots[i], ctx, f"{path}[{i}]") if i in slots else arg
            for i, arg in enumerate(expr)]


@dataclass(frozen=True)
class _Ctx:
    tenant: str
    rule: str
    attributes: Mapping[str, Any]

    def error(self, attribute: str, message: str) -> RuleCompileError:
        return RuleCompileError(f"tenant {self.tenant!r}, rule {self.rule!r}: {message}",
                                tenant=self.tenant, rule=self.rule, attribute=attribute)


# --- rules ------------------------------------------------------------------

@dataclass(frozen=True)
class TenantRule:
    id: str
    when: tuple[tuple[str, str, Any], ...]  # (attribute, operator, operand), all must hold
    clauses: tuple[Any, ...] = ()           # policy_ir expressions, $references unresolved
    no_log: bool = False
    rank: tuple[Any, ...] | None = None
    fallback: Mapping[str, Any] | None = None

    def matches(self, tenant: Tenant) -> bool:
        for attr, op, operand in self.when:
            present = attr in tenant.attributes
            value = tenant.attributes.get(attr)
            try:
                if not _TESTS[op](present, value, operand):
                    return False
            except TypeError as e:
                raise RuleCompileError(
                    f"tenant {tenant.id!r}, rule {self.id!r}: attribute {attr!r} must be {e} for "
                    f"when.{attr}.{op}, got {json.dumps(_plain(value))}",
                    tenant=tenant.id, rule=self.id, attribute=attr) from None
        return True


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[TenantRule, ...]
    source: str = "<memory>"

    def matching(self, tenant: Tenant) -> tuple[TenantRule, ...]:
        return tuple(r for r in self.rules if r.matches(tenant))

    def ids(self) -> tuple[str, ...]:
        return tuple(r.id for r in self.rules)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _parse_rule(raw: Any, n: int) -> TenantRule:
    if not isinstance(raw, Mapping):
        raise ValueError(f"rule #{n}: expected a mapping with id, when, add")
    rid = raw.get("id")
    if not isinstance(rid, str) or not _RULE_ID.match(rid):
        raise ValueError(f"rule #{n}: id: expected a name of letters, digits and _.:- , got {json.dumps(rid)}")

    def fail(message: str) -> ValueError:
        return ValueError(f"rule {rid!r}: {message}")

    unknown = sorted(set(raw) - {"id", "when", "add", "description"})
    if unknown:
        raise fail(f"unknown key(s) {', '.join(unknown)} (expected id, when, add, description)")
    try:
        when = _parse_when(raw.get("when"))
    except ValueError as e:
        raise fail(str(e)) from None
    add = raw.get("add")
    if not isinstance(add, Mapping) or not add:
        raise fail("add: expected a mapping with some of: " + ", ".join(_ADD_KEYS))
    unknown = sorted(set(add) - set(_ADD_KEYS))
    if unknown:
        raise fail(f"add: unknown key(s) {', '.join(unknown)} (expected some of: {', '.join(_ADD_KEYS)})")
    clauses = add.get("rules", [])
    if not isinstance(clauses, list):
        raise fail("add.rules: expected a list of policy_ir expressions")
    try:
        for i, expr in enumerate(clauses):
            _check_expr(expr, f"add.rules[{i}]")
    except ValueError as e:
        raise fail(str(e)) from None
    no_log = add.get("no_log", False)
    if not isinstance(no_log, bool):
        raise fail(f"add.no_log: expected true or false, got {json.dumps(no_log)}")
    rank = add.get("rank")
    if rank is not None and not (isinstance(rank, list) and all(isinstance(k, list) for k in rank)):
        raise fail(f"add.rank: expected a list of sort keys like [asc, est_cost], got {json.dumps(rank)}")
    fallback = add.get("fallback")
    if fallback is not None:
        attempts = fallback.get("max_attempts") if isinstance(fallback, Mapping) else None
        if (set(fallback or ()) != {"max_attempts"} or not _num(attempts)
                or attempts != int(attempts) or attempts < 1):  # type: ignore[arg-type,operator]
            raise fail(f"add.fallback: expected {{max_attempts: <integer >= 1>}}, got {json.dumps(fallback)}")
    return TenantRule(id=rid, when=when, clauses=tuple(clauses), no_log=no_log,
                      rank=tuple(rank) if rank is not None else None,
                      fallback=dict(fallback) if fallback is not None else None)


def parse_rules(data: Any, *, source: str = "<memory>") -> RuleSet:
    """Validate rules given as data: `{rules: [...]}` or a bare list. Raises ConfigError."""
    items = data.get("rules") if isinstance(data, Mapping) else data
    if not isinstance(items, list):
        raise ConfigError(f"{source}: expected a 'rules:' list")
    problems: list[str] = []
    rules: list[TenantRule] = []
    seen: set[str] = set()
    for n, raw in enumerate(items, 1):
        try:
            rule = _parse_rule(raw, n)
        except ValueError as e:
            problems.append(str(e))
            continue
        if rule.id in seen:
            problems.append(f"rule {rule.id!r}: duplicate id")
        seen.add(rule.id)
        rules.append(rule)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return RuleSet(tuple(rules), source)


def load_rules(path: str | Path) -> RuleSet:
    """Read and validate `rules.yaml`; every problem is named by rule id and path."""
    try:
        data = yaml.safe_load(Path(path).read_text("utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    return parse_rules(data, source=str(path))


# --- compiling ----------------------------------------------------------------

def compile_ir(tenant: Tenant, rules: RuleSet) -> dict[str, Any]:
    """The tenant's policy_ir: the clauses of every matching rule, in file order.

    Clause ids are the rule id (or `<rule id>#n`, from 1, when a rule adds
    several); `from` is `rule:<rule id>`. `no_log` is true if any matching rule
    says so; `rank` and `fallback` come from the last matching rule that sets them.
    """
    clauses: list[dict[str, Any]] = []
    ir: dict[str, Any] = {"schema": SCHEMA, "rules": clauses, "no_log": False}
    for rule in rules.matching(tenant):
        ctx = _Ctx(tenant.id, rule.id, tenant.attributes)
        for i, expr in enumerate(rule.clauses, 1):
            cid = rule.id if len(rule.clauses) == 1 else f"{rule.id}#{i}"
            clauses.append({"id": cid, "rule": _substitute(expr, ctx, f"add.rules[{i - 1}]"),
                            "from": f"{RULE_ORIGIN}{rule.id}"})
        ir["no_log"] = ir["no_log"] or rule.no_log
        if rule.rank is not None:
            ir["rank"] = [list(k) for k in rule.rank]
        if rule.fallback is not None:
            ir["fallback"] = {"max_attempts": int(rule.fallback["max_attempts"])}
    return ir


def compile_policy(tenant: Tenant, rules: RuleSet, registry: FieldRegistry | None = None) -> Policy:
    """compile_ir + the policy core's parse_policy; invalid results name the rule."""
    ir = compile_ir(tenant, rules)
    try:
        return parse_policy(ir, registry)
    except InvalidPolicy as e:
        lines = []
        for err in e.errors:
            m = re.match(r"rules\[(\d+)\]", err["path"])
            origin = ""
            if m and int(m.group(1)) < len(ir["rules"]):
                origin = f" (from {ir['rules'][int(m.group(1))]['from']})"
            lines.append(f"{err['path']}{origin}: {err['message']}")
        raise TenantPolicyError(f"tenant {tenant.id!r}: compiled policy is invalid: " + "; ".join(lines),
                                tenant=tenant.id, errors=e.errors) from e


def require_compiles(tenants: Iterable[Tenant], rules: RuleSet, registry: FieldRegistry | None,
                     label: str) -> None:
    """Raise one ConfigError naming every tenant of the table whose policy does not compile."""
    problems = check_tenants(tenants, rules, registry)
    if problems:
        raise ConfigError(f"{label}: {len(problems)} tenant(s) do not compile: "
                          + "; ".join(e.message for e in problems))


def check_tenants(tenants: Iterable[Tenant], rules: RuleSet,
                  registry: FieldRegistry | None = None) -> list[ConfigError]:
    """Compile every tenant once (e.g. at start or in `routecar check`); return the failures."""
    problems: list[ConfigError] = []
    for tenant in tenants:
        try:
            compile_policy(tenant, rules, registry)
        except ConfigError as e:
            problems.append(e)
    return problems
