"""The fakes speak OpenAI Responses and Anthropic Messages as the official SDKs expect:
each SDK is pointed straight at a fake (no proxy), plain and streaming, with the same
failure script as chat."""

from __future__ import annotations

import http.client
import json

import anthropic
import openai
import pytest

from tests.fakes import FakeFleet

USER = [{"role": "user", "content": "Say hello to the fake provider, please."}]
WEATHER = {"name": "get_weather", "arguments": {"city": "Paris"}}


def oai(fleet: FakeFleet, name: str = "openai") -> openai.OpenAI:
    return openai.OpenAI(base_url=fleet.url(name), api_key="k", max_retries=0, timeout=10)


def ant(fleet: FakeFleet, name: str = "anthropic", key: str = "k") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fleet.base(name), api_key=key, max_retries=0, timeout=10)


def headers(rec: dict) -> dict[str, str]:
    return {k.lower(): v for k, v in rec["headers"]}


def raw_post(fleet: FakeFleet, name: str, path: str, body: object, hdrs: dict[str, str]) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", fleet.ports[name], timeout=5)
    try:
        conn.request("POST", path, body=json.dumps(body).encode(), headers={"content-type": "application/json", **hdrs})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


# -- OpenAI Responses ---------------------------------------------------------------------

def test_responses_create_plain(fake: FakeFleet) -> None:
    r = oai(fake).responses.create(model="gpt-4o", input="Say hello", instructions="Be brief.", max_output_tokens=50)
    assert r.status == "completed" and r.model == "gpt-4o"
    assert r.output_text == "[fake:openai] model=gpt-4o ok"
    assert r.usage is not None and r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    rec = fake.requests("openai")[-1]
    assert rec["path"] == "/v1/responses" and headers(rec)["authorization"] == "Bearer k"
    assert rec["body"]["input"] == "Say hello" and rec["body"]["max_output_tokens"] == 50


def test_responses_stream_event_sequence_and_final_response(fake: FakeFleet) -> None:
    fake.set_script("openai", [{"chunks": 4, "tool_call": WEATHER}])
    with oai(fake).responses.stream(model="gpt-4o", input=USER) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_response()
    assert events[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                          "response.content_part.added"]
    assert events.count("response.output_text.delta") == 4
    assert events[-1] == "response.completed"
    assert "response.function_call_arguments.done" in events
    assert final.output_text == "[fake:openai] model=gpt-4o ok"
    call = final.output[1]
    assert (call.type, call.name, json.loads(call.arguments)) == ("function_call", "get_weather", {"city": "Paris"})


