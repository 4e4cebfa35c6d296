"""The end-to-end harness works on this machine: stock mitmdump in front of the fakes.

No routecar code is involved here. These tests prove that the fixtures start a
real proxy, that the OpenAI SDK reaches a fake through it in reverse and in
regular (HTTPS_PROXY) mode, and that the session CA is trusted.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import openai
import pytest

from tests.fakes import MITMDUMP, FakeFleet, ProxyNotReady, ProxyProcess, mitmdump_argv

MESSAGES = [{"role": "user", "content": "hello through the proxy"}]

# What routecar does in regular mode, reduced to one line: send api.openai.com
# to a loopback fake. connection_strategy=lazy means mitmproxy never tries to
# reach the real host before this hook has run.
REDIRECT_ADDON = textwrap.dedent(
    """
    import os
    from urllib.parse import urlsplit

    TARGET = urlsplit(os.environ["FAKE_UPSTREAM"])

    class Redirect:
        def request(self, flow):
            if flow.request.pretty_host != "api.openai.com":
                return
            # Setting .host also updates the Host header.
            flow.request.scheme = TARGET.scheme
            flow.request.host = TARGET.hostname
            flow.request.port = TARGET.port
            flow.request.headers["x-redirected"] = "1"

    addons = [Redirect()]
    """
)


@pytest.fixture
def redirect_addon(tmp_path: Path) -> Path:
    path = tmp_path / "redirect_addon.py"
    path.write_text(REDIRECT_ADDON)
    return path


def test_reverse_mode_sdk_through_stock_mitmdump(fake: FakeFleet, start_proxy, mitmdump_cmd) -> None:
    proxy = start_proxy(mitmdump_cmd("--mode", f"reverse:{fake.base('openai')}"))
    assert proxy.host == "127.0.0.1" and proxy.port > 0
    c = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0, timeout=10)

    r = c.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert r.choices[0].message.content == "[fake:openai] model=gpt-4o ok"
    chunks = list(c.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == "[fake:openai] model=gpt-4o ok"

    records = fake.requests("openai")
    assert [rec["path"] for rec in records] == ["/v1/chat/completions"] * 2
    assert ["authorization", "Bearer k"] in records[0]["headers"]
    assert records[1]["body"]["stream"] is True


def test_reverse_mode_streams_chunk_by_chunk_with_stream_large_bodies(
    fake: FakeFleet, start_proxy, mitmdump_cmd
) -> None:
    # Stock mitmproxy buffers whole bodies; streaming needs stream_large_bodies.
    proxy = start_proxy(
        mitmdump_cmd("--mode", f"reverse:{fake.base('mistral')}", "--set", "stream_large_bodies=1")
    )
    delay = 0.2
    fake.set_script("mistral", [{"chunks": 3, "chunk_delay": delay}])
    c = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0, timeout=10)
    start = time.monotonic()
    arrivals = [
        time.monotonic() - start
        for _ in c.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    ]
    assert len(arrivals) == 5
    assert arrivals[-1] >= 3 * delay
    # chunk by chunk: a buffering proxy would hand all five over at once (a spread of ~0)
    assert arrivals[-1] - arrivals[0] >= delay, arrivals


def test_regular_mode_intercepts_https_with_session_ca(
    fake: FakeFleet, start_proxy, mitmdump_cmd, redirect_addon: Path
) -> None:
    proxy = start_proxy(
        mitmdump_cmd(scripts=[redirect_addon]), env={"FAKE_UPSTREAM": fake.base("openai")}
    )
    assert proxy.ca_cert.is_file()
    http_client = openai.DefaultHttpxClient(
        proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.ca_cert))
    )
    c = openai.OpenAI(
        base_url="https://api.openai.com/v1",
        api_key="sk-app",
        http_client=http_client,
        max_retries=0,
        timeout=10,
    )
    r = c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert r.choices[0].message.content == "[fake:openai] model=gpt-4o-mini ok"
    chunks = list(c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"

    (first, _) = fake.requests("openai")
    headers = {k.lower(): v for k, v in first["headers"]}
    assert headers["x-redirected"] == "1"
    assert headers["authorization"] == "Bearer sk-app"
    assert first["path"] == "/v1/chat/completions"


def test_regular_mode_rejects_client_without_the_ca(
    fake: FakeFleet, start_proxy, mitmdump_cmd, redirect_addon: Path
) -> None:
    proxy = start_proxy(
        mitmdump_cmd(scripts=[redirect_addon]), env={"FAKE_UPSTREAM": fake.base("openai")}
    )
    c = openai.OpenAI(
        base_url="https://api.openai.com/v1",
        api_key="k",
        http_client=openai.DefaultHttpxClient(proxy=proxy.url, trust_env=False),
        max_retries=0,
        timeout=10,
    )
    with pytest.raises(openai.APIConnectionError):
        c.chat.completions.create(model="m", messages=MESSAGES)
    assert fake.requests("openai") == []


def test_unmodified_app_with_https_proxy_and_ssl_cert_file(
    fake: FakeFleet, start_proxy, mitmdump_cmd, redirect_addon: Path, tmp_path: Path
) -> None:
    proxy = start_proxy(
        mitmdump_cmd(scripts=[redirect_addon]), env={"FAKE_UPSTREAM": fake.base("openai")}
    )
    app = (
        "import json, openai\n"
        "c = openai.OpenAI(api_key='sk-app', max_retries=0, timeout=10)\n"
        "r = c.chat.completions.create(model='gpt-4o', messages=[{'role': 'user', 'content': 'hi'}])\n"
        "print(json.dumps({'content': r.choices[0].message.content}))\n"
    )
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.pop("OPENAI_BASE_URL", None)  # the app must believe it talks to api.openai.com
    env.update(HTTPS_PROXY=proxy.url, SSL_CERT_FILE=str(proxy.ca_cert))
    out = subprocess.run(
        [sys.executable, "-c", app], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr + proxy.log_text()
    assert json.loads(out.stdout) == {"content": "[fake:openai] model=gpt-4o ok"}


def test_proxy_that_exits_early_reports_its_log(start_proxy) -> None:
    with pytest.raises(ProxyNotReady) as info:
        start_proxy([MITMDUMP, "--mode", "nonsense", "-p", "0"], ready_timeout=60)
    assert "exited with 1" in str(info.value)  # reported as an exit, not as a timeout
    assert "Invalid proxy mode specification: nonsense" in str(info.value)


def test_proxy_that_never_gets_ready_times_out_and_is_stopped(tmp_path: Path) -> None:
    # No ready addon: the proxy runs but never announces itself.
    argv = [MITMDUMP, "-q", "--listen-host", "127.0.0.1", "-p", "0"]
    before = _children()
    with pytest.raises(ProxyNotReady, match="not ready after 1.0s"):
        ProxyProcess.start(argv, tmp_path, ready_timeout=1.0, name="silent")
    # ProxyProcess.start stopped (and reaped) the child before raising.
    assert _children() <= before


def _children() -> set[int]:
    """Live (not yet reaped) child processes of this test process, from /proc."""
    me, kids = os.getpid(), set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid ...": comm may contain spaces, so split after ')'.
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the process ended while we looked
        if int(fields[1]) == me:
            kids.add(int(stat.parent.name))
    return kids


def test_stop_terminates_and_is_idempotent(fake: FakeFleet, start_proxy, mitmdump_cmd) -> None:
    proxy = start_proxy(mitmdump_cmd("--mode", f"reverse:{fake.base('groq')}"))
    assert proxy.stop() is not None
    assert proxy.proc.poll() is not None
    proxy.stop()
    with pytest.raises(openai.APIConnectionError):
        openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0, timeout=2).models.list()


def test_ready_file_is_written_by_the_ready_addon(tmp_path: Path, mitm_confdir: Path) -> None:
    # The env var is the whole interface: any command (e.g. `routecar run`) can honour it.
    with ProxyProcess.start(mitmdump_argv(mitm_confdir), tmp_path, confdir=mitm_confdir) as proxy:
        ready = json.loads(proxy.ready_path.read_text())
        assert ready["host"] == "127.0.0.1"
        assert [ready["host"], ready["port"]] in ready["addrs"]
        assert proxy.proc.poll() is None
    assert proxy.proc.poll() is not None
