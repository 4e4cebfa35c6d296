#!/usr/bin/env python3
"""Proxy overhead benchmark: direct vs stock mitmdump vs routecar's lean master.

Cases (pick with --cases, default a,b,e,c,d; c/d are skipped with a note
until `routecar run` exists):
  a  direct to the upstream (no proxy): the ceiling
  b  stock `mitmdump -q`, reverse mode, no addon: the baseline every ratio uses
  e  routecar's lean master (`python -m routecar.mitm.master`), reverse mode, no addon
  c  `routecar run`, reverse mode, requests carry an X-Route-Policy header
  d  `routecar run`, regular mode: CONNECT api.openai.com:443 + TLS via the proxy, policy header
  f  like c with `--traces off`: the cost of tracing, by difference
  p  like c with `--set routecar_traces_writer=process` (rows built and written in a child process)
  g  like c with `--set routecar_metrics=false`: the cost of metrics is c - g
  q  like c with `--quiet` (no access log line): the cost of the access log is c - q
  h  like c with OTel spans to a loopback OTLP/HTTP receiver: the cost of spans is h - c
  l  the LiteLLM proxy (1 worker) routing the same model to the same upstream: the peer
     (only with --litellm, which installs `litellm[proxy]` into .bench/litellm-venv on
     first use; see scripts/_litellm.py)

--baseline DIR runs the routecar cases (c, d, e, f, g, q, h) a second time with the
code of another checkout DIR (e.g. `git worktree add /tmp/before main`), and
--rounds N repeats everything N times, the two codes interleaved, so before/after
figures come from the same machine at the same time; the table then shows medians
over the rounds, and the load average before and after. On a shared machine the
proxy's CPU time per request is the steadiest figure, and the trace writer
thread's own CPU time per request (column "of it trace writer", read from
/proc/PID/task) the most direct measure of what tracing costs. Each run of case
c/d says how many traces the proxy wrote for the requests it answered.

Every run is bounded by count (--requests) and time (--duration-cap). The
upstream is a minimal asyncio HTTP/1.1 keep-alive server answering a fixed
chat.completion. Load comes from wrk when installed (Lua script: POST with
body and headers), else from a lean asyncio keep-alive client; either runs in
its own process. On a machine with >= 2 CPUs the proxy is pinned to CPU 0
and upstream + load generator to the others, so the proxy's figures are its own.

    .venv/bin/python scripts/bench_proxy.py                    # defaults
    .venv/bin/python scripts/bench_proxy.py --cases a,b,e --requests 5000 --client asyncio
    .venv/bin/python scripts/bench_proxy.py --cases b,c,f --baseline /tmp/before --rounds 3 --litellm
    .venv/bin/python scripts/bench_proxy.py --cases b,c,f --concurrency 1,16 --soak 60000

With cases b, c and f the issue-15 targets are checked on the medians (_proxy_report.py);
--soak N then loads one `routecar run` with N requests and prints its RSS after each fifth.

Prints Markdown tables; exits 0 (a failed case is reported in the table).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import signal
import socket
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _proxy_report import soak, status_mb, targets

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BIN = Path(PY).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
_STARTS = itertools.count(1)

COMPLETION = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000,
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "pong"}}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
}).encode()
REQUEST_BODY = json.dumps({"model": "gpt-4o-mini",
                           "messages": [{"role": "user", "content": "ping"}]})
POLICY = json.dumps({"schema": "sigma-pol/v1", "rules": [["cmp", "bench_intelligence", "ge", 0.1]]})
PATH = "/v1/chat/completions"
CASE_TITLES = {
    "a": "direct (no proxy)",
    "b": "stock mitmdump, reverse",
    "e": "lean master, reverse",
    "c": "routecar run, reverse + policy header",
    "d": "routecar run, regular (HTTPS_PROXY)",
    "f": "routecar run, reverse + policy, traces off",
    "p": "routecar run, reverse + policy, process trace writer",
    "g": "routecar run, reverse + policy, metrics off",
    "q": "routecar run, reverse + policy, access log off",
    "h": "routecar run, reverse + policy, + OTel spans",
    "l": "LiteLLM proxy (1 worker)",
}
ROUTECAR_CASES = {"c", "d", "f", "g", "q", "h", "p"}
BASELINE_CASES = ROUTECAR_CASES | {"e"}  # the cases running routecar's code (--baseline runs them twice)


# --------------------------------------------------------------------------- upstream

async def _serve_upstream(ready: Path) -> None:
    response = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n" % len(COMPLETION)) + COMPLETION

    async def conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                writer.write(response)
                if b"connection: close" in head.lower():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(conn, "127.0.0.1", 0, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    ready.write_text(json.dumps({"port": server.sockets[0].getsockname()[1]}))
    await stop.wait()


# --------------------------------------------------------------------------- asyncio client

async def _read_body(reader: asyncio.StreamReader, head: bytes) -> None:
    """Consume a response body framed by content-length or chunked transfer-encoding."""
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)  # data + CRLF (for size 0: the final CRLF)
            if size == 0:
                return
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            await reader.readexactly(int(line[15:]))
            return


async def _client(spec: dict) -> dict:
    """Closed loop: `conns` keep-alive connections share `requests`; stop at `deadline_s`."""
    host, port, n, deadline = spec["host"], spec["port"], spec["requests"], time.monotonic() + spec["deadline_s"]
    head = f"POST {spec['target']} HTTP/1.1\r\nhost: {spec['host_header']}\r\ncontent-type: application/json\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in spec["headers"].items())
    req = (head + f"content-length: {len(REQUEST_BODY)}\r\n\r\n" + REQUEST_BODY).encode()
    issued, latencies, errors = 0, [], 0

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(host, port)
        if spec.get("connect"):  # regular proxy mode: tunnel, then TLS to the named host
            writer.write(f"CONNECT {spec['connect']} HTTP/1.1\r\nhost: {spec['connect']}\r\n\r\n".encode())
            status = await reader.readuntil(b"\r\n\r\n")
            if b" 200 " not in status.split(b"\r\n")[0]:
                raise ConnectionError(status.split(b"\r\n")[0].decode())
            ctx = ssl.create_default_context(cafile=spec["cafile"])
            await writer.start_tls(ctx, server_hostname=spec["connect"].rsplit(":", 1)[0])
        return reader, writer

    async def worker() -> None:
        nonlocal issued, errors
        reader, writer = await connect()
        while issued < n and time.monotonic() < deadline:
            issued += 1
            t0 = time.perf_counter()
            try:
                writer.write(req)
                resp = await reader.readuntil(b"\r\n\r\n")
                await _read_body(reader, resp)
                if resp[9:12] != b"200":
                    errors += 1
                latencies.append(time.perf_counter() - t0)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                errors += 1
                writer.close()
                reader, writer = await connect()
        writer.close()

    t0 = time.perf_counter()
    results = await asyncio.gather(*(worker() for _ in range(spec["conns"])), return_exceptions=True)
    elapsed = time.perf_counter() - t0
    errors += sum(isinstance(r, BaseException) for r in results)
    latencies.sort()
    pct = (lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan"))
    return {"requests": len(latencies), "elapsed": elapsed, "p50": pct(0.50), "p99": pct(0.99),
            "errors": errors}


# --------------------------------------------------------------------------- wrk

WRK_LUA = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{headers}
local quota, marker, count, stopped = {quota}, {marker}, 0, false
function response(status, headers, body)
  count = count + 1
  if count >= quota and not stopped then
    stopped = true
    local f = io.open(marker, "a"); f:write("x\\n"); f:close()
    wrk.thread:stop()
  end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {{"requests":%d,"elapsed":%f,"p50":%f,"p99":%f,"errors":%d}}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e6,
    latency:percentile(99) / 1e6, e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def _lua_str(s: str) -> str:
    return json.dumps(s)  # a JSON string literal is a valid Lua string literal for this ASCII text


def run_wrk(url: str, headers: dict, requests: int, conns: int, cap: float, cpus: set[int] | None) -> dict:
    with tempfile.TemporaryDirectory() as d:
        marker, script = Path(d) / "stopped", Path(d) / "bench.lua"
        script.write_text(WRK_LUA.format(
            body=_lua_str(REQUEST_BODY), quota=requests, marker=_lua_str(str(marker)),
            headers="\n".join(f"wrk.headers[{_lua_str(k)}] = {_lua_str(v)}" for k, v in headers.items())))
        # One thread: wrk stops when its quota is served; we then SIGINT it so the
        # measured duration ends with the last response, not at the time cap.
        proc = subprocess.Popen(["wrk", "-t1", f"-c{conns}", f"-d{max(1, int(cap))}s", "--timeout", "10s",
                                 "-s", str(script), url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, preexec_fn=_pin(cpus))
        deadline = time.monotonic() + cap + 15
        while proc.poll() is None and time.monotonic() < deadline:
            if marker.exists():
                proc.send_signal(signal.SIGINT)
                break
            time.sleep(0.002)
        out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    for line in out.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[8:])
    raise RuntimeError(f"wrk gave no result: {out[-500:]}")


def run_asyncio_client(spec: dict, cpus: set[int] | None) -> dict:
    proc = subprocess.run([PY, __file__, "--run-client", json.dumps(spec)], capture_output=True,
                          text=True, timeout=spec["deadline_s"] + 30, preexec_fn=_pin(cpus))
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-500:])
    return json.loads(proc.stdout)


# --------------------------------------------------------------------------- processes

def _pin(cpus: set[int] | None):
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


def _wait_json(path: Path, proc: subprocess.Popen, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            return json.loads(path.read_text())
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        time.sleep(0.01)
    raise RuntimeError("not ready in time")


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError("not listening in time")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _family(pid: int) -> list[int]:
    """`pid` and its live descendants (routecar's trace-writer process counts as the proxy)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:
                pass
    return out


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in _family(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
    return total


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """{thread id: (name, utime + stime seconds)} of the threads of `pid`."""
    out = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            comm = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (comm, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


WRITER_THREAD = "routecar-traces"


def writer_cpu_seconds(pid: int, before: dict[int, tuple[str, float]]) -> float:
    """CPU seconds of routecar's trace writer thread since `before`: the thread named routecar-traces,
    or (code that does not name its OS threads) the busiest thread other than the event loop's."""
    after = thread_cpu(pid)
    delta = {tid: (name, cpu - before.get(tid, (name, 0.0))[1]) for tid, (name, cpu) in after.items()}
    named = [cpu for name, cpu in delta.values() if name == WRITER_THREAD]
    if named:
        return sum(named)
    others = [cpu for tid, (_, cpu) in delta.items() if tid != pid]
    return max(others, default=0.0)


def peak_rss_mb(pid: int) -> float:
    """Sum of peak RSS of the proxy and its child processes."""
    return status_mb(_family(pid), "VmHWM")


@dataclass
class Target:
    """Where the load goes for one case, and the proxy process to measure (None for direct)."""
    proc: subprocess.Popen | None
    host: str
    port: int
    headers: dict
    connect: str | None = None  # regular mode: tunnel target host:port
    cafile: str | None = None
    traces: Path | None = None  # routecar's trace database, when it writes one


def start_case(case: str, upstream_port: int, work: Path, cpus: set[int] | None,
               otlp_url: str | None = None, code: Path | None = None) -> Target:
    """Start the proxy of `case`; routecar's cases run the code of checkout `code` when given."""
    up = f"http://127.0.0.1:{upstream_port}"
    conf = work / f"conf-{case}"
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_pin(cpus))
    if case == "l":
        return _start_litellm(up, work, quiet)
    if case == "a":
        return Target(None, "127.0.0.1", upstream_port, {})
    if case == "b":
        port = _free_port()
        proc = subprocess.Popen([str(BIN / "mitmdump"), "-q", "--mode", f"reverse:{up}",
                                 "--listen-host", "127.0.0.1", "--listen-port", str(port),
                                 "--set", f"confdir={conf}"], **quiet)
        _wait_port(port, proc)
        return Target(proc, "127.0.0.1", port, {})
    ready = work / f"ready-{case}.json"
    ready.unlink(missing_ok=True)
    home = work / f"home-{case}-{next(_STARTS)}"  # one per start: each run's traces counted apart
    env = {**os.environ, "ROUTECAR_READY_FILE": str(ready), "ROUTECAR_HOME": str(home)}
    if code is not None:  # `routecar` resolves to the other checkout's addon/ (a path entry wins)
        shim = work / "baseline-path"
        shim.mkdir(exist_ok=True)
        if not (shim / "routecar").exists():
            (shim / "routecar").symlink_to(code.resolve() / "addon")
        env["PYTHONPATH"] = str(shim)
    if case == "e":
        cmd = [PY, "-m", "routecar.mitm.master", "--listen", "127.0.0.1:0", "--mode", f"reverse:{up}",
               "--confdir", str(conf), "--set", "termlog_verbosity=error"]
    else:  # c, d, f, g, q, h: every provider in providers.yaml points at the loopback upstream
        providers, keys = _loopback_providers(up, work / f"providers-{case}.yaml")
        env.update(keys)
        cmd = [str(BIN / "routecar"), "run", "--listen", "127.0.0.1:0", "--providers", str(providers),
               "--set", "termlog_verbosity=error"]
        if case != "d":
            cmd += ["--mode", f"reverse:{up}"]
        if case == "f":  # the cost of tracing, by difference with c
            cmd += ["--traces", "off"]
        if case == "p":  # traces written by a child process
            cmd += ["--set", "routecar_traces_writer=process"]
        if case == "g":  # the cost of metrics, by difference with c
            cmd += ["--set", "routecar_metrics=false"]
        if case == "q":  # the cost of the access log, by difference with c
            cmd += ["--quiet"]
        if case == "h":  # the cost of spans, by difference with c
            env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_url or "", "OTEL_BSP_SCHEDULE_DELAY": "500"})
    proc = subprocess.Popen(cmd, env=env, **quiet)
    addr = _wait_json(ready, proc)
    traces = home / "traces.db" if case in ("c", "d", "p") else None
    if case != "d":
        return Target(proc, addr["host"], addr["port"], {"X-Route-Policy": POLICY}, traces=traces)
    ca = home / "mitmproxy" / "mitmproxy-ca-cert.pem"
    return Target(proc, addr["host"], addr["port"], {"X-Route-Policy": POLICY},
                  connect="api.openai.com:443", cafile=str(ca), traces=traces)


