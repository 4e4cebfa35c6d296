"""`routecar traces`, `explain` and `compile`: local debugging over the trace store and tenant rules.

    routecar traces --since 1h --tenant acme-free      # recent decisions, newest first
    routecar explain rt_18f3a...                       # one decision's whole story + a replay
    routecar compile --tenant umbrella-health          # a tenant's policy and the rule behind each clause

`build_parser` in `.main` calls `add_commands`; errors are `CliError`s
(one line, exit 2) like every other command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from ..catalog import load_catalog, parse_catalog
from ..errors import RoutecarError
from ..policy import RequestProfile, evaluate, parse_policy
from ..policy.model import ir_from_summary
from ..shipped import POLICIES
from ..traces.store import TraceStore, default_traces_path, parse_since
from .render import CliError, make_console, print_table, render_decision

DEFAULT_TENANTS = POLICIES / "tenants.yaml"
HEALTH_NOTE = "replay assumes every entry healthy (health at request time is not stored)"


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def open_store(db: str | None) -> TraceStore:
    """The trace DB at `db` (default: routecar's data dir); never creates one."""
    path = Path(db).expanduser() if db else default_traces_path(os.environ)
    if not path.is_file():
        raise CliError(f"no trace database at {path} (routecar run writes it; or pass --db PATH)")
    try:
        return TraceStore(path)
    except (sqlite3.Error, OSError) as e:
        raise CliError(f"cannot open trace database {path}: {e}") from None


# -- traces -------------------------------------------------------------------------------

def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts).strftime("%m-%d %H:%M:%S")


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _actual(row: Mapping[str, Any]) -> str:
    """The actual cost and where its price came from (`*`: the catalog's, genai-prices did not know the model)."""
    cost = _num(row.get("actual_cost"), ".6f")
    return cost + "*" if row.get("cost_source") == "catalog" else cost


def _token_details(row: Mapping[str, Any]) -> str:
    parts = [f"{row[k]} {label}" for k, label in (("cached_tokens", "cached"), ("reasoning_tokens", "reasoning"))
             if row.get(k)]
    return f" ({', '.join(parts)})" if parts else ""


def cmd_traces(args: argparse.Namespace) -> int:
    """List recent routing decisions from the trace store, newest first.

    Example: routecar traces --last 20
             routecar traces --tenant acme-free --since 1h
             routecar traces --fingerprint pol_8f41c2 --json --db /var/lib/routecar/traces.db
    """
    try:
        since_ts = time.time() - parse_since(args.since) if args.since else None
    except ValueError as e:
        raise CliError(str(e)) from None
    with open_store(args.db) as store:
        rows = store.query(tenant=args.tenant, fingerprint=args.fingerprint, since_ts=since_ts,
                           last=args.last)
    if args.json:
        for r in rows:
            for col in ("policy", "decision", "error"):
                r[col] = json.loads(r[col]) if r[col] is not None else None
        print(json.dumps(rows, indent=2, default=str))
        return 0
    t = Table("time", "trace id", "tenant", "policy", "chosen entry", "status", "att.",
              "latency ms", "est. cost", "actual cost", title=f"{len(rows)} trace(s), newest first")
    for n in (1, 4):  # ids are what one copies into `routecar explain`: never wrap them
        t.columns[n].no_wrap = True
    for r in rows:
        flags = "".join(f" {f}" for f in ("no_log", "stream") if r.get(f))
        status = f"{r['status'] if r['status'] is not None else '-'} {r['outcome']}{flags}"
        colour = "green" if r["outcome"] == "ok" else "red"
        t.add_row(_when(r["ts"]), r["trace_id"], r["tenant"] or "-", r["fingerprint"] or "-",
                  r["chosen_entry"] or "-", f"[{colour}]{status}[/]", str(r["attempts_count"]),
                  _num(r["latency_ms"], ".0f"), _num(r["est_cost"], ".6f"), _actual(r))
    if any(r.get("cost_source") == "catalog" for r in rows):
        t.caption = "actual cost*: priced at the catalog's price_in/price_out (genai-prices does not know the model)"
    print_table(make_console(), t)
    return 0