def test_responses_previous_response_id_needs_the_providers_state(fake: FakeFleet) -> None:
    client = oai(fake)
    first = client.responses.create(model="gpt-4o", input="one")
    second = client.responses.create(model="gpt-4o", input="two", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    with pytest.raises(openai.BadRequestError) as ei:
        client.responses.create(model="gpt-4o", input="x", previous_response_id="resp_elsewhere")
    assert ei.value.code == "previous_response_not_found"
    with pytest.raises(openai.BadRequestError):   # store: false keeps nothing
        unstored = client.responses.create(model="gpt-4o", input="x", store=False)
        client.responses.create(model="gpt-4o", input="y", previous_response_id=unstored.id)


def test_responses_length_is_incomplete(fake: FakeFleet) -> None:
    fake.set_script("openai", [{"finish_reason": "length"}])
    r = oai(fake).responses.create(model="gpt-4o", input="x", max_output_tokens=3)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"


def test_responses_scripted_failures(fake: FakeFleet) -> None:
    fake.set_script("openai", [{"status": 429, "retry_after": "2", "times": 1}, {"cut_after_chunks": 1}])
    with pytest.raises(openai.RateLimitError) as ei:
        oai(fake).responses.create(model="gpt-4o", input="x")
    assert ei.value.response.headers["retry-after"] == "2"
    with pytest.raises(openai.APIConnectionError):
        list(oai(fake).responses.create(model="gpt-4o", input="x", stream=True))


# -- Anthropic Messages --------------------------------------------------------------------

def test_messages_create_plain_records_anthropic_headers(fake: FakeFleet) -> None:
    fake.set_required_key("anthropic", "sk-ant-fake")
    m = ant(fake, key="sk-ant-fake").messages.create(model="claude-sonnet", max_tokens=64, messages=USER,
                                                     system="Be brief.")
    assert m.type == "message" and m.model == "claude-sonnet" and m.stop_reason == "end_turn"
    assert [b.type for b in m.content] == ["text"]
    assert m.content[0].text == "[fake:anthropic] model=claude-sonnet ok"
    assert m.usage.input_tokens > 0 and m.usage.output_tokens > 0
    rec = fake.requests("anthropic")[-1]
    h = headers(rec)
    # anthropic SDK 2.x sends its key as a Bearer token (1.x: x-api-key) and its own anthropic-version
    assert rec["path"] == "/v1/messages" and "sk-ant-fake" in (h.get("x-api-key"), h.get("authorization", "")[7:])
    assert h["anthropic-version"]
    assert rec["body"]["system"] == "Be brief." and rec["body"]["max_tokens"] == 64


def test_messages_stream_text_and_tool_use(fake: FakeFleet) -> None:
    fake.set_script("anthropic", [{"chunks": 5, "tool_call": WEATHER}])
    with ant(fake).messages.stream(model="claude-sonnet", max_tokens=64, messages=USER) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "[fake:anthropic] model=claude-sonnet ok"
    assert final.stop_reason == "tool_use"
    tool = final.content[1]
    assert tool.type == "tool_use" and tool.name == "get_weather" and tool.input == {"city": "Paris"}
    assert final.usage.output_tokens > 1


def test_messages_stop_reasons_follow_the_script(fake: FakeFleet) -> None:
    fake.set_script("anthropic", [{"finish_reason": "length", "times": 1}, {"finish_reason": "stop_sequence"}])
    client = ant(fake)
    assert client.messages.create(model="m", max_tokens=5, messages=USER).stop_reason == "max_tokens"
    m = client.messages.create(model="m", max_tokens=5, messages=USER, stop_sequences=["END"])
    assert (m.stop_reason, m.stop_sequence) == ("stop_sequence", "END")


def test_messages_errors_are_anthropic_shaped(fake: FakeFleet) -> None:
    fake.set_script("anthropic", [{"status": 529, "times": 1}, {"status": 429}])
    client = ant(fake)
    with pytest.raises(anthropic.InternalServerError) as ei:
        client.messages.create(model="m", max_tokens=5, messages=USER)
    assert ei.value.status_code == 529 and ei.value.body["error"]["type"] == "overloaded_error"
    with pytest.raises(anthropic.RateLimitError) as ei2:
        client.messages.create(model="m", max_tokens=5, messages=USER)
    assert ei2.value.body == {"type": "error", "error": {"type": "rate_limit_error", "message": ei2.value.body[
        "error"]["message"]}}


def test_messages_auth_and_protocol_are_checked(fake: FakeFleet) -> None:
    fake.set_required_key("anthropic", "sk-ant-fake")
    body = {"model": "m", "max_tokens": 5, "messages": USER}
    version = {"anthropic-version": "2023-06-01"}
    for good in ({"x-api-key": "sk-ant-fake"}, {"authorization": "Bearer sk-ant-fake"}):
        assert raw_post(fake, "anthropic", "/v1/messages", body, {**good, **version})[0] == 200
    status, err = raw_post(fake, "anthropic", "/v1/messages", body, {"api-key": "sk-ant-fake", **version})
    assert (status, err["error"]["type"]) == (401, "authentication_error")   # Azure's header is not Anthropic's
    status, err = raw_post(fake, "anthropic", "/v1/messages", body, {"x-api-key": "sk-ant-fake"})
    assert (status, err["error"]["message"]) == (400, "anthropic-version: header is required")
    status, err = raw_post(fake, "anthropic", "/v1/messages", {"model": "m", "messages": USER},
                           {"x-api-key": "sk-ant-fake", **version})
    assert (status, err["error"]["message"]) == (400, "max_tokens: Field required")


def test_messages_stream_cut_is_an_error_for_the_sdk(fake: FakeFleet) -> None:
    fake.set_script("anthropic", [{"chunks": 4, "cut_after_chunks": 2, "chunk_delay": 0.01}])
    got = []
    # The SDK does not wrap a stream's transport error: it surfaces as the HTTP client's own.
    with pytest.raises(Exception, match="incomplete chunked read|peer closed|Connection") as ei:
        with ant(fake).messages.stream(model="m", max_tokens=64, messages=USER) as stream:
            got.extend(stream.text_stream)
    assert not isinstance(ei.value, AssertionError)
    assert len(got) == 2


# -- chat: the new knobs ---------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
def test_chat_tool_call_knob(fake: FakeFleet, stream: bool) -> None:
    fake.set_script("mistral", [{"tool_call": WEATHER}])
    client = oai(fake, "mistral")
    if stream:
        chunks = list(client.chat.completions.create(model="m", messages=USER, stream=True))
        args = "".join(c.choices[0].delta.tool_calls[0].function.arguments or ""
                       for c in chunks if c.choices and c.choices[0].delta.tool_calls)
        names = [c.choices[0].delta.tool_calls[0].function.name for c in chunks
                 if c.choices and c.choices[0].delta.tool_calls and c.choices[0].delta.tool_calls[0].function.name]
        assert (names, json.loads(args), chunks[-1].choices[0].finish_reason) == (["get_weather"], {"city": "Paris"},
                                                                                  "tool_calls")
    else:
        r = client.chat.completions.create(model="m", messages=USER)
        call = r.choices[0].message.tool_calls[0]
        assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
        assert r.choices[0].finish_reason == "tool_calls"