def _start_litellm(upstream: str, work: Path, quiet: dict) -> Target:
    from _litellm import MODEL, command, ensure_installed, environment, write_config

    exe = ensure_installed(ROOT / ".bench" / "litellm-install.log")
    port = _free_port()
    config = work / "litellm.yaml"
    key = write_config(upstream, config)
    proc = subprocess.Popen(command(exe, config, port), env=environment(), cwd=work, **quiet)
    _wait_port(port, proc, timeout=180.0)  # LiteLLM imports for a while before it listens
    assert MODEL in REQUEST_BODY
    return Target(proc, "127.0.0.1", port, {"Authorization": f"Bearer {key}"})


def _loopback_providers(upstream: str, out: Path) -> tuple[Path, dict[str, str]]:
    """providers.yaml sending every provider to `upstream` (keeping real hosts for interception)."""
    sys.path.insert(0, str(ROOT))
    from tests.fakes.config import write_loopback_providers

    return write_loopback_providers(lambda _name: f"{upstream}/v1", out)


def routecar_run_available() -> bool:
    exe = BIN / "routecar"
    if not exe.exists():
        return False
    try:
        r = subprocess.run([str(exe), "run", "--help"], capture_output=True, timeout=20)
    except subprocess.TimeoutExpired:
        return False
    return r.returncode == 0


