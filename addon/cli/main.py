"""`routecar` command line: a thin shell over the core. Every error is one clear line, exit 2.

    routecar run                       # the sidecar on 127.0.0.1:8080 (regular proxy)
    routecar env                       # shell exports for zero-code adoption
    routecar check policy.json         # fingerprint + canonical form, or every error
    routecar fields                    # the fields rules can use
    routecar rank policy.json          # the full decision, without calling a provider
    routecar compile --tenant acme-free --tenants policies/tenants.yaml
    routecar traces --last 20          # recent decisions
    routecar explain rt_...            # the whole story of one decision
    routecar spend --by tenant,day     # calls, tokens, estimated vs actual cost
    routecar demo                      # fake providers + sidecar + the official SDK
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from ..catalog import DEFAULT_CATALOG, load_catalog
from ..errors import InvalidPolicy, RoutecarError
from ..policy import parse_policy
from ..policy.hints import catalog_warnings
from ..policy.ops import describe_fields
from ..providers import DEFAULT_PROVIDERS
from ..shipped import POLICIES
from .check import check_config, providers_arg, tenant_kwargs
from .inputs import read_policy, read_request
from .render import CliError, make_console, print_policy_errors, print_table, print_warnings, render_decision
from .spend import add_spend_command
from .traces import add_commands

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLE_REQUEST = {"messages": [{"role": "user", "content": "Summarise our Q3 churn numbers in 3 bullets."}]}


# -- commands ----------------------------------------------------------------------------

def cmd_check(args: argparse.Namespace) -> int:
    """Validate a policy (JSON or YAML): print its fingerprint, one line per rule with its id,
    and warnings for values no catalog entry has; or every error with its path.
    Without a policy, check the configuration the sidecar would start with instead.

    Example: routecar check policies/examples/free-tier.json
             echo '{"rules":[["eq","region","eu"]]}' | routecar check -
             routecar check --tenants policies/tenants.yaml      # catalog, providers, every tenant
             routecar check --price-threshold 0.1                # also: catalog prices vs genai-prices
    """
    if args.policy is None:
        return check_config(args)
    catalog = load_catalog(args.catalog)
    try:
        policy = parse_policy(read_policy(args.policy), catalog.registry)
    except InvalidPolicy as e:
        if args.json:
            print(json.dumps({"valid": False, "errors": e.errors}, indent=2))
        else:
            print_policy_errors(e)
        return 2
    warnings = [w.to_dict() for w in catalog_warnings(policy, catalog)]
    if args.json:
        print(json.dumps({"valid": True, "fingerprint": policy.fingerprint, "digest": policy.digest,
                          "clauses": [c.to_dict() for c in policy.clauses], "canonical": policy.canonical,
                          "warnings": warnings}, indent=2))
        return 0
    print(f"{policy.fingerprint}  (sha256 {policy.digest})")
    for c in policy.clauses:
        print(f"  [{c.index}] {c.label:<24} {json.dumps(c.rule)}" + (f"   (from {c.from_})" if c.from_ else ""))
    if not policy.clauses:
        print("  (no rules: every catalog entry is allowed)")
    print(f"rank: {json.dumps([list(k) for k in policy.rank])}   fallback: max_attempts={policy.max_attempts}"
          f"   no_log: {str(policy.no_log).lower()}")
    print(f"canonical: {json.dumps(policy.canonical, sort_keys=True)}")
    print_warnings(warnings)
    return 0


def cmd_fields(args: argparse.Namespace) -> int:
    """List the fields rules can use, with type, operators and an example.

    Example: routecar fields --catalog policies/catalog.yaml
    """
    catalog = load_catalog(args.catalog)
    fields = describe_fields(catalog.registry)
    if args.json:
        print(json.dumps(fields, indent=2, default=str))
        return 0
    t = Table("field", "type", "operators", "example", "description", title=f"fields ({catalog.version})")
    for f in fields:
        t.add_row(f["name"], f["type"], " ".join(f["operators"]), json.dumps(f["example"], default=str),
                  f["description"])
    print_table(make_console(), t)
    return 0


def cmd_rank(args: argparse.Namespace) -> int:
    """Evaluate a policy (and/or a tenant's compiled policy) against the catalog; call nothing.

    Example: routecar rank policies/examples/eu-only.json --request policies/examples/requests/tools.json
             routecar rank --tenant initech-eu --tenants policies/tenants.yaml
    """
    from ..engine import Engine  # local: the engine pulls in tenants and health
    from ..health import HealthTracker
    from ..reloading import ReloadingSource
    catalog_src = ReloadingSource(args.catalog, load_catalog, lambda: 0.0)
    engine = Engine(catalog_src, providers_arg(args), os.environ, HealthTracker(lambda: 0.0),
                    **tenant_kwargs(args))
    payload: dict[str, Any] = {}
    if args.policy:
        payload["policy"] = read_policy(args.policy)
    if args.tenant:
        payload["tenant"] = args.tenant
    if not payload:
        raise CliError("give a POLICY and/or --tenant ID")
    payload["request"] = read_request(args.request) if args.request else EXAMPLE_REQUEST
    decision = engine.rank_decision(payload)
    warnings = [w.to_dict() for w in catalog_warnings(decision.policy, decision.catalog)]
    if args.json:
        print(json.dumps({**decision.to_dict(), "tenant": args.tenant, "warnings": warnings}, indent=2, default=str))
    else:
        render_decision(decision.to_dict(), args.tenant, regions={e.id: e.region for e in decision.catalog.entries})
        print_warnings(warnings)
    return 0 if decision.selected else 1


def cmd_env(args: argparse.Namespace) -> int:
    """Print shell exports that send an unmodified app's calls through routecar.

    Regular mode: HTTPS_PROXY and a trust bundle (public roots + the proxy's CA).
    Reverse mode: OPENAI_BASE_URL / ANTHROPIC_BASE_URL, for runtimes that ignore
    HTTPS_PROXY (Node 20's fetch).

    Example: eval "$(routecar env)" && python my_app.py
             eval "$(routecar env --proxy http://127.0.0.1:8080 --confdir ~/.mitmproxy)"   # stock mitmdump
             eval "$(routecar env --reverse http://127.0.0.1:4000)" && node app.mjs
    """
    from ..cabundle import bundle_path, confdir, default_home, env_exports, reverse_exports, write_bundle
    if args.reverse:
        sys.stdout.write(reverse_exports(args.reverse, args.shell))
        return 0
    from ..mitm.master import CA_BASENAME, ensure_ca
    home = default_home(os.environ)
    if args.confdir:  # another proxy's CA (stock mitmdump): use it, never mint a new one
        cdir = Path(args.confdir).expanduser()
        ca = cdir / f"{CA_BASENAME}-ca-cert.pem"
        if not ca.is_file():
            raise CliError(f"no CA certificate at {ca} (mitmproxy writes it to its confdir on first start)")
    else:
        cdir = confdir(home)
        ca = ensure_ca(cdir)
    bundle = write_bundle(ca, bundle_path(home, cdir))
    sys.stdout.write(env_exports(args.proxy, bundle, ca, args.shell))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run the sidecar (a lean mitmproxy master carrying routecar's addon).

    Example: OPENAI_API_KEY=... routecar run --listen 127.0.0.1:8080
             routecar run --mode reverse:https://api.openai.com --listen 127.0.0.1:4000
    """
    from ..cabundle import confdir, default_home, write_bundle
    # mitmproxy's modules are ~1M objects that live as long as the process: no cyclic GC
    # passes over them while they load (~0.2 s of CPU), and none afterwards (frozen).
    gc.disable()
    try:
        from ..mitm.router import Router
        from ..mitm.master import ensure_ca, run_lean
    finally:
        gc.enable()
    gc.freeze()
    home = default_home(os.environ)
    cdir = confdir(home)
    ca = ensure_ca(cdir)
    bundle = write_bundle(ca, home / "ca-bundle.pem")
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise CliError(f"--listen expects HOST:PORT, got {args.listen!r}")
    options: dict[str, Any] = {
        "routecar_catalog": str(args.catalog), "routecar_providers": str(args.providers),
        "routecar_tenants": args.tenants or "", "routecar_rules": str(args.rules),
        "routecar_default_policy": args.default_policy or "", "routecar_default_tenant": args.default_tenant or "",
        "routecar_traces": args.traces or "", "routecar_drain_timeout": args.drain_timeout,
    }
    if args.identify:
        options["routecar_identify"] = args.identify
    if args.tenant_ttl is not None:
        options["routecar_tenant_ttl"] = str(args.tenant_ttl)
    if args.tenant_grace is not None:
        options["routecar_tenant_grace"] = str(args.tenant_grace)
    if args.proxyauth:
        options["proxyauth"] = args.proxyauth
    if args.save:
        options["save_stream_file"] = args.save
    if args.quiet:
        options["routecar_access_log"] = False
    # How to point an app at it is logged once the port is bound (see Router.running).
    print(f"routecar: CA certificate {ca}\n"
          f"routecar: trust bundle (public roots + CA) {bundle}", file=sys.stderr, flush=True)
    code = run_lean([Router()], listen_host=host, listen_port=int(port), mode=[args.mode],
                    confdir=str(cdir), options=options, web=args.web, set_specs=args.set)
    # The proxy has stopped (every hook done, traces and spans flushed) and the process ends
    # now: keep the interpreter's exit from sweeping every object of mitmproxy and routecar
    # through the cyclic GC (~0.35 s of CPU at each stop). Reference counting, atexit handlers
    # and the flushing of stdout/stderr are unaffected.
    gc.freeze()
    return code


def cmd_demo(args: argparse.Namespace) -> int:
    """Fake providers on loopback, the sidecar, and the official openai SDK through it.

    Example: routecar demo
             routecar demo --db ./demo-traces.db      # keep its traces here
    """
    script = ROOT / "scripts" / "demo.py"
    if not script.exists():
        raise CliError("the demo runs from a routecar checkout (scripts/demo.py not found)")
    os.execv(sys.executable, [sys.executable, str(script), *args.demo_args])
    return 0


# -- parser ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="routecar", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=version_text(),
                   help="print routecar's version (and mitmproxy's, Python's) and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn: Any, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=fn.__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(fn=fn)
        return sp

    def catalog_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--catalog", default=str(DEFAULT_CATALOG), help="catalog file or URL")

    def tenant_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--tenants", default=None,
                        help="tenant table (yaml, csv, sqlite:///db?table=t) or database looked up on demand "
                             "(postgresql://USER@HOST:PORT/DB?table=t, sqlite:///db?table=t&mode=lookup)")
        sp.add_argument("--rules", default=str(POLICIES / "rules.yaml"),
                        help="rules compiling tenant attributes into policy clauses (default: shipped rules.yaml)")

    def providers_opt(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--providers", default=str(DEFAULT_PROVIDERS),
                        help="providers.yaml: base URL, auth style and key variable per provider "
                             "(default: shipped)")

    sp = command("run", cmd_run, "run the sidecar proxy")
    sp.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT (default 127.0.0.1:8080)")
    sp.add_argument("--mode", default="regular", help="regular (HTTPS_PROXY) or reverse:URL (base URL)")
    catalog_opts(sp)
    tenant_opts(sp)
    providers_opt(sp)
    sp.add_argument("--default-policy", help="policy_ir JSON or @file for calls with no policy/tenant")
    sp.add_argument("--default-tenant", metavar="ID", help="tenant for calls that name none (or an unknown one)")
    sp.add_argument("--tenant-ttl", type=float, help="seconds a tenant looked up in a database stays cached "
                                                     "(default 30; for a tenant file: seconds between checks, default 2)")
    sp.add_argument("--tenant-grace", type=float, help="seconds cached tenants are still served while the tenant "
                                                       "database is down (default 300)")
    sp.add_argument("--identify", help="tenant identification order, e.g. header,api_key,proxy_auth")
    sp.add_argument("--traces", help="trace DB path, or 'off' (default $ROUTECAR_HOME/traces.db)")
    sp.add_argument("--proxyauth", help="mitmproxy proxyauth spec, e.g. 'any' to read tenant ids from "
                                        "HTTPS_PROXY=http://TENANT:x@host:port")
    sp.add_argument("--save", help="save flows to this file (no_log payloads are never in it)")
    sp.add_argument("--drain-timeout", default="30", help="on SIGTERM, seconds calls in flight may take to finish")
    sp.add_argument("--quiet", action="store_true", help="no access log line per governed call")
    sp.add_argument("--web", action="store_true", help="mitmweb UI (all default addons)")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any mitmproxy option")

    sp = command("env", cmd_env, "print shell exports for zero-code adoption")
    sp.add_argument("--proxy", default="http://127.0.0.1:8080", metavar="URL",
                    help="the sidecar's address in regular mode (default http://127.0.0.1:8080)")
    sp.add_argument("--confdir", metavar="DIR",
                    help="trust the CA of the mitmproxy confdir DIR instead of routecar's own "
                         "(stock mitmdump: ~/.mitmproxy, or its --set confdir=DIR)")
    sp.add_argument("--reverse", nargs="?", const="http://127.0.0.1:4000", metavar="URL",
                    help="print OPENAI_BASE_URL / ANTHROPIC_BASE_URL for a reverse-mode sidecar at URL "
                         "(default http://127.0.0.1:4000) instead of proxy settings")
    sp.add_argument("--shell", default="sh", choices=["sh", "fish"], help="syntax of the exports (default sh)")

    sp = command("check", cmd_check, "validate a policy (or, without one, the sidecar's configuration)")
    sp.add_argument("policy", nargs="?", help="policy file (JSON or YAML), '-' for stdin, or inline JSON")
    sp.add_argument("--json", action="store_true", help="print JSON instead of text")
    providers_opt(sp)
    sp.add_argument("--price-threshold", type=float, default=0.2, metavar="SHARE",
                    help="warn when a catalog price differs from genai-prices by more than this (default 0.2 = 20%%)")
    catalog_opts(sp)
    tenant_opts(sp)

    sp = command("fields", cmd_fields, "list rule fields")
    sp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    catalog_opts(sp)

    sp = command("rank", cmd_rank, "dry-run a policy: every verdict, the ranking, the selection")
    sp.add_argument("policy", nargs="?", help="policy file (JSON or YAML), '-' or inline JSON")
    sp.add_argument("--tenant", metavar="ID", help="rank for this tenant's compiled policy (needs --tenants)")
    sp.add_argument("--request", metavar="FILE", help="chat request JSON (file, '-' or inline); default: a short "
                                                      "prompt. Example: policies/examples/requests/tools.json")
    providers_opt(sp)
    sp.add_argument("--json", action="store_true", help="print JSON instead of tables")
    catalog_opts(sp)
    tenant_opts(sp)

    sp = command("demo", cmd_demo, "run the demo: fake providers + sidecar + openai SDK")
    sp.add_argument("demo_args", nargs=argparse.REMAINDER, metavar="...",
                    help="passed to the demo, e.g. --db PATH (where its traces are kept)")

    add_commands(command, catalog_opts, tenant_opts)
    add_spend_command(command)
    return p


def version_text() -> str:
    from importlib import metadata
    versions = []
    for dist in ("routecar", "mitmproxy"):
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{dist} (not installed)")
    return f"{versions[0]} ({versions[1]}, Python {sys.version.split()[0]})"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except InvalidPolicy as e:
        print_policy_errors(e)
        return 2
    except (CliError, RoutecarError) as e:
        print(f"routecar: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130
