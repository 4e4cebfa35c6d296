"""A request field a translation would drop is never dropped silently (chat and Responses).

The chat -> Messages and Responses -> chat translations carry what they know and drop a
short list of hints knowingly (docs/api-shapes.md). Any other field the app sent (here chat's
`logit_bias`, Responses' `include`) makes the request native-only: the translated entry is
dropped with `fit:api`, the call goes to a provider of the app's own shape with the field
intact, or is refused visibly when the policy allows none.
"""

from __future__ import annotations

import json

import openai
import pytest

from tests.e2e.conftest import sdk

USER = [{"role": "user", "content": "Say hello, please."}]
# Anthropic (translated from chat) ranks first, a chat-native entry second.
ANTHROPIC_THEN_MISTRAL = json.dumps({"rules": [["in", "id", ["anthropic/claude-haiku-4-5",
                                                             "mistral/mistral-small-3"]]],
                                     "rank": [["asc", "id"]]})
ANTHROPIC_ONLY = json.dumps({"rules": [["eq", "id", "anthropic/claude-haiku-4-5"]]})
# Mistral (chat only: Responses translated to chat) first, OpenAI (Responses-native) second.
MISTRAL_THEN_OPENAI = json.dumps({"rules": [["in", "id", ["mistral/mistral-small-3", "openai/gpt-5.5-nano"]]],
                                  "rank": [["asc", "id"]]})


def test_a_chat_field_the_messages_translation_lacks_stays_on_chat_providers(sidecar, fake):
    side = sidecar()
    bias = {"50256": -100}
    client = sdk(side, default_headers={"X-Route-Policy": ANTHROPIC_THEN_MISTRAL}, timeout=20)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=USER, logit_bias=bias)
    assert raw.headers["x-route-provider"] == "mistral" and raw.headers["x-route-attempts"] == "1"
    assert fake.requests("mistral")[-1]["body"]["logit_bias"] == bias
    assert fake.requests("anthropic") == []
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=USER)   # without it
    assert raw.headers["x-route-provider"] == "anthropic"
    only = sdk(side, default_headers={"X-Route-Policy": ANTHROPIC_ONLY}, timeout=20)
    with pytest.raises(openai.BadRequestError) as e:
        only.chat.completions.create(model="gpt-4o", messages=USER, logit_bias=bias)
    err = e.value.body if "code" in e.value.body else e.value.body["error"]
    assert err["code"] == "no_candidate" and e.value.response.headers["x-route-trace-id"]
    assert len(fake.requests("anthropic")) == 1   # only the call without logit_bias


def test_a_responses_field_the_chat_translation_lacks_stays_on_responses_providers(sidecar, fake):
    side = sidecar()
    client = sdk(side, default_headers={"X-Route-Policy": MISTRAL_THEN_OPENAI}, timeout=20)
    include = ["reasoning.encrypted_content"]
    raw = client.responses.with_raw_response.create(model="gpt-4o", input="hi", include=include, store=False)
    assert raw.headers["x-route-provider"] == "openai"
    assert fake.requests("openai")[-1]["body"]["include"] == include
    assert fake.requests("mistral") == []
    raw = client.responses.with_raw_response.create(model="gpt-4o", input="hi", store=False)
    assert raw.headers["x-route-provider"] == "mistral"
