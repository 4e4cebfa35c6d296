"""The loopback fake providers behave like an OpenAI-compatible API and as scripted."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import openai
import pytest

from tests.fakes import REPO_ROOT, FakeFleet, error_body

MESSAGES = [{"role": "user", "content": "Say hello to the fake provider, please."}]


def client(fleet: FakeFleet, name: str = "mistral", timeout: float = 10) -> openai.OpenAI:
    return openai.OpenAI(base_url=fleet.url(name), api_key="k", max_retries=0, timeout=timeout)


def http_json(fleet: FakeFleet, name: str, method: str, path: str, body: object = None) -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", fleet.ports[name], timeout=5)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def test_non_streaming_answer_names_provider_and_model(fake: FakeFleet) -> None:
    r = client(fake).chat.completions.create(model="mistral-small", messages=MESSAGES)
    assert r.object == "chat.completion"
    assert r.model == "mistral-small"
    assert r.choices[0].message.content == "[fake:mistral] model=mistral-small ok"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None
    assert r.usage.prompt_tokens == len(MESSAGES[0]["content"]) // 4 + 1
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_each_provider_answers_on_its_own_port(fake: FakeFleet) -> None:
    assert len(set(fake.ports.values())) == len(fake.names)
    for name in ("openai", "groq"):
        r = client(fake, name).chat.completions.create(model="m", messages=MESSAGES)
        assert r.choices[0].message.content == f"[fake:{name}] model=m ok"
        assert len(fake.requests(name)) == 1


def test_streaming_role_first_then_content_then_finish_with_usage(fake: FakeFleet) -> None:
    fake.set_script("mistral", [{"chunks": 4}])
    stream = client(fake).chat.completions.create(
        model="mistral-small",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert [c.object for c in chunks] == ["chat.completion.chunk"] * 6
    assert chunks[0].choices[0].delta.role == "assistant"
    contents = [c.choices[0].delta.content for c in chunks[1:5]]
    assert all(contents)
    assert "".join(contents) == "[fake:mistral] model=mistral-small ok"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_streaming_without_include_usage_has_no_usage(fake: FakeFleet) -> None:
    chunks = list(client(fake).chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "[fake:mistral] model=m ok"


def test_raw_sse_wire_format_ends_with_done(fake: FakeFleet) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", fake.ports["openai"], timeout=5)
    body = json.dumps({"model": "gpt-4o", "messages": MESSAGES, "stream": True})
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    assert resp.getheader("Content-Type").startswith("text/event-stream")
    events = text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: {") for e in events[:-2])


def test_streamed_chunks_arrive_separately(fake: FakeFleet) -> None:
    delay = 0.2
    fake.set_script("mistral", [{"chunks": 3, "chunk_delay": delay}])
    start = time.monotonic()
    arrivals = []
    for _ in client(fake).chat.completions.create(model="m", messages=MESSAGES, stream=True):
        arrivals.append(time.monotonic() - start)
    assert len(arrivals) == 5  # role, 3 content chunks, finish
    assert arrivals[-1] >= 3 * delay  # the server slept before each content chunk
    # Streamed, not buffered: a buffering hop hands all five over at once (a spread of ~0), while
    # the role chunk left before the first sleep. Only lower bounds: a busy machine adds time.
    assert arrivals[-1] - arrivals[0] >= delay, arrivals


def test_azure_style_path_and_query_are_recorded(fake: FakeFleet) -> None:
    az = openai.AzureOpenAI(
        azure_endpoint=fake.base("azure"),
        api_key="az-key",
        api_version="2024-10-21",
        max_retries=0,
    )
    r = az.chat.completions.create(model="my-deploy", messages=MESSAGES)
    assert r.choices[0].message.content.startswith("[fake:azure]")
    (rec,) = fake.requests("azure")
    assert rec["path"] == "/openai/deployments/my-deploy/chat/completions"
    assert ["api-version", "2024-10-21"] in rec["query"]
    assert ["api-key", "az-key"] in rec["headers"]


def test_recording_keeps_header_case_duplicates_and_body(fake: FakeFleet) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", fake.ports["openai"], timeout=5)
    conn.putrequest("POST", "/v1/chat/completions?x=1&x=2")
    body = json.dumps({"model": "gpt-4o", "messages": MESSAGES}).encode()
    for name, value in [
        ("Content-Type", "application/json"),
        ("X-Route-Policy", "a"),
        ("x-route-policy", "b"),
        ("Content-Length", str(len(body))),
    ]:
        conn.putheader(name, value)
    conn.endheaders(body)
    assert conn.getresponse().status == 200
    conn.close()

    status, records = http_json(fake, "openai", "GET", "/_fake/requests")
    assert status == 200
    (rec,) = records
    assert rec["method"] == "POST"
    assert rec["path"] == "/v1/chat/completions"
    assert rec["query"] == [["x", "1"], ["x", "2"]]
    assert ["X-Route-Policy", "a"] in rec["headers"] and ["x-route-policy", "b"] in rec["headers"]
    assert rec["body"] == {"model": "gpt-4o", "messages": MESSAGES}
    assert rec == fake.requests("openai")[0]

    assert http_json(fake, "openai", "DELETE", "/_fake/requests")[0] == 200
    assert fake.requests("openai") == []


@pytest.mark.parametrize(
    ("status", "exc", "code"),
    [
        (500, openai.InternalServerError, "server_error"),
        (429, openai.RateLimitError, "rate_limit_exceeded"),
        (400, openai.BadRequestError, "context_length_exceeded"),
        (401, openai.AuthenticationError, "invalid_api_key"),
        (529, openai.InternalServerError, "overloaded"),
    ],
)
def test_scripted_error_statuses_have_openai_error_bodies(
    fake: FakeFleet, status: int, exc: type[Exception], code: str
) -> None:
    fake.set_script("mistral", [{"status": status}])
    with pytest.raises(exc) as info:
        client(fake).chat.completions.create(model="m", messages=MESSAGES)
    assert info.value.status_code == status
    assert info.value.code == code
    assert info.value.body == error_body(status)["error"]


def test_scripted_429_carries_retry_after_and_is_used_up(fake: FakeFleet) -> None:
    fake.set_script("mistral", [{"status": 429, "times": 2, "retry_after": "1"}])
    c = client(fake)
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as info:
            c.chat.completions.create(model="m", messages=MESSAGES)
        assert info.value.response.headers["retry-after"] == "1"
    assert c.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content
    assert len(fake.requests("mistral")) == 3


def test_script_matches_on_model_first_rule_wins(fake: FakeFleet) -> None:
    fake.set_script(
        "mistral",
        [
            {"match": {"model": "bad"}, "status": 503},
            {"match": {"model": "bad"}, "status": 500},
            {"body": {"custom": True}, "headers": {"X-Fake": "yes"}},
        ],
    )
    c = client(fake)
    with pytest.raises(openai.InternalServerError) as info:
        c.chat.completions.create(model="bad", messages=MESSAGES)
    assert info.value.status_code == 503
    raw = c.chat.completions.with_raw_response.create(model="good", messages=MESSAGES)
    assert raw.headers["x-fake"] == "yes"
    assert json.loads(raw.text) == {"custom": True}


def test_scripted_close_drops_connection(fake: FakeFleet) -> None:
    fake.set_script("mistral", [{"close": True, "times": 1}])
    with pytest.raises(openai.APIConnectionError):
        client(fake).chat.completions.create(model="m", messages=MESSAGES)
    # Used up: the next request is answered normally.
    assert client(fake).chat.completions.create(model="m", messages=MESSAGES).choices


def test_scripted_cut_mid_stream(fake: FakeFleet) -> None:
    # chunk_delay: read each chunk before the reset (which may discard unread data)
    fake.set_script("mistral", [{"chunks": 5, "cut_after_chunks": 2, "chunk_delay": 0.1}])
    got: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in client(fake).chat.completions.create(model="m", messages=MESSAGES, stream=True):
            got.append(chunk.choices[0].delta.content or "")
    assert len(got) == 3  # role chunk + 2 content chunks, then the cut
    assert "".join(got) and "[fake:mistral] model=m ok".startswith("".join(got))


def test_scripted_cut_non_streaming_sends_truncated_body(fake: FakeFleet) -> None:
    fake.set_script("mistral", [{"cut_after_chunks": 0}])
    with pytest.raises(openai.APIConnectionError):
        client(fake).chat.completions.create(model="m", messages=MESSAGES)


def test_scripted_delay_before_headers(fake: FakeFleet) -> None:
    fake.set_script("mistral", [{"delay": 0.3}])
    start = time.monotonic()
    client(fake).chat.completions.create(model="m", messages=MESSAGES)
    assert time.monotonic() - start >= 0.3
    fake.set_script("mistral", [{"delay": 2}])
    with pytest.raises(openai.APITimeoutError):
        client(fake, timeout=0.3).chat.completions.create(model="m", messages=MESSAGES)


def test_script_over_http_validates_and_resets(fake: FakeFleet) -> None:
    status, reply = http_json(fake, "groq", "POST", "/_fake/script", [{"stauts": 500}])
    assert status == 400 and "stauts" in reply["error"]
    status, reply = http_json(fake, "groq", "POST", "/_fake/script", [{"status": 502}])
    assert status == 200 and reply == [{"status": 502}]
    with pytest.raises(openai.InternalServerError):
        client(fake, "groq").chat.completions.create(model="m", messages=MESSAGES)
    assert http_json(fake, "groq", "DELETE", "/_fake/script") == (200, [])
    assert client(fake, "groq").chat.completions.create(model="m", messages=MESSAGES).choices


def test_models_endpoint(fake: FakeFleet) -> None:
    models = client(fake).models.list()
    assert "mistral-small" in [m.id for m in models.data]


def test_required_key_bearer_or_api_key() -> None:
    with FakeFleet(["openai", "azure"], require_keys={"openai": "sk-ok", "azure": "az-ok"}) as fleet:
        ok = openai.OpenAI(base_url=fleet.url("openai"), api_key="sk-ok", max_retries=0)
        assert ok.chat.completions.create(model="m", messages=MESSAGES).choices
        bad = openai.OpenAI(base_url=fleet.url("openai"), api_key="sk-app", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model="m", messages=MESSAGES)
        az = openai.AzureOpenAI(
            azure_endpoint=fleet.base("azure"), api_key="az-ok", api_version="2024-10-21", max_retries=0
        )
        assert az.chat.completions.create(model="d", messages=MESSAGES).choices
        assert len(fleet.requests("openai")) == 2


def test_required_key_set_per_test_is_undone_by_reset(fake: FakeFleet) -> None:
    fake.set_required_key("google", "g-key")
    with pytest.raises(openai.AuthenticationError):
        client(fake, "google").chat.completions.create(model="m", messages=MESSAGES)
    fake.reset()
    assert client(fake, "google").chat.completions.create(model="m", messages=MESSAGES).choices


def test_async_api_inside_running_loop() -> None:
    async def scenario() -> dict[str, object]:
        async with FakeFleet(["deepseek"]) as fleet:
            async with aiohttp.ClientSession() as session:
                async with session.post(
                    fleet.url("deepseek") + "/chat/completions",
                    json={"model": "deepseek-chat", "messages": MESSAGES},
                ) as resp:
                    return await resp.json()

    body = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert body["choices"][0]["message"]["content"] == "[fake:deepseek] model=deepseek-chat ok"


def test_command_line_writes_ready_file_and_stops_on_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    log = open(tmp_path / "fakes.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.provider", "--name", "openai", "--name", "scaleway",
         "--require-key", "scaleway=scw-key", "--ready-file", str(ready)],
        cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )
    try:
        deadline = time.monotonic() + 15
        while not ready.exists():
            assert proc.poll() is None, (tmp_path / "fakes.log").read_text()
            assert time.monotonic() < deadline, "fake providers not ready"
            time.sleep(0.02)
        ports = json.loads(ready.read_text())
        assert sorted(ports) == ["openai", "scaleway"]
        scw = openai.OpenAI(base_url=f"http://127.0.0.1:{ports['scaleway']}/v1", api_key="scw-key", max_retries=0)
        assert scw.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content == (
            "[fake:scaleway] model=m ok"
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        log.close()
