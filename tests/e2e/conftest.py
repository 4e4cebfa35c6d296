"""End-to-end fixtures: the real sidecar (`routecar run` or stock `mitmdump -s`) as a
subprocess in front of the loopback fake providers, and the official openai SDK.

- ``routecar_home`` (session): ROUTECAR_HOME with a CA generated once.
- ``loopback`` (session): providers.yaml pointing every provider at its fake + key env.
- ``sidecar(*args, mode="regular", stock=False, env=None)``: a started proxy; `.traces`
  is its trace DB, `.ca` its CA certificate. ``mode="reverse"`` targets a dead port;
  ``mode="reverse:http://127.0.0.1:PORT"`` a given target (e.g. a fake provider).
- ``shared_sidecar(...)`` (module): the same arguments, but one proxy per distinct
  configuration for the whole test module, stopped (and its exit code checked) after the
  module's last test. Only for tests that send requests and read answers: each finds its
  own trace by its `x-route-trace-id` (``trace(side, id)``), never "the last row" or a
  count; nothing that changes the sidecar's state (provider failures feed live health,
  reloads, signals) and nothing that reads the whole trace DB or its metrics.
- ``curl_json(side, method, path, data=None)``: curl for the `/x/...` endpoints.
- ``trace(side, trace_id)``: a call's trace row and its attempts, polled until written.
- ``sdk(proxy)``: an ``openai.OpenAI`` client that reaches the sidecar as an
  unmodified app would: via HTTPS_PROXY + CA in regular mode, via base_url in reverse.
"""

from __future__ import annotations

import json
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from mitmproxy.certs import CertStore

from tests.fakes import MITMDUMP, READY_ADDON, FakeFleet, ProxyProcess
from tests.fakes.config import write_loopback_providers

ADDON = str(Path(__file__).resolve().parents[2] / "addon" / "mitm" / "addon.py")


@pytest.fixture(scope="session")
def routecar_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("routecar-home")
    CertStore.from_store(home / "mitmproxy", "mitmproxy", 2048)
    return home


@pytest.fixture(scope="session")
def loopback(fake_fleet: FakeFleet, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    d = tmp_path_factory.mktemp("loopback")
    return write_loopback_providers(fake_fleet.url, d / "providers.yaml")


class Sidecar:
    def __init__(self, proc: ProxyProcess, traces: Path, ca: Path, mode: str) -> None:
        self.proc, self.traces, self.ca, self.mode = proc, traces, ca, mode

    @property
    def url(self) -> str:
        return self.proc.url

    def log(self) -> str:
        return self.proc.log_text()

    def stop(self) -> int | None:
        return self.proc.stop()

    def trace_rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.traces) as db:
            return db.execute(sql, params).fetchall()


def start_sidecar(workdir: Path, name: str, traces: Path, routecar_home: Path, loopback: tuple[Path, dict[str, str]],
                  *args: str, mode: str = "regular", stock: bool = False,
                  env: dict[str, str] | None = None) -> Sidecar:
    providers, keys = loopback
    confdir = routecar_home / "mitmproxy"
    mode_spec = "reverse:http://127.0.0.1:9" if mode == "reverse" else mode
    mode = "reverse" if mode.startswith("reverse") else mode
    if stock:  # stock mitmdump loading the addon script unchanged
        argv = [MITMDUMP, "-q", "--listen-host", "127.0.0.1", "-p", "0", "--mode", mode_spec,
                "--set", f"confdir={confdir}", "--set", "connection_strategy=lazy",
                "-s", READY_ADDON, "-s", ADDON,
                "--set", f"routecar_providers={providers}", "--set", f"routecar_traces={traces}", *args]
    else:
        argv = [sys.executable, "-m", "routecar.cli", "run", "--listen", "127.0.0.1:0",
                "--mode", mode_spec, "--providers", str(providers), "--traces", str(traces), *args]
    child_env = {"ROUTECAR_HOME": str(routecar_home), **keys, **(env or {})}
    proc = ProxyProcess.start(argv, workdir, env=child_env, ready_timeout=30, name=name)
    return Sidecar(proc, traces, confdir / "mitmproxy-ca-cert.pem", mode)