# -- explain ------------------------------------------------------------------------------

def _verdicts(decision: Mapping[str, Any]) -> dict[str, str]:
    return {c["id"]: "pass" if c.get("passed") else f"drop ({(c.get('failed') or {}).get('id')})"
            for c in decision.get("candidates") or []}


def replay(decision: Mapping[str, Any] | None,
           catalog_rows: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    """Re-evaluate a stored decision's policy against its stored catalog snapshot and request.

    `status`: "same", "different" (see `differences`) or "unavailable" (see `reason`)."""
    out: dict[str, Any] = {"status": "unavailable", "reason": None, "differences": [],
                           "note": HEALTH_NOTE}
    if decision is None:
        out["reason"] = "the trace has no decision (the request failed before one was made)"
        return out
    version = decision.get("catalog_version")
    if catalog_rows is None:
        out["reason"] = f"catalog snapshot {version} is not in the trace store"
        return out
    stored_policy = decision.get("policy") or {}
    try:
        catalog = parse_catalog(list(catalog_rows), f"snapshot {version}")
        policy = parse_policy(ir_from_summary(stored_policy), catalog.registry)
        stored = dict(decision.get("request") or {})
        if stored.get("api_providers") is not None:
            stored["api_providers"] = frozenset(stored["api_providers"])
        request = RequestProfile(**{k: v for k, v in stored.items() if k != "out_tokens"})
    except (RoutecarError, TypeError, KeyError) as e:
        out["reason"] = f"cannot rebuild the decision's inputs: {e}"
        return out
    again = evaluate(policy, catalog, request).to_dict()
    diffs = out["differences"]

    def differ(what: str, stored: Any, replayed: Any) -> None:
        if stored != replayed:
            diffs.append({"what": what, "stored": stored, "replay": replayed})

    differ("catalog version", version, catalog.version)
    differ("policy digest", stored_policy.get("digest"), policy.digest)
    differ("selected", decision.get("selected"), again["selected"])
    differ("ranked order", [r.get("id") for r in decision.get("ranked") or []],
           [r["id"] for r in again["ranked"]])
    differ("fallback", list(decision.get("fallback") or []), again["fallback"])
    stored_v, replay_v = _verdicts(decision), _verdicts(again)
    for entry in sorted(stored_v.keys() | replay_v.keys()):
        differ(f"verdict {entry}", stored_v.get(entry), replay_v.get(entry))
    out["status"] = "different" if diffs else "same"
    out["replayed"] = again
    return out


def _attempts_table(attempts: Sequence[Mapping[str, Any]]) -> Table:
    t = Table("#", "entry", "provider / model", "status", "error class", "duration ms", title="attempts")
    for a in attempts:
        ok = isinstance(a["status"], int) and a["status"] < 400
        t.add_row(str(a["n"]), a["entry_id"] or "-", f"{a['provider'] or '-'} / {a['model'] or '-'}",
                  f"[{'green' if ok else 'red'}]{a['status'] if a['status'] is not None else '-'}[/]",
                  a["error_class"] or "-", _num(a["duration_ms"], ".0f"))
    return t


def cmd_explain(args: argparse.Namespace) -> int:
    """The whole story of one routing decision, and a replay that re-evaluates it.

    Shows the policy (each clause and the rule it came from), every candidate with
    pass/fail and the failing clause and value, the ranking with estimated costs,
    every attempt and the outcome. The replay re-evaluates the stored policy against
    the stored catalog snapshot and request; exit status 1 if it decides differently.

    Example: routecar explain rt_18f3a2b4c5d6e7f8a9b0
             routecar explain rt_18f3a2b4c5d6e7f8a9b0 --json --db ./traces.db
             routecar explain rt_18f3a2b4      # a unique prefix is enough
    """
    args.trace_id = args.trace_id.strip()  # pasted from a terminal or `sqlite-utils --csv` (CRLF)
    with open_store(args.db) as store:
        trace = store.get(args.trace_id)
        if trace is None:
            matches = [r[0] for r in store.db.execute(
                "SELECT trace_id FROM decisions WHERE trace_id LIKE ? ESCAPE '\\' LIMIT 3",
                [args.trace_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"])]
            if len(matches) > 1:
                raise CliError(f"{args.trace_id!r} matches several traces ({', '.join(matches[:2])}, ...): "
                               f"give more of the id")
            trace = store.get(matches[0]) if matches else None
        if trace is None:
            raise CliError(f"no trace {args.trace_id!r} in {store.path}")
        version = trace["catalog_version"]
        catalog_rows = store.get_catalog(version) if version else None
    decision, payload = trace["decision"], trace.pop("payload")
    result = replay(decision, catalog_rows)
    code = 1 if result["status"] == "different" else 0
    trace["payload_kept"] = payload is not None
    if args.json:
        trace.pop("policy", None)  # the canonical policy is inside `decision`
        print(json.dumps({"trace": trace, "replay": result}, indent=2, default=str))
        return code
    c = make_console()
    c.print(f"[bold]trace[/] {trace['trace_id']}  {_when(trace['ts'])}  mode={trace['mode'] or '-'}  "
            f"tenant={trace['tenant'] or '-'}  requested model={trace['requested_model'] or '-'}  "
            f"api={trace.get('api_in') or '-'}->{trace.get('api_out') or '-'}")
    if decision is not None:
        regions = {str(r.get("id")): str(r.get("region")) for r in catalog_rows or []}
        render_decision(decision, trace["tenant"], regions=regions, console=c)
    else:
        c.print(f"[bold]policy[/] {trace['fingerprint'] or '-'}: no decision was made")
    if trace["attempts"]:
        print_table(c, _attempts_table(trace["attempts"]))
    colour = "green" if trace["outcome"] == "ok" else "red"
    c.print(f"[bold]outcome[/] [{colour}]{trace['outcome']}[/] status={trace['status']}  "
            f"chosen={trace['chosen_entry'] or '-'}  latency={_num(trace['latency_ms'], '.0f')} ms  "
            f"ttfb={_num(trace['ttfb_ms'], '.0f')} ms  tokens={trace['prompt_tokens'] or '-'}"
            f"+{trace['completion_tokens'] or '-'}{_token_details(trace)}  est. cost={_num(trace['est_cost'], '.6f')}  "
            f"actual cost={_num(trace['actual_cost'], '.6f')}"
            + (f" ({trace['cost_source']} price)" if trace.get("cost_source") else ""))
    if trace["error"]:
        err = trace["error"].get("error", trace["error"])
        c.print(f"[bold]error[/] {err.get('code')}: {err.get('message')}", markup=False)
    c.print("[bold]payload[/] " + ("not kept (no_log)" if trace["no_log"] else
                                   "kept in the payloads table" if payload else "none"))
    if result["status"] == "same":
        c.print("[bold green]replay: same decision[/]")
    elif result["status"] == "unavailable":
        c.print(f"[bold yellow]replay: not possible[/]: {result['reason']}")
    else:
        c.print("[bold red]replay: different decision[/]")
        for d in result["differences"]:
            c.print(f"  {d['what']}: stored {json.dumps(d['stored'])}, replay {json.dumps(d['replay'])}",
                    markup=False)
    c.print(f"  note: {HEALTH_NOTE}")
    return code


# -- compile ------------------------------------------------------------------------------

def cmd_compile(args: argparse.Namespace) -> int:
    """Compile a tenant's policy_ir from the tenant table and rules; show which rule made each part.

    Example: routecar compile --tenant umbrella-health
             routecar compile --tenant acme-free --tenants policies/tenants.yaml --json
    """
    from ..tenants.lookup import TenantLookup, open_tenants
    from ..tenants.rules import compile_policy, load_rules
    source = args.tenants or str(DEFAULT_TENANTS)
    tenants = open_tenants(source, clock=lambda: 0.0)
    if isinstance(tenants, TenantLookup):  # a database: read this one row
        try:
            tenant = tenants.get_blocking(args.tenant)
        finally:
            tenants.close()
        if tenant is None:
            raise CliError(f"unknown tenant {args.tenant!r} in {tenants.label}")
    else:
        table = tenants.current()
        tenant = table.get(args.tenant)
        if tenant is None:
            raise CliError(f"unknown tenant {args.tenant!r} in {source} (known: {', '.join(table.ids())})")
    rules = load_rules(args.rules)
    policy = compile_policy(tenant, rules, load_catalog(args.catalog).registry)
    matched = rules.matching(tenant)
    origin: dict[str, Any] = {
        "no_log": [f"rule:{r.id}" for r in matched if r.no_log],
        "rank": next((f"rule:{r.id}" for r in reversed(matched) if r.rank is not None), None),
        "fallback": next((f"rule:{r.id}" for r in reversed(matched) if r.fallback is not None), None),
    }
    out = {"tenant": tenant.id, "fingerprint": policy.fingerprint, "digest": policy.digest,
           "matched_rules": [r.id for r in matched], "clauses": [c.to_dict() for c in policy.clauses],
           "origin": origin, "policy_ir": policy.to_ir(), "canonical": policy.canonical}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"tenant {tenant.id}: {policy.fingerprint}  (sha256 {policy.digest})")
    print(f"rules matched: {', '.join(out['matched_rules']) or '(none)'}  ({rules.source})")
    for c in policy.clauses:
        print(f"  [{c.index}] {c.label:<24} {json.dumps(c.rule)}   (from {c.from_ or '-'})")
    if not policy.clauses:
        print("  (no clauses: every catalog entry is allowed)")
    print(f"no_log: {str(policy.no_log).lower()}"
          f"   ({'from ' + ', '.join(origin['no_log']) if origin['no_log'] else 'default'})")
    print(f"rank: {json.dumps([list(k) for k in policy.rank])}   ({'from ' + origin['rank'] if origin['rank'] else 'default'})")
    print(f"fallback: max_attempts={policy.max_attempts}"
          f"   ({'from ' + origin['fallback'] if origin['fallback'] else 'default'})")
    print("policy_ir:")
    print(json.dumps(policy.to_ir(), indent=2))
    return 0


# -- parser -------------------------------------------------------------------------------

def add_commands(command: Callable[[str, Any, str], argparse.ArgumentParser],
                 catalog_opts: Callable[[argparse.ArgumentParser], None],
                 tenant_opts: Callable[[argparse.ArgumentParser], None]) -> None:
    def db_opt(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--db", "--traces", dest="db", metavar="PATH",
                        help="trace database (default: $ROUTECAR_HOME/traces.db, else ~/.routecar/traces.db)")

    sp = command("traces", cmd_traces, "list recent routing decisions")
    db_opt(sp)
    sp.add_argument("--tenant", help="only this tenant's traces")
    sp.add_argument("--fingerprint", help="only traces of this policy fingerprint (pol_...)")
    sp.add_argument("--since", help="only traces this recent: 90s, 30m, 1h, 2d, 1w")
    sp.add_argument("--last", type=_positive, default=20, metavar="N", help="at most N traces (default 20)")
    sp.add_argument("--json", action="store_true", help="print JSON instead of a table")

    sp = command("explain", cmd_explain, "the whole story of one decision, with a replay")
    sp.add_argument("trace_id", metavar="TRACE_ID", help="a trace id (x-route-trace-id, `routecar traces`)")
    db_opt(sp)
    sp.add_argument("--json", action="store_true", help="print JSON (trace + replay) instead of text")

    sp = command("compile", cmd_compile, "compile a tenant's policy_ir; show the rule behind each clause")
    sp.add_argument("--tenant", required=True, metavar="ID", help="the tenant's id in the table")
    sp.add_argument("--json", action="store_true", help="print JSON instead of text")
    catalog_opts(sp)
    tenant_opts(sp)
