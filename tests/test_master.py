"""The lean master: real subprocesses on loopback, polled for readiness (no sleeps)."""

from __future__ import annotations

import asyncio
import http.server
import json
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from routecar.mitm import master as lean

PY = sys.executable


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"hello": "upstream"}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[str]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _wait_ready(ready: Path, proc: subprocess.Popen[str], timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready.exists():
            return json.loads(ready.read_text())
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"proxy exited early ({proc.returncode}):\n{out}\n{err}")
        time.sleep(0.02)  # polling a condition, not waiting for readiness blindly
    proc.kill()
    pytest.fail("proxy did not write its ready file in time")


# An entry that runs the lean master with one test addon whose `done` hook
# writes a file, so the test can see that shutdown ran the hooks.
_ENTRY = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from routecar.mitm.master import ensure_ca, run_lean

    class DoneMarker:
        def done(self):
            Path(sys.argv[3]).write_text("done")

    confdir, mode = sys.argv[1], sys.argv[2]
    ensure_ca(confdir)
    sys.exit(run_lean([DoneMarker()], listen_host="127.0.0.1", listen_port=int(sys.argv[4]),
                      mode=[mode], confdir=confdir, options={"termlog_verbosity": "warn"}))
    """
)


def _start(tmp_path: Path, mode: str, port: int = 0) -> tuple[subprocess.Popen[str], Path, Path]:
    ready, done = tmp_path / "ready.json", tmp_path / "done.txt"
    env = {"ROUTECAR_READY_FILE": str(ready), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        [PY, "-c", _ENTRY, str(tmp_path / "conf"), mode, str(done), str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    return proc, ready, done


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_proxies_a_request_and_a_signal_runs_done(tmp_path: Path, upstream: str, sig: int) -> None:
    proc, ready, done = _start(tmp_path, f"reverse:{upstream}")
    addr = _wait_ready(ready, proc)
    with urllib.request.urlopen(f"http://{addr['host']}:{addr['port']}/v1/x", timeout=5) as r:
        assert r.status == 200
        assert json.loads(r.read()) == {"hello": "upstream"}

    proc.send_signal(sig)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert done.read_text() == "done"
    assert not ready.exists(), "the ready file is removed on shutdown"


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc, _, _ = _start(tmp_path, "reverse:http://127.0.0.1:9", port=port)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 1
    assert err.strip() == (f"routecar: cannot listen on 127.0.0.1:{port}: address already in use; choose "
                           f"another address with --listen HOST:PORT (port 0 picks a free one)")
    assert "--mode" not in out  # not mitmproxy's advice, and said once


def test_routecar_run_port_in_use_names_listen_once(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([PY, "-m", "routecar.cli", "run", "--listen", f"127.0.0.1:{port}"],
                           capture_output=True, text=True, timeout=30,
                           env={"ROUTECAR_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 1
    assert r.stderr.count("address already in use") == 1 and "--listen HOST:PORT" in r.stderr
    assert "--mode" not in r.stdout + r.stderr


def test_listen_problems_follow_the_mode_spec() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert lean.listen_problems("127.0.0.1", 0, ["regular"]) == []
        assert lean.listen_problems("127.0.0.1", 0, [f"regular@{port}"]) == [
            f"cannot listen on 127.0.0.1:{port}: address already in use"]
        assert lean.listen_problems("127.0.0.1", port, ["regular@0"]) == []


def test_addon_config_error_has_one_routecar_prefix(tmp_path: Path) -> None:
    r = subprocess.run([PY, "-m", "routecar.cli", "run", "--listen", "127.0.0.1:0", "--catalog",
                        str(tmp_path / "missing.yaml")], capture_output=True, text=True, timeout=30,
                       env={"ROUTECAR_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 1
    assert f"routecar: cannot read {tmp_path / 'missing.yaml'}" in r.stderr
    assert "routecar: routecar:" not in r.stderr


def test_unknown_option_is_a_clear_error(tmp_path: Path) -> None:
    r = subprocess.run(
        [PY, "-m", "routecar.mitm.master", "--listen", "127.0.0.1:0", "--confdir",
         str(tmp_path / "conf"), "--set", "no_such_option=1"],
        capture_output=True, text=True, timeout=15,
    )
    assert r.returncode == 1
    assert "no_such_option" in r.stderr
    assert "Traceback" not in r.stderr


def _addon_names(options: dict, web: bool = False) -> set[str]:
    async def build() -> set[str]:
        m = await lean.build_master([], listen_host="127.0.0.1", listen_port=0,
                                    mode=["regular"], confdir="/nonexistent", options=options,
                                    web=web)
        return set(m.addons.lookup)

    return asyncio.run(build())


def test_lean_master_carries_only_the_essentials() -> None:
    names = _addon_names({})
    assert {"core", "proxyserver", "nextlayer", "tlsconfig", "errorcheck", "readyfile"} <= names
    assert not names & {"dumper", "anticache", "stickycookie", "save", "proxyauth", "upstreamauth"}


def test_optional_addons_load_only_when_their_option_is_given(tmp_path: Path) -> None:
    names = _addon_names({"proxyauth": "user:pass", "save_stream_file": str(tmp_path / "f")})
    assert {"proxyauth", "save"} <= names


def test_connection_strategy_is_lazy_and_allow_hosts_passes_through() -> None:
    async def build() -> tuple[str, list[str]]:
        m = await lean.build_master([], listen_host="127.0.0.1", listen_port=0, mode=["regular"],
                                    confdir="/nonexistent", options={"allow_hosts": ["api.openai.com"]})
        return m.options.connection_strategy, list(m.options.allow_hosts)

    assert asyncio.run(build()) == ("lazy", ["api.openai.com"])


def test_web_uses_mitmweb_master() -> None:
    names = _addon_names({"web_port": 0}, web=True)
    assert {"webaddon", "readyfile", "proxyserver"} <= names


def test_ensure_ca_creates_once(tmp_path: Path) -> None:
    cert = lean.ensure_ca(tmp_path / "conf")
    assert cert == tmp_path / "conf" / "mitmproxy-ca-cert.pem"
    first = cert.read_bytes()
    assert first.startswith(b"-----BEGIN CERTIFICATE-----")
    assert lean.ensure_ca(tmp_path / "conf").read_bytes() == first
