"""Loopback test doubles and the proxy-process harness.

- ``FakeFleet`` (``tests.fakes.provider``): fake providers speaking OpenAI chat and
  Responses and Anthropic Messages (``chat.py``, ``responses.py``, ``messages.py``).
- ``READY_ADDON``: mitmproxy script that writes the bound address to the file
  named by ``$ROUTECAR_READY_FILE``.
- ``mitmdump_argv(confdir, ...)``: argv for a stock ``mitmdump`` on a free
  loopback port with the ready addon loaded.
- ``ProxyProcess.start(argv, ...)``: run any proxy command (``mitmdump`` or
  ``routecar run``) that honours ``$ROUTECAR_READY_FILE``; poll until it is
  ready; stop it with SIGTERM, then SIGKILL.

Kept free of pytest so that benchmark scripts can use it as well.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.fakes.chat import error_body
from tests.fakes.provider import FakeFleet, FakeProvider, write_json_atomic

__all__ = [
    "BIN_DIR",
    "MITMDUMP",
    "READY_ADDON",
    "READY_ENV",
    "REPO_ROOT",
    "FakeFleet",
    "FakeProvider",
    "ProxyNotReady",
    "ProxyProcess",
    "error_body",
    "mitmdump_argv",
    "write_json_atomic",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
# Not resolved: the venv's python may be a symlink to a system interpreter.
BIN_DIR = Path(sys.executable).parent
MITMDUMP = str(BIN_DIR / "mitmdump")
READY_ADDON = str(Path(__file__).with_name("ready_addon.py"))
READY_ENV = "ROUTECAR_READY_FILE"
_PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


class ProxyNotReady(RuntimeError):
    """The proxy exited or did not write its ready file in time."""


def mitmdump_argv(
    confdir: str | os.PathLike[str],
    *extra: str,
    scripts: Sequence[str | os.PathLike[str]] = (),
    quiet: bool = True,
) -> list[str]:
    """argv for stock ``mitmdump`` on 127.0.0.1, a free port, ``confdir``, lazy
    upstream connections and the ready addon, followed by ``scripts`` and ``extra``.
    """
    argv = [MITMDUMP] + (["-q"] if quiet else [])
    argv += ["--listen-host", "127.0.0.1", "-p", "0"]
    argv += ["--set", f"confdir={confdir}", "--set", "connection_strategy=lazy"]
    argv += ["-s", READY_ADDON]
    for script in scripts:
        argv += ["-s", str(script)]
    return argv + list(extra)


class ProxyProcess:
    """A proxy subprocess whose output goes to a log file (never an unread pipe)."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        log_path: Path,
        ready_path: Path,
        confdir: Path | None,
    ) -> None:
        self.proc = proc
        self.log_path = log_path
        self.ready_path = ready_path
        self.confdir = confdir
        self.ready: dict[str, Any] = {}

    @classmethod
    def start(
        cls,
        argv: Sequence[str],
        workdir: str | os.PathLike[str],
        *,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = 20.0,
        confdir: str | os.PathLike[str] | None = None,
        name: str = "proxy",
    ) -> ProxyProcess:
        """Start ``argv`` and return once it has written its ready file.

        The child gets the parent's environment without proxy variables (so a
        proxy never chains through another by accident), then ``env``, then
        ``ROUTECAR_READY_FILE``.
        """
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = workdir / f"{name}.log"
        ready_path = workdir / f"{name}.ready.json"
        ready_path.unlink(missing_ok=True)
        child_env = {k: v for k, v in os.environ.items() if k not in _PROXY_ENV}
        child_env.update(env or {})
        child_env[READY_ENV] = str(ready_path)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env,
                cwd=REPO_ROOT,
                start_new_session=True,  # a terminal Ctrl-C is ours to forward, not its
            )
        self = cls(proc, log_path, ready_path, Path(confdir) if confdir else None)
        try:
            self.wait_ready(ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            if self.ready_path.exists():
                self.ready = json.loads(self.ready_path.read_text())
                return self.ready
            if self.proc.poll() is not None:
                raise ProxyNotReady(
                    f"proxy exited with {self.proc.returncode} before ready:\n{self.log_tail()}"
                )
            if time.monotonic() >= deadline:
                raise ProxyNotReady(f"proxy not ready after {timeout}s:\n{self.log_tail()}")
            time.sleep(delay)  # polling a condition with a deadline, not waiting blindly
            delay = min(delay * 2, 0.1)

    @property
    def host(self) -> str:
        return str(self.ready["host"])

    @property
    def port(self) -> int:
        return int(self.ready["port"])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ca_cert(self) -> Path:
        if self.confdir is None:
            raise ValueError("this proxy was started without a known confdir")
        return self.confdir / "mitmproxy-ca-cert.pem"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Idempotent."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
            except ProcessLookupError:
                pass
        return self.proc.returncode

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
