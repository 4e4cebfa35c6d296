"""Issue 12 end to end: every API shape apps send, through the real sidecar, with the
official SDKs an app uses (openai: chat, responses.create, responses.stream; anthropic:
messages.create, messages.stream), in regular mode (HTTPS_PROXY, the SDK calling
api.openai.com / api.anthropic.com) and reverse mode; native and translated routes,
tool calls, fallback across shapes, errors in the caller's format, GET /models.

Tests whose calls all succeed (or are refused before any provider) share one sidecar per
mode (`shared_sidecar`) and read their own trace by its id; a test that makes a provider
fail starts its own, so live health never leaks into another test."""

from __future__ import annotations

import json
import sqlite3
import ssl
import time
from typing import Any

import anthropic
import openai
import pytest

from tests.e2e.conftest import Sidecar, sdk

ANTHROPIC = json.dumps({"rules": [["eq", "provider", "anthropic"]]})
MISTRAL = json.dumps({"rules": [["eq", "id", "mistral/mistral-small-3"]]})
OPENAI = json.dumps({"rules": [["eq", "id", "openai/gpt-5.5-nano"]]})
# Anthropic first (the cheapest of its entries: haiku), then a chat-only entry.
ANTHROPIC_THEN_MISTRAL = json.dumps({"rules": [["in", "id", ["anthropic/claude-haiku-4-5",
                                                             "mistral/mistral-small-3"]]],
                                     "rank": [["desc", "zdr"], ["asc", "id"]]})