def load(t: Target, client: str, requests: int, conns: int, cap: float, cpus: set[int] | None) -> dict:
    if client == "wrk" and t.connect is None:
        return run_wrk(f"http://{t.host}:{t.port}{PATH}", t.headers, requests, conns, cap, cpus)
    spec = {"host": t.host, "port": t.port, "requests": requests, "conns": conns, "deadline_s": cap,
            "headers": t.headers, "connect": t.connect, "cafile": t.cafile,
            "target": PATH, "host_header": t.connect.rsplit(":", 1)[0] if t.connect else f"{t.host}:{t.port}"}
    return run_asyncio_client(spec, cpus)


# --------------------------------------------------------------------------- main

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="a,b,e,c,f,d",
                   help="comma list of a,b,c,d,e,f,g,q,h,p,l (default: a,b,e,c,f,d; l needs --litellm)")
    p.add_argument("--litellm", action="store_true", help="add case l, the LiteLLM proxy (installs litellm[proxy] "
                                                          "into .bench/litellm-venv on first use: a few minutes)")
    p.add_argument("--baseline", metavar="DIR", type=Path,
                   help="also run the routecar cases with the code of checkout DIR, interleaved (before/after)")
    p.add_argument("--rounds", type=int, default=1, help="repeat every case this many times; medians are shown")
    p.add_argument("--plot", metavar="PNG", help="also plot p50/p99 latency vs concurrency (needs matplotlib: "
                                                 "pip install -e '.[bench]')")
    p.add_argument("--concurrency", default="1,16,64", help="comma list (default: 1,16,64)")
    p.add_argument("--requests", type=int, default=2000, help="requests per run (default 2000)")
    p.add_argument("--duration-cap", type=float, default=30.0, help="seconds per run at most (default 30)")
    p.add_argument("--warmup", type=int, default=200, help="requests before measuring each proxy")
    p.add_argument("--client", choices=["auto", "wrk", "asyncio"], default="auto")
    p.add_argument("--soak", type=int, default=0, metavar="N",
                   help="then load one routecar (case c) with N requests at concurrency 16 in fifths and print "
                        "its RSS after each (memory over a long run)")
    p.add_argument("--soak-cap", type=float, default=900.0, help="seconds the soak may take at most (default 900)")
    p.add_argument("--no-pin", action="store_true", help="do not pin proxy / load to separate CPUs")
    p.add_argument("--run-client", help=argparse.SUPPRESS)
    p.add_argument("--serve-upstream", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run_client:
        print(json.dumps(asyncio.run(_client(json.loads(args.run_client)))))
        return 0
    if args.serve_upstream:
        asyncio.run(_serve_upstream(Path(args.serve_upstream)))
        return 0

    client = ("wrk" if shutil.which("wrk") else "asyncio") if args.client == "auto" else args.client
    cpus_all = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(cpus_all) >= 2
    proxy_cpus = {cpus_all[0]} if pin else None
    load_cpus = set(cpus_all[1:]) if pin else None
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]   # a case may repeat: each run is a row
    if args.litellm and "l" not in cases:
        cases.append("l")
    concs = [int(c) for c in args.concurrency.split(",")]
    notes: list[str] = []
    if "l" in cases and not args.litellm:
        notes.append("l skipped: the LiteLLM case runs with --litellm (it installs litellm[proxy] first).")
        cases = [c for c in cases if c != "l"]
    if ROUTECAR_CASES & set(cases) and not routecar_run_available():
        notes.append("routecar cases skipped: `routecar run` is not available (no `routecar` CLI with a `run` command).")
        cases = [c for c in cases if c not in ROUTECAR_CASES]
    if args.baseline is not None and not (args.baseline / "addon" / "__init__.py").exists():
        p.error(f"--baseline {args.baseline}: not a routecar checkout (no addon/__init__.py)")
    # (case, code): code None is this checkout; routecar's cases also run the baseline's code.
    variants = [(c, code) for c in cases
                for code in ((args.baseline, None) if args.baseline and c in BASELINE_CASES else (None,))]
    receiver = None
    if "h" in cases:  # spans go to a real OTLP/HTTP receiver (a thread of this script, not the proxy)
        sys.path.insert(0, str(ROOT))
        from tests.fakes.otlp import OtlpReceiver
        receiver = OtlpReceiver().__enter__()
    load_before = os.getloadavg()

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="routecar-bench-") as tmp:
        work = Path(tmp)
        up_ready = work / "upstream.json"
        upstream = subprocess.Popen([PY, __file__, "--serve-upstream", str(up_ready)], preexec_fn=_pin(load_cpus))
        try:
            up_port = _wait_json(up_ready, upstream)["port"]
            otlp = receiver.url if receiver else None
            for n in range(max(1, args.rounds)):
                for case, code in (variants if n % 2 == 0 else _swap_pairs(variants)):
                    rows += run_case(case, code, up_port, work, otlp, args, client, concs, proxy_cpus, load_cpus,
                                     notes)
            if args.soak:
                soaked = run_soak(up_port, work, args, client, proxy_cpus, load_cpus)
        finally:
            _stop(upstream)
            if receiver is not None:
                notes.append(f"h: the OTLP receiver got {len(receiver.spans)} span(s) in {receiver.requests} "
                             f"export request(s) (spans the SDK's queue dropped under load are not exported)")
                receiver.__exit__()

    shown = median_rows(rows) if args.rounds > 1 or args.baseline else rows
    print(render(shown, rows, client, args, pin, cpus_all, notes, load_before, os.getloadavg()))
    print("\n".join(targets(shown)))
    if args.soak:
        print(f"\nMemory over a long run: `routecar run` (case c), {args.soak} requests at concurrency 16; "
              f"RSS of the proxy and its children after each fifth\n")
        print("\n".join(soaked))
    if args.plot:
        print(plot(median_rows(rows), Path(args.plot)))
    return 0


