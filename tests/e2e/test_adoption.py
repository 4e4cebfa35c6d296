"""Zero-code adoption as a new user does it: only the variables `routecar env` prints.

- A Node app using built-in `fetch` (Node 20 ignores HTTPS_PROXY) reaches the fake
  provider through a reverse-mode sidecar with `eval "$(routecar env --reverse URL)"`.
- On a Node that honours NODE_USE_ENV_PROXY (24, late 22.x), regular mode works too.
- Stock `mitmdump -s` signs with its own confdir's CA: the command its start-up hint
  prints makes curl trust that CA (routecar's own CA would not).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import ADDON
from tests.fakes import MITMDUMP, READY_ADDON, ProxyProcess

NODE = shutil.which("node")
ROUTECAR = str(Path(sys.executable).parent / "routecar")  # the console script, as a user runs it
EU = json.dumps({"rules": [["eq", "region", "eu"]]})

# An app as Node developers write it: the base URL from the variable the official SDK reads.
NODE_APP = """
const base = process.env.OPENAI_BASE_URL ?? "https://api.openai.com/v1";
const res = await fetch(`${base}/chat/completions`, {
  method: "POST",
  headers: {"content-type": "application/json", "authorization": "Bearer sk-node-app-key",
            "x-route-policy": process.argv[2]},
  body: JSON.stringify({model: "gpt-4o", messages: [{role: "user", content: "hi from node"}]}),
});
const body = await res.json();
console.log(JSON.stringify({status: res.status, provider: res.headers.get("x-route-provider"),
                            trace: res.headers.get("x-route-trace-id"), content: body.choices?.[0]?.message?.content}));
"""


def exports(text: str) -> dict[str, str]:
    """What `eval` of `routecar env` output would set (sh syntax)."""
    out = {}
    for line in text.splitlines():
        words = shlex.split(line)
        if words and words[0] == "export":
            key, _, value = words[1].partition("=")
            out[key] = value
    return out


def routecar_env(*args: str, home: Path) -> dict[str, str]:
    r = subprocess.run([ROUTECAR, "env", *args], capture_output=True, text=True, timeout=30,
                       env={"ROUTECAR_HOME": str(home), "PATH": os.environ["PATH"], "HOME": str(home)})
    assert r.returncode == 0, r.stderr
    return exports(r.stdout)


def app_env(tmp_path: Path, extra: dict[str, str]) -> dict[str, str]:
    """A clean environment (no proxy variables of the test runner) plus the exports."""
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **extra}


def node_version() -> tuple[int, ...]:
    out = subprocess.run([NODE, "--version"], capture_output=True, text=True, timeout=10).stdout
    return tuple(int(x) for x in out.strip().lstrip("v").split("."))


def run_node_app(tmp_path: Path, env: dict[str, str]) -> dict:
    app = tmp_path / "app.mjs"
    app.write_text(NODE_APP)
    r = subprocess.run([NODE, str(app), EU], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_node_fetch_reaches_the_provider_through_a_reverse_sidecar(sidecar, fake, tmp_path, routecar_home):
    side = sidecar(mode="reverse")
    env = routecar_env("--reverse", side.url, home=routecar_home)
    assert env == {"OPENAI_BASE_URL": side.url + "/v1", "ANTHROPIC_BASE_URL": side.url}
    out = run_node_app(tmp_path, app_env(tmp_path, env))
    assert out["status"] == 200 and out["provider"] == "mistral"
    assert out["content"] == "[fake:mistral] model=mistral-small-3 ok"
    [rec] = fake.requests("mistral")
    assert "sk-node-app-key" not in json.dumps(rec)  # the app's own key never leaves
    assert side.trace_rows("select chosen_entry from decisions where trace_id = ?", out["trace"]) == [
        ("mistral/mistral-small-3",)]


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_node_regular_mode_with_node_use_env_proxy(sidecar, fake, tmp_path, routecar_home):
    version = node_version()
    if not (version >= (24,) or (22, 21) <= version < (23,)):
        pytest.skip(f"Node {'.'.join(map(str, version))} ignores NODE_USE_ENV_PROXY (fetch bypasses HTTPS_PROXY)")
    side = sidecar()
    env = routecar_env("--proxy", side.url, home=routecar_home)
    assert env["NODE_USE_ENV_PROXY"] == "1"
    out = run_node_app(tmp_path, app_env(tmp_path, env))
    assert out["status"] == 200 and out["provider"] == "mistral"


def test_stock_mitmdump_hint_trusts_the_ca_it_signs_with(tmp_path, loopback, fake):
    providers, keys = loopback
    home, rc_home = tmp_path / "home", tmp_path / "rc"  # mitmdump's ~/.mitmproxy vs routecar's CA
    home.mkdir()
    argv = [MITMDUMP, "--listen-host", "127.0.0.1", "-p", "0", "--set", "connection_strategy=lazy",
            "-s", READY_ADDON, "-s", ADDON, "--set", f"routecar_providers={providers}",
            "--set", f"routecar_traces={tmp_path / 'traces.db'}"]
    with ProxyProcess.start(argv, tmp_path, env={"HOME": str(home), "ROUTECAR_HOME": str(rc_home), **keys},
                            ready_timeout=60, name="mitmdump") as proxy:
        hint = None
        deadline = time.monotonic() + 20  # the addon logs it in its `running` hook, after the ready file
        while hint is None and time.monotonic() < deadline:
            hint = re.search(r'eval "\$\((routecar env [^)]*)\)"', proxy.log_text())
            time.sleep(0.05)  # polling a condition with a deadline
        assert hint, proxy.log_text()
        words = shlex.split(hint.group(1))
        assert words == ["routecar", "env", "--proxy", proxy.url, "--confdir", str(home / ".mitmproxy")]

        def curl(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "https://api.openai.com/v1/chat/completions",
                 "-H", "content-type: application/json", "-H", f"x-route-policy: {EU}",
                 "-d", '{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}'],
                capture_output=True, text=True, timeout=30, env=app_env(tmp_path, env))

        hinted = curl(routecar_env(*words[2:], home=rc_home))
        assert (hinted.returncode, hinted.stdout) == (0, "200")
        assert len(fake.requests("mistral")) == 1
        # The control: routecar's own CA is not the one mitmdump signs with.
        own_ca = curl(routecar_env("--proxy", proxy.url, home=rc_home))
        assert own_ca.returncode == 60  # curl: peer certificate cannot be authenticated