USER = [{"role": "user", "content": "Say hello, please."}]
WEATHER = {"name": "get_weather", "arguments": {"city": "Paris"}}
TOOL = {"name": "get_weather", "description": "weather", "input_schema": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def ant(side: Sidecar, policy: str | None = None, key: str = "sk-ant-app-own-key-123456",
        urls: list[str] | None = None) -> anthropic.Anthropic:
    """The anthropic SDK as an unmodified app has it: api.anthropic.com through HTTPS_PROXY,
    or the sidecar as its base URL in reverse mode. `urls` collects the URL of every request
    the SDK sends."""
    headers = {"X-Route-Policy": policy} if policy else None
    hooks = {"request": [lambda r: urls.append(str(r.url))]} if urls is not None else None
    if side.mode == "reverse":
        return anthropic.Anthropic(base_url=side.url, api_key=key, max_retries=0, timeout=20,
                                   default_headers=headers,
                                   http_client=anthropic.DefaultHttpxClient(event_hooks=hooks) if hooks else None)
    http_client = anthropic.DefaultHttpxClient(proxy=side.url, event_hooks=hooks,
                                               verify=ssl.create_default_context(cafile=str(side.ca)))
    return anthropic.Anthropic(base_url="https://api.anthropic.com", api_key=key, max_retries=0, timeout=20,
                               http_client=http_client, default_headers=headers)


def oai(side: Sidecar, policy: str) -> openai.OpenAI:
    return sdk(side, default_headers={"X-Route-Policy": policy}, timeout=20)


def trace(side: Sidecar, trace_id: str) -> dict[str, Any]:
    cols = ("api_in", "api_out", "chosen_entry", "outcome", "prompt_tokens", "completion_tokens", "attempts_count")
    rows = side.trace_rows(f"SELECT {', '.join(cols)} FROM decisions WHERE trace_id = ?", trace_id)
    assert rows, f"no trace {trace_id}"
    return dict(zip(cols, rows[0]))


def wait_trace(side: Sidecar, trace_id: str) -> dict[str, Any]:
    """Trace rows are written by a thread after the answer: poll with a deadline."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if side.trace_rows("SELECT 1 FROM decisions WHERE trace_id = ?", trace_id):
                return trace(side, trace_id)
        except sqlite3.OperationalError:
            pass   # the store is not created yet
        time.sleep(0.05)
    raise AssertionError(f"trace {trace_id} was not written within 10 s")


def last(fake, name: str) -> dict[str, Any]:
    return fake.requests(name)[-1]


def hdrs(rec: dict[str, Any]) -> dict[str, str]:
    return {k.lower(): v for k, v in rec["headers"]}


# -- Anthropic Messages callers ---------------------------------------------------------------

@pytest.mark.parametrize("mode", ["regular", "reverse"])
def test_messages_native(shared_sidecar, fake, mode):
    side = shared_sidecar(mode=mode)
    raw = ant(side, ANTHROPIC).messages.with_raw_response.create(
        model="claude-whatever", max_tokens=100, system="Be brief.", messages=USER)
    msg = raw.parse()
    assert msg.type == "message" and msg.content[0].text.startswith("[fake:anthropic] model=claude-haiku-4-5")
    assert raw.headers["x-route-provider"] == "anthropic" and raw.headers["x-route-model"] == "claude-haiku-4-5"
    rec = last(fake, "anthropic")
    assert rec["path"] == "/v1/messages" and rec["body"]["model"] == "claude-haiku-4-5"
    h = hdrs(rec)
    assert h["x-api-key"] == "fake-key-anthropic"          # the operator's key, not the app's
    assert "sk-ant-app-own-key" not in json.dumps(rec["headers"]) and "x-route-policy" not in h
    t = wait_trace(side, raw.headers["x-route-trace-id"])
    assert (t["api_in"], t["api_out"], t["outcome"]) == ("messages", "messages", "ok")
    assert t["prompt_tokens"] == msg.usage.input_tokens and t["completion_tokens"] == msg.usage.output_tokens


@pytest.mark.parametrize("mode", ["regular", "reverse"])
def test_messages_to_chat_entry_and_back(shared_sidecar, fake, mode):
    side = shared_sidecar(mode=mode)
    fake.set_script("mistral", [{"tool_call": WEATHER, "finish_reason": "tool_calls", "times": 1}])
    raw = ant(side, MISTRAL).messages.with_raw_response.create(
        model="claude-whatever", max_tokens=100, tools=[TOOL], messages=USER)
    msg = raw.parse()
    assert raw.headers["x-route-provider"] == "mistral"
    assert msg.stop_reason == "tool_use"
    tool_use = [b for b in msg.content if b.type == "tool_use"]
    assert tool_use and tool_use[0].name == "get_weather" and tool_use[0].input == {"city": "Paris"}
    rec = last(fake, "mistral")
    assert rec["path"] == "/v1/chat/completions" and rec["body"]["model"] == "mistral-small-3"
    assert rec["body"]["tools"][0]["function"]["name"] == "get_weather"
    assert not [k for k in hdrs(rec) if k.startswith("anthropic-")]   # protocol headers of the other shape
    t = wait_trace(side, raw.headers["x-route-trace-id"])
    assert (t["api_in"], t["api_out"]) == ("messages", "chat")


@pytest.mark.parametrize("policy,provider", [(ANTHROPIC, "anthropic"), (MISTRAL, "mistral")])
def test_messages_stream_native_and_translated(shared_sidecar, fake, policy, provider):
    side = shared_sidecar()
    fake.set_script(provider, [{"chunks": 4, "times": 1}])
    with ant(side, policy).messages.stream(model="claude-whatever", max_tokens=100, messages=USER) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.startswith(f"[fake:{provider}]") and final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0
    t = wait_trace(side, stream.response.headers["x-route-trace-id"])
    assert t["api_in"] == "messages" and t["api_out"] == ("messages" if provider == "anthropic" else "chat")
    assert t["completion_tokens"] == final.usage.output_tokens


# The anthropic TypeScript SDK's (and Claude Code's) `client.beta.messages.create/stream` post to
# `/v1/messages?beta=true`, as older Python SDKs did; the Python SDK 2.x keeps that marker to
# itself (`qualifiers`) and posts to `/v1/messages`. Both are sent here with the real Python SDK.
BETA_WIRES = [(None, "/v1/messages"), ({"beta": "true"}, "/v1/messages?beta=true")]


@pytest.mark.parametrize("query,sent", BETA_WIRES, ids=["python-sdk", "typescript-sdk-wire"])
@pytest.mark.parametrize("mode,policy,provider", [("regular", ANTHROPIC, "anthropic"),
                                                   ("regular", MISTRAL, "mistral"),
                                                   ("reverse", ANTHROPIC, "anthropic")])
def test_beta_messages_are_routed_like_messages(shared_sidecar, fake, mode, policy, provider, query, sent):
    """`client.beta.messages.create/stream`: routed like /v1/messages, the `?beta=true` marker never
    forwarded, the app's `anthropic-beta` kept on a native call."""
    side = shared_sidecar(mode=mode)
    urls: list[str] = []
    client = ant(side, policy, urls=urls)
    raw = client.beta.messages.with_raw_response.create(
        model="claude-whatever", max_tokens=100, messages=USER, betas=["token-efficient-tools-2025-02-19"],
        extra_query=query)
    msg = raw.parse()
    assert urls[-1].endswith(sent)   # what the SDK really sent
    assert msg.content[0].text.startswith(f"[fake:{provider}]") and raw.headers["x-route-provider"] == provider
    rec = last(fake, provider)
    assert rec["query_string"] == "" and "beta" not in rec["raw_path"]   # routecar builds the provider's URL
    if provider == "anthropic":
        assert hdrs(rec)["anthropic-beta"] == "token-efficient-tools-2025-02-19"
    t = wait_trace(side, raw.headers["x-route-trace-id"])
    assert (t["api_in"], t["api_out"], t["outcome"]) == (
        "messages", "messages" if provider == "anthropic" else "chat", "ok")
    with client.beta.messages.stream(model="claude-whatever", max_tokens=100, messages=USER,
                                     extra_query=query) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        trace_id = stream.response.headers["x-route-trace-id"]
    assert urls[-1].endswith(sent)
    assert text.startswith(f"[fake:{provider}]") and final.stop_reason == "end_turn"
    t = wait_trace(side, trace_id)
    assert t["outcome"] == "ok" and t["completion_tokens"] == final.usage.output_tokens
    assert all(r["query_string"] == "" for r in fake.requests(provider))


def test_a_beta_feature_a_translation_would_drop_goes_to_a_messages_provider_only(shared_sidecar, fake):
    """A beta field the chat translation does not carry (`context_management`) makes the request
    native-only: never sent to a chat provider without it, refused visibly if nothing else is allowed."""
    side = shared_sidecar()
    kw: dict[str, Any] = {"model": "claude-whatever", "max_tokens": 50, "messages": USER,
                          "betas": ["context-management-2025-06-27"],
                          "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]}}
    with pytest.raises(anthropic.BadRequestError) as e:
        ant(side, MISTRAL).beta.messages.create(**kw)
    dropped = {d["id"]: d["failed"]["id"] for d in e.value.body["error"]["dropped"]}
    assert e.value.body["error"]["code"] == "no_candidate" and dropped["mistral/mistral-small-3"] == "fit:api"
    mistral_first = json.dumps({"rules": [["in", "id", ["anthropic/claude-haiku-4-5", "mistral/mistral-small-3"]]],
                                "rank": [["desc", "id"]]})
    raw = ant(side, mistral_first).beta.messages.with_raw_response.create(**kw)
    assert raw.headers["x-route-provider"] == "anthropic" and raw.headers["x-route-attempts"] == "1"
    assert last(fake, "anthropic")["body"]["context_management"] == kw["context_management"]
    assert fake.requests("mistral") == []
    kw.pop("context_management")   # the same call without it may be translated
    raw = ant(side, mistral_first).beta.messages.with_raw_response.create(**kw)
    assert raw.headers["x-route-provider"] == "mistral"


def test_other_queries_on_messages_are_refused_in_anthropic_format(shared_sidecar, fake):
    """Anything but the exact marker can change what a provider does: refused, visibly."""
    side = shared_sidecar()
    client = ant(side, ANTHROPIC)
    for query in ({"beta": "true", "x": "1"}, {"beta": "1"}, {"BETA": "true"}):
        with pytest.raises(anthropic.BadRequestError) as e:
            client.messages.create(model="m", max_tokens=10, messages=USER, extra_query=query)
        body = e.value.body
        assert body["type"] == "error" and body["error"]["code"] == "unsupported_endpoint", query
        assert "query string" in body["error"]["message"] and e.value.response.headers["x-route-trace-id"]
    assert fake.requests("anthropic") == []


def test_messages_errors_in_anthropic_format(sidecar, fake):
    side = sidecar()
    with pytest.raises(anthropic.BadRequestError) as e:   # invalid policy: routecar's own error
        ant(side, '{"rules": [["eq", "regoin", "eu"]]}').messages.create(
            model="m", max_tokens=10, messages=USER)
    assert e.value.body["type"] == "error" and e.value.body["error"]["code"] == "invalid_policy"
    assert e.value.response.headers["x-route-trace-id"]
    fake.set_script("anthropic", [{"status": 500}])
    with pytest.raises(anthropic.APIStatusError) as e:    # every attempt failed
        ant(side, ANTHROPIC).messages.create(model="m", max_tokens=10, messages=USER)
    assert e.value.status_code == 502 and e.value.body["error"]["code"] == "upstream_failed"
    fake.set_script("anthropic", [])
    fake.set_script("mistral", [{"status": 400, "body": {"error": {"message": "bad thing", "type": "x"}}}])
    with pytest.raises(anthropic.BadRequestError) as e:   # a chat provider's 4xx, translated
        ant(side, MISTRAL).messages.create(model="m", max_tokens=10, messages=USER)
    assert e.value.body["type"] == "error" and e.value.body["error"]["message"] == "bad thing"
    fake.set_script("mistral", [])


def test_fallback_across_shapes(sidecar, fake):
    side = sidecar()
    fake.set_script("anthropic", [{"status": 503}])
    raw = ant(side, ANTHROPIC_THEN_MISTRAL).messages.with_raw_response.create(
        model="m", max_tokens=50, messages=USER)
    assert raw.parse().content[0].text.startswith("[fake:mistral]")
    assert raw.headers["x-route-attempts"] == "2" and raw.headers["x-route-provider"] == "mistral"
    t = wait_trace(side, raw.headers["x-route-trace-id"])
    assert (t["api_in"], t["api_out"], t["attempts_count"]) == ("messages", "chat", 2)
    fake.set_script("anthropic", [])


# -- OpenAI chat and Responses callers ------------------------------------------------------------

@pytest.mark.parametrize("mode", ["regular", "reverse"])
def test_chat_to_messages_entry(shared_sidecar, fake, mode):
    side = shared_sidecar(mode=mode)
    client = oai(side, ANTHROPIC)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=USER, max_tokens=50)
    resp = raw.parse()
    assert resp.choices[0].message.content.startswith("[fake:anthropic]")
    rec = last(fake, "anthropic")
    assert rec["path"] == "/v1/messages" and hdrs(rec)["anthropic-version"] == "2023-06-01"
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=USER, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith("[fake:anthropic]")
    assert chunks[-1].usage is not None
    t = wait_trace(side, raw.headers["x-route-trace-id"])
    assert (t["api_in"], t["api_out"]) == ("chat", "messages")


@pytest.mark.parametrize("mode", ["regular", "reverse"])
def test_responses_native_and_translated(shared_sidecar, fake, mode):
    side = shared_sidecar(mode=mode)
    native = oai(side, OPENAI).responses.with_raw_response.create(model="gpt-4o", input="Say hello",
                                                                   max_output_tokens=50)
    assert native.parse().output_text.startswith("[fake:openai] model=gpt-5.5-nano")
    assert last(fake, "openai")["path"] == "/v1/responses"
    fake.set_script("mistral", [{"tool_call": WEATHER, "finish_reason": "tool_calls", "times": 1}])
    translated = oai(side, MISTRAL).responses.with_raw_response.create(
        model="gpt-4o", input="weather?", instructions="Be brief.",
        tools=[{"type": "function", "name": "get_weather", "parameters": TOOL["input_schema"]}])
    r = translated.parse()
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"city": "Paris"}
    assert last(fake, "mistral")["path"] == "/v1/chat/completions"
    assert wait_trace(side, native.headers["x-route-trace-id"])["api_out"] == "responses"
    t = wait_trace(side, translated.headers["x-route-trace-id"])
    assert (t["api_in"], t["api_out"]) == ("responses", "chat")


