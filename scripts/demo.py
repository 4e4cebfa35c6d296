#!/usr/bin/env python3
"""routecar demo: loopback fake providers + the sidecar + an unmodified openai SDK app.

    scripts/demo                      # (creates .venv on first run)
    scripts/demo --db ./demo.db       # keep the traces here (default ~/.routecar/demo-traces.db)

1. starts a fake OpenAI-compatible provider on 127.0.0.1 for each provider of
   the default catalog (openai, anthropic, google, mistral, azure, groq, ...);
2. starts `routecar run` in regular mode with the shipped tenants and rules,
   its providers pointed at those fakes (the real hosts are still what apps call);
3. runs an app that only has HTTPS_PROXY and SSL_CERT_FILE set, once per example
   tenant and once with a request policy header;
4. prints what routecar decided for each call, then `routecar explain` for the
   call whose first choice failed and fell back, and the exact commands to look
   at its traces again: the trace DB is kept (`--db`), everything else it made
   is removed.
Everything it starts is stopped on exit, Ctrl-C included. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.table import Table  # noqa: E402

from routecar.cabundle import default_home, write_bundle  # noqa: E402
from routecar.cli.render import make_console, print_table  # noqa: E402
from tests.fakes import FakeFleet, ProxyProcess  # noqa: E402
from tests.fakes.config import write_loopback_providers  # noqa: E402

PROVIDERS = ["openai", "anthropic", "google", "mistral", "azure", "groq", "deepseek", "scaleway"]
CALLS = [
    {"label": "acme-free (by API key only)", "api_key": "demo-key-acme"},
    {"label": "globex-enterprise", "headers": {"X-Tenant-Id": "globex-enterprise"}},
    {"label": "initech-eu (streaming)", "headers": {"X-Tenant-Id": "initech-eu"}, "stream": True},
    {"label": "umbrella-health (no_log)", "headers": {"X-Tenant-Id": "umbrella-health"}},
    {"label": "stark-vip (first choice down)", "headers": {"X-Tenant-Id": "stark-vip"}},
    {"label": "wayne-mixed", "headers": {"X-Tenant-Id": "wayne-mixed"}},
    {"label": "header policy: vision, price_out <= 3",
     "headers": {"X-Route-Policy": json.dumps({"rules": [["has", "capabilities", "vision"],
                                                         ["cmp", "price_out", "le", 3]]})}},
    {"label": "globex-enterprise, Anthropic SDK", "sdk": "anthropic", "headers": {"X-Tenant-Id": "globex-enterprise"}},
    {"label": "initech-eu, Responses API", "sdk": "responses", "headers": {"X-Tenant-Id": "initech-eu"}},
    {"label": "initech-eu asking for openai", "headers": {
        "X-Tenant-Id": "initech-eu", "X-Route-Policy": json.dumps({"rules": [["eq", "provider", "openai"]]})},
     "expect": "no_candidate"},  # a header cannot loosen its tenant's policy
]


def wait_for_traces(db: Path, ids: list[str], timeout: float = 10.0) -> dict[str, tuple]:
    deadline = time.monotonic() + timeout
    rows: dict[str, tuple] = {}
    while time.monotonic() < deadline:
        if db.exists():
            try:
                with sqlite3.connect(db) as con:
                    q = ",".join("?" * len(ids))
                    rows = {r[0]: r for r in con.execute(
                        f"select trace_id, tenant, fingerprint, chosen_entry, est_cost, attempts_count, "
                        f"outcome, no_log, actual_cost, api_in, api_out from decisions where trace_id in ({q})", ids)}
            except sqlite3.Error:
                rows = {}
            if len(rows) == len(ids):
                return rows
        time.sleep(0.05)
    return rows


def routecar_command(*args: str) -> str:
    """A `routecar ...` command line that works when pasted in the user's shell, here."""
    exe = Path(sys.executable).parent / "routecar"
    on_path = shutil.which("routecar", path=os.environ.get("ROUTECAR_CALLER_PATH", os.environ.get("PATH")))
    if on_path and Path(on_path).resolve() == exe.resolve():
        shown = "routecar"
    else:
        rel = os.path.relpath(exe, Path.cwd())
        shown = rel if not rel.startswith("..") else str(exe)
    return shlex.join([shown, *args])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="routecar demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, default=default_home(os.environ) / "demo-traces.db",
                        help="trace database to write and keep (default: $ROUTECAR_HOME/demo-traces.db, "
                             "else ~/.routecar/demo-traces.db)")
    args = parser.parse_args(argv)
    console = make_console()  # fits the terminal; plain text into a pipe
    work = Path(tempfile.mkdtemp(prefix="routecar-demo-"))
    fleet: FakeFleet | None = None
    proxy: ProxyProcess | None = None
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        console.print("[bold]1.[/] fake providers on 127.0.0.1")
        fleet = FakeFleet(PROVIDERS).start()
        providers, keys = write_loopback_providers(fleet.url, work / "providers.yaml")
        for name in PROVIDERS:
            console.print(f"   {name:<10} {fleet.url(name)}")
        # The VIP tenant's first choice (anthropic) answers 503 once: routecar falls back.
        fleet.set_script("anthropic", [{"status": 503, "times": 1}])

        console.print("[bold]2.[/] routecar run (regular mode, tenants from policies/tenants.yaml)")
        home, traces = work / "home", args.db.expanduser().resolve()
        env = {"ROUTECAR_HOME": str(home), **keys}
        proxy = ProxyProcess.start(
            [sys.executable, "-m", "routecar.cli", "run", "--listen", "127.0.0.1:0",
             "--providers", str(providers), "--tenants", str(ROOT / "policies" / "tenants.yaml"),
             "--traces", str(traces)], work, env=env, ready_timeout=60, name="routecar")
        ca = home / "mitmproxy" / "mitmproxy-ca-cert.pem"
        bundle = write_bundle(ca, home / "ca-bundle.pem")
        console.print(f"   listening on {proxy.url}; CA {ca}")

        console.print("[bold]3.[/] the app, with only HTTPS_PROXY and SSL_CERT_FILE set:")
        app_env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        app_env.update(HTTPS_PROXY=proxy.url, SSL_CERT_FILE=str(bundle), NO_PROXY="localhost")
        out = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo_app.py"), json.dumps(CALLS)],
                             env=app_env, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            console.print(out.stderr)
            return 1
        results = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        ids = [r["trace-id"] for r in results if r.get("trace-id")]
        rows = wait_for_traces(traces, ids)

        t = Table("call", "tenant", "fingerprint", "API in -> out", "model @ provider", "cost USD est. / actual",
                  "attempts", "outcome", title="what routecar decided")
        for r in results:
            row = rows.get(r.get("trace-id"), (None,) * 11)
            if r["ok"]:
                what = f"{r['model']} @ {r['provider']}"
            else:
                what = f"[red]{r['status']} {r['error']}[/]"
            cost = (f"{row[4]:.6f}" if row[4] is not None else "-") + " / " + (
                f"{row[8]:.6f}" if row[8] is not None else "-")
            t.add_row(r["label"], row[1] or "-", row[2] or "-", f"{row[9] or '-'} -> {row[10] or '-'}", what, cost,
                      str(row[5] or "-"),
                      (row[6] or "-") + (" (no payload kept)" if row[7] else ""))
        print_table(console, t)

        fell_back = next((tid for tid, row in rows.items() if (row[5] or 0) > 1), None)
        if fell_back:
            console.print(f"[bold]4.[/] routecar explain {fell_back}  (its first choice failed)")
            subprocess.run([sys.executable, "-m", "routecar.cli", "explain", fell_back, "--db", str(traces)],
                           timeout=60)
        console.print("[bold]5.[/] routecar spend --by tenant  (actual cost from the providers' reported usage)")
        subprocess.run([sys.executable, "-m", "routecar.cli", "spend", "--since", "all", "--db", str(traces)],
                       timeout=60)
        # Finished means: every call answered as expected (routed, or the one refusal) and was traced.
        expected = [c.get("expect", "ok") for c in CALLS]
        got = [(rows.get(r.get("trace-id")) or (None,) * 8)[6] for r in results]
        ok = got == expected and len(ids) == len(CALLS) and fell_back is not None
        if not ok:
            console.print(f"expected outcomes {expected}, got {got}")
        console.print("[green]demo finished[/]" if ok else "[red]demo incomplete[/]")
        console.print(f"The traces are kept in {traces}; look again with:", highlight=False, soft_wrap=True)
        again = [["traces", "--db", str(traces)]]
        if fell_back or ids:
            again.append(["explain", fell_back or ids[-1], "--db", str(traces)])
        for command in again:
            console.print("  " + routecar_command(*command), markup=False, highlight=False, soft_wrap=True)
        return 0 if ok else 1
    except KeyboardInterrupt:
        console.print("interrupted: cleaning up")
        return 130
    finally:
        if proxy is not None:
            proxy.stop()
        if fleet is not None:
            fleet.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
