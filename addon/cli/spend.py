"""`routecar spend`: calls, tokens, estimated vs actual cost, fallbacks and failures over a time range.

A thin shell over `traces.spend.spend`; the chart is drawn by `cli/chart.py`
(matplotlib, the optional `chart` extra).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from rich.table import Table

from ..traces.spend import GROUPS, MEASURES, SpendRow, check_groups, spend
from ..traces.store import parse_since
from .chart import draw_spend
from .render import CliError, make_console, print_table
from .traces import open_store


def parse_when(text: str, now: float) -> float:
    """`7d` (that long ago), `2026-01-31` (UTC midnight) or an ISO date-time (UTC unless it says)."""
    try:
        return now - parse_since(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError(f"invalid time {text!r}: give a duration (90m, 7d) or a date (2026-01-31, "
                       "2026-01-31T12:00)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _range(args: argparse.Namespace, now: float) -> tuple[float | None, float | None]:
    since = parse_when(args.since, now) if args.since and args.since != "all" else None
    until = parse_when(args.until, now) if args.until else None
    if since is not None and until is not None and until <= since:
        raise CliError("--until must be after --since")
    return since, until


def _label(ts: float | None, default: str) -> str:
    return default if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def cmd_spend(args: argparse.Namespace) -> int:
    """Spend from the trace store: calls, tokens, estimated vs actual cost, fallbacks and failures,
    grouped by tenant, model, provider, entry and/or day (UTC) over a time range.

    Example: routecar spend                                  # last 30 days, by tenant
             routecar spend --by tenant,day --since 7d
             routecar spend --by model,provider --since 2026-01-01 --until 2026-02-01 --csv > jan.csv
             routecar spend --by day --tenant acme-free --json
             routecar spend --since 30d --chart spend.png     # actual cost per day, stacked by tenant
    """
    try:
        by = check_groups([k.strip() for k in args.by.split(",") if k.strip()])
    except ValueError as e:
        raise CliError(str(e)) from None
    since, until = _range(args, time.time())
    with open_store(args.db) as store:
        try:
            rows = spend(store, by, since_ts=since, until_ts=until, tenant=args.tenant)
            chart_rows = None
            if args.chart:
                split = next((k for k in by if k != "day"), "tenant")
                chart_rows = spend(store, ["day", split], since_ts=since, until_ts=until, tenant=args.tenant)
        except ValueError as e:
            raise CliError(str(e)) from None
    period = ("all time" if since is None and until is None
              else f"from {_label(since, 'the first trace')} until {_label(until, 'now')}")
    if args.json:
        print(json.dumps({"from": since, "until": until, "by": by, "rows": [r.to_dict(by) for r in rows]},
                         indent=2))
    elif args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow([*by, *MEASURES])
        for r in rows:
            writer.writerow([*r.keys, *(r.to_dict(by)[m] for m in MEASURES)])
    else:
        print_table(make_console(), _table(rows, by, period))
    if chart_rows is not None:
        split = next((k for k in by if k != "day"), "tenant")
        try:
            draw_spend(chart_rows, split, args.chart, f"routecar spend, {period}")
        except ImportError:
            raise CliError("--chart needs matplotlib: pip install 'routecar[chart]'") from None
        except OSError as e:
            raise CliError(f"cannot write {args.chart}: {e.strerror or e}") from None
        print(f"chart written to {args.chart}", file=sys.stderr)
    return 0


def _table(rows: Sequence[SpendRow], by: Sequence[str], period: str) -> Table:
    t = Table(*by, "calls", "tokens in (cached)", "tokens out (reasoning)", "est. cost", "actual cost",
              "unpriced", "fallbacks", "failures", title=f"spend, {period}")
    total = [0, 0, 0, 0, 0, 0.0, 0.0, 0, 0, 0]
    for r in rows:
        t.add_row(*r.keys, str(r.calls), f"{r.input_tokens} ({r.cached_tokens})",
                  f"{r.output_tokens} ({r.reasoning_tokens})", f"${r.est_cost:.6f}", f"${r.actual_cost:.6f}",
                  str(r.unpriced), str(r.fallbacks), f"[red]{r.failures}[/]" if r.failures else "0")
        for i, m in enumerate(MEASURES):
            total[i] += getattr(r, m)
    if len(rows) > 1 and by:
        t.add_section()
        t.add_row("[bold]total[/]", *[""] * (len(by) - 1), str(total[0]), f"{total[1]} ({total[2]})",
                  f"{total[3]} ({total[4]})", f"${total[5]:.6f}", f"${total[6]:.6f}", *map(str, total[7:]))
    if not rows:
        t.caption = "no governed calls in this range"
    return t


def add_spend_command(command: Callable[[str, Any, str], argparse.ArgumentParser]) -> None:
    sp = command("spend", cmd_spend, "calls, tokens, estimated vs actual cost by tenant/model/provider/day")
    sp.add_argument("--db", "--traces", dest="db", metavar="PATH",
                    help="trace database (default: $ROUTECAR_HOME/traces.db, else ~/.routecar/traces.db)")
    sp.add_argument("--by", default="tenant", metavar="KEYS",
                    help=f"comma list of {', '.join(GROUPS)} (default: tenant)")
    sp.add_argument("--since", "--from", dest="since", default="30d",
                    help="start: a duration ago (7d), a date/time (UTC unless given) or 'all' (default: 30d)")
    sp.add_argument("--until", help="end (exclusive), same forms (default: now)")
    sp.add_argument("--tenant", help="only this tenant's calls")
    out = sp.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON: the range, the keys and one object per row")
    out.add_argument("--csv", action="store_true", help="print CSV with a header row (keys, then the measures)")
    sp.add_argument("--chart", metavar="PNG", help="also draw actual cost per day (stacked by the first "
                                                  "non-day key of --by) to this PNG (needs matplotlib)")
