"""A lean mitmproxy master for `routecar run`.

Stock `mitmdump` loads ~30 default addons and dispatches every hook of every
flow to each of them; most (anticache, stickycookie, maplocal, dumper, ...)
do nothing for a sidecar but still cost CPU per request. The lean master
carries only what correct proxying needs:

    core, block, proxyserver, next_layer, tlsconfig, errorcheck, termlog
    + proxyauth          only when the `proxyauth` option is given
    + upstream_auth      only when the `upstream_auth` option is given
    + save               only when the `save_stream_file` option is given
    + ReadyFile          always (a no-op unless a ready file is asked for)
    + the caller's addons (e.g. routecar's Router)

`web=True` swaps in mitmweb's `WebMaster` (all default addons plus the UI).

Startup errors (bad option, port in use) print one clear line on stderr and
`run_lean` returns 1; SIGINT/SIGTERM stop the proxy cleanly, running every
addon's `done` hook, and `run_lean` returns 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mitmproxy import certs
from mitmproxy import ctx
from mitmproxy import exceptions
from mitmproxy import master
from mitmproxy import options as mitm_options
from mitmproxy.addons import block
from mitmproxy.addons import core
from mitmproxy.addons import errorcheck
from mitmproxy.addons import next_layer
from mitmproxy.addons import proxyauth
from mitmproxy.addons import proxyserver
from mitmproxy.addons import save
from mitmproxy.addons import tlsconfig
from mitmproxy.addons import upstream_auth
from mitmproxy.proxy.mode_specs import ProxyMode

READY_FILE_ENV = "ROUTECAR_READY_FILE"
CA_BASENAME = "mitmproxy"  # mitmproxy's own file names, so `mitmdump --set confdir=` shares the CA

__all__ = [
    "READY_FILE_ENV",
    "LeanMaster",
    "ReadyFile",
    "build_master",
    "ensure_ca",
    "run_lean",
]


class ReadyFile:
    """Writes `{"host", "port"}` of the bound listen address once the proxy runs.

    Tests and scripts start the proxy on port 0 and poll this file instead of
    sleeping. The file is written atomically (temp file + rename) so a reader
    never sees half a JSON document, and removed again in `done` so a stale
    file never announces a proxy that is gone.
    """

    def __init__(self) -> None:
        self._written: Path | None = None

    def load(self, loader: Any) -> None:
        loader.add_option(
            "routecar_ready_file",
            str,
            "",
            f"Write the bound listen address as JSON to this file once running "
            f"(default: ${READY_FILE_ENV}).",
        )

    def running(self) -> None:
        target = ctx.options.routecar_ready_file
        if not target:
            return
        addrs = ctx.master.addons.get("proxyserver").listen_addrs()
        if not addrs:
            logging.error("routecar: no listen address bound; not writing the ready file")
            return
        host, port = addrs[0][0], addrs[0][1]
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"  # a wildcard bind is reachable on loopback
        path = Path(target)
        self._written = path
        _write_atomically(path, json.dumps({"host": host, "port": port}))

    def done(self) -> None:
        if self._written is not None:
            self._written.unlink(missing_ok=True)
            self._written = None


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LeanMaster(master.Master):
    """A `Master` with only the addons a sidecar needs (see the module docstring).

    `optional` names the options that were given; it decides which optional
    addons (proxyauth, upstream_auth, save) are loaded.
    """

    def __init__(self, opts: mitm_options.Options, *, optional: Iterable[str]) -> None:
        super().__init__(opts, with_termlog=True)
        self.addons.add(
            core.Core(),
            block.Block(),
            proxyserver.Proxyserver(),
            next_layer.NextLayer(),
            tlsconfig.TlsConfig(),
        )
        # Each addon below costs a dispatch per hook per flow: load only if used.
        wanted = set(optional)
        if "proxyauth" in wanted:
            self.addons.add(proxyauth.ProxyAuth())
        if "upstream_auth" in wanted:
            self.addons.add(upstream_auth.UpstreamAuth())
        if "save_stream_file" in wanted:
            self.addons.add(save.Save())
        self.addons.add(errorcheck.ErrorCheck(repeat_errors_on_stderr=True))


def ensure_ca(confdir: str | os.PathLike[str]) -> Path:
    """Create mitmproxy's CA in `confdir` if missing; return the CA certificate's path.

    An existing CA is not loaded here: parsing its key costs ~50 ms, and the proxy's
    TLS addon loads (and checks) it anyway when it starts."""
    path = Path(confdir).expanduser()
    if not (path / f"{CA_BASENAME}-ca.pem").exists():   # the file mitmproxy's from_store looks for
        certs.CertStore.create_store(path, CA_BASENAME, key_size=2048)
    return path / f"{CA_BASENAME}-ca-cert.pem"


async def build_master(
    addons: Sequence[object],
    *,
    listen_host: str,
    listen_port: int,
    mode: list[str],
    confdir: str,
    options: Mapping[str, Any],
    web: bool = False,
    set_specs: Sequence[str] = (),
) -> master.Master:
    """Build (but do not run) a configured master; call inside a running event loop.

    `options` are typed values; `set_specs` are mitmproxy `--set` texts
    ("key=value", parsed by the option's own type) applied after them.
    Raises `exceptions.OptionsError` for an unknown or invalid option.
    """
    opts = mitm_options.Options()
    m: master.Master
    if web:
        from mitmproxy.tools.web.master import WebMaster

        m = WebMaster(opts, with_termlog=True)
    else:
        given = {k for k, v in options.items() if v} | {s.partition("=")[0] for s in set_specs}
        m = LeanMaster(opts, optional=given)
    m.addons.add(ReadyFile(), *addons)

    settings: dict[str, Any] = {
        # "lazy": connect upstream only when a request needs it, so routed
        # requests never resolve or dial the provider host the app named.
        "connection_strategy": "lazy",
        "routecar_ready_file": os.environ.get(READY_FILE_ENV, ""),
        **options,
        "listen_host": listen_host,
        "listen_port": listen_port,
        "mode": list(mode),
        "confdir": confdir,
    }
    unknown = sorted(k for k in settings if k not in opts)
    if unknown:
        raise exceptions.OptionsError(f"unknown option(s): {', '.join(unknown)}")
    opts.update(**settings)
    opts.set(*set_specs)
    return m


def listen_problems(listen_host: str, listen_port: int, mode: Sequence[str]) -> list[str]:
    """Why the proxy could not bind its listen addresses (port in use, not permitted, no such
    address), checked before mitmproxy tries: its own message suggests `--mode regular@PORT`
    and is printed twice, where routecar's users set `--listen`. Empty when all are free."""
    problems: list[str] = []
    for spec in mode:
        try:
            m = ProxyMode.parse(spec)
        except ValueError:
            continue  # mitmproxy reports a bad mode itself
        host, port = m.listen_host(listen_host), m.listen_port(listen_port)
        if not port or m.transport_protocol != "tcp":
            continue  # port 0: any free port
        try:
            infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as e:
            problems.append(f"cannot listen on {host}:{port}: {e.strerror}")
            continue
        for family, kind, proto, _, addr in infos:
            with socket.socket(family, kind, proto) as s:
                # The options asyncio's server uses: a port in TIME_WAIT is free, a listening one is not.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    s.bind(addr)
                except OSError as e:
                    problems.append(f"cannot listen on {host or '*'}:{port}: {(e.strerror or str(e)).lower()}")
                    break
    return problems


def run_lean(
    addons: Sequence[object],
    *,
    listen_host: str,
    listen_port: int,
    mode: list[str],
    confdir: str,
    options: Mapping[str, Any],
    web: bool = False,
    set_specs: Sequence[str] = (),
) -> int:
    """Run the proxy until SIGINT/SIGTERM; return the process exit code (0 or 1)."""
    problems = listen_problems(listen_host, listen_port, mode)
    if problems:
        print(f"routecar: {problems[0]}; choose another address with --listen HOST:PORT "
              f"(port 0 picks a free one)", file=sys.stderr)
        return 1

    async def main() -> int:
        try:
            m = await build_master(
                addons,
                listen_host=listen_host,
                listen_port=listen_port,
                mode=mode,
                confdir=confdir,
                options=options,
                web=web,
                set_specs=set_specs,
            )
        except exceptions.OptionsError as e:
            message = str(e)  # the addon's own errors already start with "routecar: "
            print(message if message.startswith("routecar: ") else f"routecar: {message}", file=sys.stderr)
            return 1
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, m.shutdown)
        # A client that disconnects mid-write must not kill the proxy.
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        try:
            await m.run()
        except SystemExit as e:  # errorcheck exits after printing the startup error
            return e.code if isinstance(e.code, int) else 1
        return 0

    logging.getLogger().setLevel(logging.INFO)
    for noisy in ("asyncio", "hpack", "tornado", "quic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return asyncio.run(main())


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m routecar.mitm.master`: the bare lean proxy, for tests and benchmarks.

    Example:
        python -m routecar.mitm.master --listen 127.0.0.1:0 \\
            --mode reverse:http://127.0.0.1:9000 --confdir /tmp/rc/mitmproxy
    """
    p = argparse.ArgumentParser(prog="python -m routecar.mitm.master", description=main.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", type=_parse_listen, default=("127.0.0.1", 8080), metavar="HOST:PORT")
    p.add_argument("--mode", action="append", default=[], help="mitmproxy mode spec (repeatable)")
    p.add_argument("--confdir", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any mitmproxy option, e.g. --set termlog_verbosity=warn")
    p.add_argument("--web", action="store_true", help="use mitmweb's WebMaster")
    args = p.parse_args(argv)
    ensure_ca(args.confdir)
    host, port = args.listen
    return run_lean([], listen_host=host, listen_port=port, mode=args.mode or ["regular"],
                    confdir=args.confdir, options={}, web=args.web, set_specs=args.set)


if __name__ == "__main__":
    sys.exit(main())