def run_soak(up_port: int, work: Path, args: argparse.Namespace, client: str, proxy_cpus: set[int] | None,
             load_cpus: set[int] | None) -> list[str]:
    """`--soak N`: case c's proxy under N requests, its RSS after each fifth (_proxy_report.soak)."""
    target = start_case("c", up_port, work, proxy_cpus)
    answered = 0
    try:
        answered += load(target, client, args.warmup, 16, args.duration_cap, load_cpus)["requests"]

        def chunk(n: int) -> dict:
            nonlocal answered
            r = load(target, client, n, 16, max(args.duration_cap, n / 50), load_cpus)
            answered += r["requests"]
            return r

        assert target.proc is not None and target.traces is not None
        lines = soak(args.soak, args.soak_cap, chunk, lambda: _family(target.proc.pid),
                     lambda: _count_traces(target.traces))
    finally:
        if target.proc:
            _stop(target.proc)
    return lines + ["", f"- after the proxy stopped: {_count_traces(target.traces)} traces for {answered} answered "
                        f"requests (warm-up included)"]


def _swap_pairs(variants: list[tuple[str, Path | None]]) -> list[tuple[str, Path | None]]:
    """Every other round runs the new code before the baseline (no order bias)."""
    out = list(variants)
    for i in range(len(out) - 1):
        if out[i][0] == out[i + 1][0] and out[i][1] is not None:
            out[i], out[i + 1] = out[i + 1], out[i]
    return out