@pytest.fixture
def sidecar(tmp_path: Path, routecar_home: Path, loopback: tuple[Path, dict[str, str]],
            fake: FakeFleet) -> Iterator[Callable[..., Sidecar]]:
    started: list[Sidecar] = []

    def start(*args: str, mode: str = "regular", stock: bool = False,
              env: dict[str, str] | None = None, name: str | None = None) -> Sidecar:
        s = start_sidecar(tmp_path, name or f"sidecar{len(started)}", tmp_path / f"traces{len(started)}.db",
                          routecar_home, loopback, *args, mode=mode, stock=stock, env=env)
        started.append(s)
        return s

    yield start
    for s in reversed(started):
        s.stop()


@pytest.fixture(scope="module")
def shared_sidecar(tmp_path_factory: pytest.TempPathFactory, routecar_home: Path,
                   loopback: tuple[Path, dict[str, str]], fake_fleet: FakeFleet) -> Iterator[Callable[..., Sidecar]]:
    workdir = tmp_path_factory.mktemp("shared-sidecars")
    started: dict[tuple[Any, ...], Sidecar] = {}

    def get(*args: str, mode: str = "regular", stock: bool = False, env: dict[str, str] | None = None) -> Sidecar:
        key = (args, mode, stock, tuple(sorted((env or {}).items())))
        if key not in started:
            name = f"shared{len(started)}"
            started[key] = start_sidecar(workdir, name, workdir / f"traces-{name}.db", routecar_home, loopback,
                                         *args, mode=mode, stock=stock, env=env)
        side = started[key]
        if side.proc.proc.poll() is not None:   # never restarted behind a test's back
            raise AssertionError(f"the shared sidecar {key} exited with {side.proc.proc.returncode}:\n"
                                 f"{side.proc.log_tail()}")
        return side

    yield get
    codes = {key: (s.stop(), s.proc.log_tail()) for key, s in started.items()}
    failed = {key: f"exit {code}:\n{tail}" for key, (code, tail) in codes.items() if code != 0}
    assert not failed, failed


def sdk(side: Sidecar, api_key: str = "sk-app-own-key-1234567890", **kw: Any) -> openai.OpenAI:
    """The official SDK, configured the way an unmodified app would be."""
    if side.mode == "reverse":
        return openai.OpenAI(base_url=side.url + "/v1", api_key=api_key, max_retries=0, **kw)
    http_client = openai.DefaultHttpxClient(proxy=side.url, verify=ssl.create_default_context(cafile=str(side.ca)))
    return openai.OpenAI(base_url="https://api.openai.com/v1", api_key=api_key, max_retries=0,
                         http_client=http_client, **kw)


def curl_json(side: Sidecar, method: str, path: str, data: str | None = None) -> tuple[int, Any]:
    """curl a dry-run endpoint the way a user would: at routecar.local through the proxy
    in regular mode, at the sidecar's own address in reverse mode. (status, JSON body)."""
    if side.mode == "reverse":
        target = ["-X", method, side.url + path]
    else:
        target = ["-x", side.url, "-X", method, "http://routecar.local" + path]
    argv = ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", *target]
    if data is not None:
        argv += ["-H", "content-type: application/json", "--data-binary", data]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=True).stdout
    body, _, code = out.rpartition("\n")
    return int(code), json.loads(body)


def trace(side, trace_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The trace row and its attempts, polled until the background writer has written it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with sqlite3.connect(f"file:{side.traces}?mode=ro", uri=True) as db:
                db.row_factory = sqlite3.Row
                row = db.execute("select * from decisions where trace_id = ?", (trace_id,)).fetchone()
                if row is not None:
                    attempts = db.execute("select * from attempts where trace_id = ? order by n",
                                          (trace_id,)).fetchall()
                    return {**dict(row), "attempts": [dict(a) for a in attempts]}
        except sqlite3.OperationalError:
            pass   # not created yet, or its tables not yet
        if time.monotonic() >= deadline:
            raise AssertionError(f"trace {trace_id} not written within {timeout}s")
        time.sleep(0.05)  # polling a condition with a deadline