def test_responses_stream_translated(shared_sidecar, fake):
    side = shared_sidecar()
    fake.set_script("mistral", [{"chunks": 4, "times": 1}])
    with oai(side, MISTRAL).responses.stream(model="gpt-4o", input=USER) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output_text.startswith("[fake:mistral]") and final.usage is not None


def test_stateful_responses_only_go_to_responses_native_entries(shared_sidecar, fake):
    side = shared_sidecar()
    with pytest.raises(openai.BadRequestError) as e:   # the only allowed entry cannot hold the state
        oai(side, MISTRAL).responses.create(model="gpt-4o", input="go on", previous_response_id="resp_123")
    assert e.value.code == "no_candidate" and "fit:api" in json.dumps(e.value.body)


# -- GET /models ------------------------------------------------------------------------------

def test_models_lists_what_the_policy_allows(shared_sidecar, fake):
    side = shared_sidecar()
    ids = [m.id for m in oai(side, json.dumps({"rules": [["eq", "region", "eu"]]})).models.list()]
    assert ids and all(i.startswith(("mistral/", "azure/", "scaleway/", "google/gemini-3.5-flash@eu")) for i in ids)
    page = ant(side, ANTHROPIC).models.list()
    assert sorted(m.id for m in page.data) == ["anthropic/claude-haiku-4-5", "anthropic/claude-opus-4-6",
                                               "anthropic/claude-sonnet-4-6"]


def test_no_log_keeps_no_payload_for_translated_streams(shared_sidecar, fake):
    side = shared_sidecar()
    secret = "the-private-prompt-1234"
    policy = json.dumps({"rules": [["eq", "id", "mistral/mistral-small-3"]], "no_log": True})
    with ant(side, policy).messages.stream(model="m", max_tokens=50,
                                           messages=[{"role": "user", "content": secret}]) as stream:
        assert "".join(stream.text_stream).startswith("[fake:mistral]")
    trace_id = stream.response.headers["x-route-trace-id"]
    t = wait_trace(side, trace_id)
    assert t["api_in"] == "messages"
    assert not side.trace_rows("SELECT 1 FROM payloads WHERE trace_id = ?", trace_id)
    for path in side.traces.parent.glob(side.traces.name + "*"):   # the DB and its WAL
        assert secret.encode() not in path.read_bytes(), path
