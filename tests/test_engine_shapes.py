"""The engine with every API shape: the `fit:api` check, the outbound shape and headers,
and `GET …/models` lists. Built from the shipped catalog and providers (OpenAI speaks
chat and Responses, Anthropic Messages only, the rest chat): no proxy, no network."""

from __future__ import annotations

import json
from typing import Any

import pytest

from routecar.errors import BadRequest, NoCandidate
from tests.test_engine import ENV, make_engine  # noqa: F401 - the fixture

ALL = json.dumps({"rules": []})
MESSAGES_BODY: dict[str, Any] = {"model": "claude", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
RESPONSES_BODY: dict[str, Any] = {"model": "gpt-4o", "input": "hi", "max_output_tokens": 32}
CHAT_BODY: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def entry(engine, entry_id: str):
    return next(e for e in engine.catalog.entries if e.id == entry_id)


@pytest.mark.parametrize("api,body,providers", [
    ("chat", CHAT_BODY, None),                                    # every provider: native or translated
    ("messages", MESSAGES_BODY, None),
    # no Responses -> Messages translation: Anthropic cannot carry a Responses request
    ("responses", RESPONSES_BODY, ["azure", "deepseek", "google", "groq", "mistral", "openai", "scaleway"]),
    ("responses", {**RESPONSES_BODY, "previous_response_id": "resp_1"}, ["openai"]),
    ("responses", {**RESPONSES_BODY, "tools": [{"type": "web_search"}]}, ["openai"]),
    ("messages", {**MESSAGES_BODY, "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
     ["anthropic"]),
    ("chat", {**CHAT_BODY, "n": 2}, ["azure", "deepseek", "google", "groq", "mistral", "openai", "scaleway"]),
])
def test_fit_api_names_the_providers_that_can_carry_the_request(make_engine, api, body, providers):
    engine = make_engine(tenants=None)
    policy = engine.policies().parse(ALL)
    d = engine.decide(policy, body, api=api)
    req = d.request.to_dict()
    assert req.get("api_providers") == providers
    dropped = {x["id"]: x["failed"]["id"] for x in d.dropped()}
    kept = {engine.catalog.entries[i].provider for i in d.order}
    if providers is None:
        assert "fit:api" not in dropped.values()
    else:
        assert kept == set(providers)
        assert {i for i, why in dropped.items() if why == "fit:api"} == {
            e.id for e in engine.catalog.entries if e.provider not in providers}


def test_no_candidate_when_only_untranslatable_entries_are_allowed(make_engine):
    engine = make_engine(tenants=None)
    policy = engine.policies().parse(json.dumps({"rules": [["eq", "provider", "mistral"]]}))
    with pytest.raises(NoCandidate) as e:
        engine.decide(policy, {**RESPONSES_BODY, "conversation": "conv_1"}, api="responses")
    assert "fit:api failed" in json.dumps(e.value.to_openai())


def test_outbound_native_messages_keeps_the_apps_version_and_uses_x_api_key(make_engine):
    engine = make_engine(tenants=None)
    out = engine.outbound(entry(engine, "anthropic/claude-haiku-4-5"), MESSAGES_BODY,
                          {"anthropic-version": "2024-10-22", "Authorization": "Bearer app", "x-api-key": "app"},
                          "messages")
    assert out.api_out == "messages" and out.translation is None
    assert out.url == "https://api.anthropic.com/v1/messages"
    assert out.headers["anthropic-version"] == "2024-10-22" and out.headers["x-api-key"] == ENV["ANTHROPIC_API_KEY"]
    assert "authorization" not in out.headers
    assert json.loads(out.body)["model"] == "claude-haiku-4-5"


def test_outbound_chat_to_messages_fills_the_version_and_drops_openai_headers(make_engine):
    engine = make_engine(tenants=None)
    out = engine.outbound(entry(engine, "anthropic/claude-haiku-4-5"), CHAT_BODY, {"OpenAI-Beta": "x"}, "chat")
    assert (out.api_out, out.url) == ("messages", "https://api.anthropic.com/v1/messages")
    assert out.translation is not None and out.headers["anthropic-version"] == "2023-06-01"
    assert "openai-beta" not in out.headers
    sent = json.loads(out.body)
    assert sent["model"] == "claude-haiku-4-5" and sent["max_tokens"] == 4096   # required by Messages
    assert [m["role"] for m in sent["messages"]] == ["user"]


def test_outbound_messages_to_chat_drops_anthropic_headers(make_engine):
    engine = make_engine(tenants=None)
    out = engine.outbound(entry(engine, "mistral/mistral-small-3"), MESSAGES_BODY,
                          {"anthropic-version": "2023-06-01", "anthropic-beta": "tools"}, "messages")
    assert (out.api_out, out.url) == ("chat", "https://api.mistral.ai/v1/chat/completions")
    assert not [k for k in out.headers if k.startswith("anthropic-")]
    assert out.headers["authorization"] == f"Bearer {ENV['MISTRAL_API_KEY']}"
    assert json.loads(out.body)["max_tokens"] == 64


def test_outbound_refuses_a_request_its_provider_cannot_carry(make_engine):
    engine = make_engine(tenants=None)
    with pytest.raises(BadRequest, match="cannot be sent to mistral/mistral-small-3"):
        engine.outbound(entry(engine, "mistral/mistral-small-3"), {**RESPONSES_BODY, "previous_response_id": "r"},
                        {}, "responses")


def test_models_lists_allowed_entries_in_both_formats(make_engine):
    engine = make_engine(tenants=None)
    policy = engine.policies().parse(json.dumps({"rules": [["eq", "provider", "anthropic"]]}))
    openai_list = engine.models(policy)
    assert openai_list["object"] == "list"
    ids = [m["id"] for m in openai_list["data"]]
    assert sorted(ids) == ["anthropic/claude-haiku-4-5", "anthropic/claude-opus-4-6", "anthropic/claude-sonnet-4-6"]
    assert {m["owned_by"] for m in openai_list["data"]} == {"anthropic"}
    ant = engine.models(policy, anthropic=True)
    assert [m["id"] for m in ant["data"]] == ids and ant["has_more"] is False
    assert ant["first_id"] == ids[0] and ant["last_id"] == ids[-1] and ant["data"][0]["type"] == "model"