def run_case(case: str, code: Path | None, up_port: int, work: Path, otlp: str | None, args: argparse.Namespace,
             client: str, concs: list[int], proxy_cpus: set[int] | None, load_cpus: set[int] | None,
             notes: list[str]) -> list[dict]:
    """Start one case's proxy, warm it up, load it at each concurrency, stop it: its rows."""
    label = "baseline" if code is not None else ""
    try:
        target = start_case(case, up_port, work, proxy_cpus, otlp, code)
    except (RuntimeError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        notes.append(f"{case}{' (baseline)' if code else ''}: proxy failed to start: {e}")
        return []
    rows = []
    answered = 0
    try:
        if target.proc and args.warmup:
            answered += load(target, client, args.warmup, 16, args.duration_cap, load_cpus)["requests"]
        for conns in concs:
            cpu0 = cpu_seconds(target.proc.pid) if target.proc else 0.0
            own0 = sum(c for _, c in thread_cpu(target.proc.pid).values()) if target.proc else 0.0
            threads0 = thread_cpu(target.proc.pid) if target.traces else {}
            try:
                r = load(target, client, args.requests, conns, args.duration_cap, load_cpus)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                notes.append(f"{case} c={conns}: load failed: {e}")
                continue
            if target.proc:
                r["cpu_ms"] = (cpu_seconds(target.proc.pid) - cpu0) * 1000 / max(1, r["requests"])
                r["rss"] = peak_rss_mb(target.proc.pid)
            if target.traces is not None and target.proc:
                if case == "p":  # the writer is a child process: the CPU of the proxy's children
                    own = sum(c for _, c in thread_cpu(target.proc.pid).values()) - own0
                    writer_s = cpu_seconds(target.proc.pid) - cpu0 - own
                else:
                    writer_s = writer_cpu_seconds(target.proc.pid, threads0)
                r["writer_ms"] = writer_s * 1000 / max(1, r["requests"])
            answered += r["requests"]
            rows.append({"case": case, "code": label, "conns": conns, **r,
                         "rps": r["requests"] / r["elapsed"] if r["elapsed"] else 0.0})
    finally:
        if target.proc:
            _stop(target.proc)  # SIGTERM: routecar writes every queued trace before it exits
    if target.traces is not None:
        notes.append(f"{case}{' (baseline)' if code else ''}: {_count_traces(target.traces)} traces written "
                     f"for {answered} answered requests (a request cut by the load generator's stop is traced too)")
    return rows


def _count_traces(db: Path) -> int | str:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT count(*) FROM decisions").fetchone()[0]
    except sqlite3.Error as e:
        return f"? ({e})"


def median_rows(rows: list[dict]) -> list[dict]:
    """One row per (case, code, concurrency): the median of each figure over its runs."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["case"], r["code"], r["conns"]), []).append(r)
    out = []
    for (case, code, conns), rs in groups.items():
        row = {"case": case, "code": code, "conns": conns, "rounds": len(rs)}
        for k in ("requests", "rps", "p50", "p99", "errors", "cpu_ms", "writer_ms", "rss"):
            values = sorted(r[k] for r in rs if k in r)
            if values:
                row[k] = values[len(values) // 2]
        out.append(row)
    return out


def plot(rows: list[dict], out: Path) -> str:
    """Latency vs concurrency per case, p50 solid and p99 dashed, log scale."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "\n- plot skipped: matplotlib is not installed (pip install -e '.[bench]')"
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for case, code in dict.fromkeys((r["case"], r["code"]) for r in rows):
        pts = sorted((r["conns"], r["p50"] * 1000, r["p99"] * 1000) for r in rows
                     if (r["case"], r["code"]) == (case, code))
        xs = [p[0] for p in pts]
        label = f"{case}: {CASE_TITLES[case]}{' [baseline]' if code else ''} (p50)"
        line, = ax.plot(xs, [p[1] for p in pts], marker="o", label=label)
        ax.plot(xs, [p[2] for p in pts], linestyle="--", color=line.get_color(), alpha=0.6)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent keep-alive connections")
    ax.set_ylabel("latency ms (solid p50, dashed p99)")
    ax.set_title("routecar proxy latency vs concurrency (loopback, 2 CPUs)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return f"\n- plot written to {out}"


DIFFERENCES = (("tracing", "c", "f"), ("metrics", "c", "g"), ("access log", "c", "q"), ("OTel spans", "h", "c"))


def _differences(rows: list[dict]) -> list[str]:
    """Added proxy CPU per request of each feature, by difference of two cases at the same concurrency."""
    runs: dict[tuple[str, str, int], list[float]] = {}
    for r in rows:
        if "cpu_ms" in r:
            runs.setdefault((r["case"], r.get("code", ""), r["conns"]), []).append(r["cpu_ms"])
    # A case listed several times (--cases c,g,c,g: interleaved, so load drift hits both alike): the median.
    cpu = {k: statistics.median(v) for k, v in runs.items()}
    lines = []
    for code in sorted({code for _, code, _ in cpu}):
        tag = " [baseline]" if code else ""
        for name, on, off in DIFFERENCES:
            for conns in sorted({c for _, _, c in cpu}):
                a, b = cpu.get((on, code, conns)), cpu.get((off, code, conns))
                if a is not None and b is not None:
                    lines.append(f"| {name} ({on} - {off}){tag} | {conns} | {a:.3f} | {b:.3f} | "
                                 f"{a - b:+.3f} | {(a - b) / b:+.0%} |")
    if not lines:
        return []
    return ["", "Added proxy CPU per request (median of the runs of each case):", "",
            "| added CPU | conc | with ms/req | without ms/req | added ms/req | relative |",
            "| --- | ---: | ---: | ---: | ---: | ---: |", *lines]


def render(rows: list[dict], runs: list[dict], client: str, args: argparse.Namespace, pin: bool, cpus: list[int],
           notes: list[str], load_before: tuple[float, ...], load_after: tuple[float, ...]) -> str:
    """`rows` as shown (each run, or medians), `runs` every run (for the differences)."""
    base = {r["conns"]: r["rps"] for r in rows if r["case"] == "b"}
    gen = "wrk (1 thread, Lua POST script)" if client == "wrk" else "asyncio keep-alive client (own process)"
    load = " / ".join(f"{x:.1f}" for x in load_before) + " before, " + " / ".join(f"{x:.1f}" for x in load_after)
    out = [f"Load generator: **{gen}**; {args.requests} requests per run, cap {args.duration_cap:g} s; "
           f"{len(cpus)} CPUs, " + ("proxy pinned to CPU 0, upstream + load on the rest." if pin else "no pinning.")
           + (f" Medians of {args.rounds} interleaved rounds." if args.rounds > 1 else "")
           + f" Load average (1/5/15 min): {load} after.",
           "", "| case | conc | requests | req/s | p50 ms | p99 ms | vs (b) | proxy CPU ms/req | of it trace writer "
           "| proxy peak RSS MB | errors |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        ratio = f"{r['rps'] / base[r['conns']]:.2f}x" if base.get(r["conns"]) else "—"
        cpu = f"{r['cpu_ms']:.2f}" if "cpu_ms" in r else "—"
        rss = f"{r['rss']:.0f}" if "rss" in r else "—"
        writer = f"{r['writer_ms']:.3f}" if "writer_ms" in r else "—"
        code = " [baseline]" if r.get("code") else ""
        out.append(f"| {r['case']} {CASE_TITLES[r['case']]}{code} | {r['conns']} | {r['requests']} | {r['rps']:.0f} | "
                   f"{r['p50'] * 1000:.2f} | {r['p99'] * 1000:.2f} | {ratio} | {cpu} | {writer} | {rss} | {r['errors']} |")
    out += _differences(runs)
    out += [f"\n- {n}" for n in notes]
    if client == "wrk" and "d" in {r["case"] for r in rows}:
        out.append("\n- d uses the asyncio client (wrk cannot CONNECT through a proxy).")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
