"""What every command shares: `CliError` (one line, exit 2), the console, and how a decision is printed.

On a terminal, output fits its width (table cells wrap). Into a pipe or a file it is
plain text: no colour, no box drawing, one table row per line, never cut or padded
to a fixed width, so `grep` and `awk` see whole ids.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from ..errors import InvalidPolicy
from ..policy import Failure


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


PLAIN_WIDTH = 100_000  # not a terminal: never wrap


def make_console() -> Console:
    """A terminal's own width; plain, unwrapped text when stdout is not a terminal."""
    c = Console(soft_wrap=False)
    return c if c.is_terminal else Console(soft_wrap=False, width=PLAIN_WIDTH, no_color=True, highlight=False)


def print_table(c: Console, table: Table) -> None:
    """A boxed table on a terminal; plain aligned columns (no trailing blanks) otherwise."""
    if c.is_terminal:
        c.print(table)
        return
    table.box, table.show_edge, table.pad_edge, table.title_justify = None, False, False, "left"
    with c.capture() as captured:
        c.print(table)
    c.file.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def print_policy_errors(err: InvalidPolicy) -> None:
    print(f"invalid policy: {len(err.errors)} error(s)", file=sys.stderr)
    for e in err.errors:
        print(f"  {e['path']}: {e['message']}", file=sys.stderr)


def print_warnings(warnings: Sequence[Mapping[str, str]]) -> None:
    for w in warnings:
        print(f"warning: {w['path']}: {w['message']}", file=sys.stderr)


def render_decision(d: Mapping[str, Any], tenant: str | None = None,
                    regions: Mapping[str, str] | None = None, console: Console | None = None) -> None:
    """Print a decision in its `Decision.to_dict()` form, the form `routecar rank` answers and a
    trace stores (`regions`: entry id -> region, which that form does not carry)."""
    regions = regions or {}
    c = console or make_console()
    p = d.get("policy") or {}
    c.print(f"[bold]policy[/] {p.get('fingerprint')}  tenant={tenant or '-'}  no_log={p.get('no_log')}  "
            f"max_attempts={p.get('max_attempts')}  catalog={d.get('catalog_version')}")
    for cl in p.get("clauses") or []:
        label = cl.get("id") or f"rules[{cl.get('index')}]"
        c.print(f"  [{cl.get('index')}] {label:<24} {json.dumps(cl.get('rule'))}"
                + (f"   (from {cl['from']})" if cl.get("from") else ""))
    r = d.get("request") or {}
    c.print(f"[bold]request[/] ~{r.get('prompt_tokens')} prompt tokens, {r.get('out_tokens')} output tokens"
            f"{', tools' if r.get('tools') else ''}{', images' if r.get('vision') else ''}")
    ranked = d.get("ranked") or []
    rank_pos = {x.get("id"): i for i, x in enumerate(ranked, 1)}
    t = Table("entry", "provider", "region", "verdict", "why / rank", title="candidates")
    for cand in d.get("candidates") or []:
        eid = cand.get("id")
        if cand.get("passed"):
            t.add_row(eid, cand.get("provider"), regions.get(eid, "?"), "[green]pass[/]", f"#{rank_pos.get(eid)}")
        else:
            t.add_row(eid, cand.get("provider"), regions.get(eid, "?"), "[red]drop[/]",
                      Failure(**cand["failed"]).reason())
    print_table(c, t)
    keys = [f for _, f in (p.get("canonical") or {}).get("rank", []) if f not in ("est_cost", "id")]
    t = Table("#", "entry", "est. cost (USD)", *keys, title="ranked survivors")
    for i, x in enumerate(ranked, 1):
        t.add_row(str(i), x.get("id"), f"{x.get('est_cost', 0):.6f}",
                  *(json.dumps((x.get("keys") or {}).get(k)) for k in keys))
    print_table(c, t)
    if d.get("selected") is None:
        c.print("[bold red]no candidate[/]: every entry was dropped (see above)")
    else:
        c.print(f"[bold]selected[/] {d['selected']}   fallback: {' -> '.join(d.get('fallback') or []) or '(none)'}")
