"""How a provider's stream ended, as the relay learns it (`apis.Reshape.end`), for every native
shape and every translation: complete (its terminal marker came), truncated (it ended cleanly
without one) or an error (the provider said so in the stream). A native stream is relayed byte
for byte whatever its end; a translated one ends in the caller's shape with an error event when
it was not complete. And an error event routecar adds to a native Responses stream continues
the stream's `sequence_number`.

Streams are the recorded payloads (tests/payloads), cut or altered; each is fed in small
random pieces (the end must not depend on chunking).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import pytest

from routecar.apis import SHAPES, TRANSLATIONS, ApiName, Reshape, StreamEnd
from tests.apis_payloads import raw

COMPLETE, TRUNCATED, ERROR = StreamEnd.COMPLETE, StreamEnd.TRUNCATED, StreamEnd.ERROR
REQUEST = {"model": "m", "stream": True, "max_tokens": 64, "input": "hi",
           "messages": [{"role": "user", "content": "hi"}]}


def split_events(blob: bytes) -> list[bytes]:
    return [e + b"\n\n" for e in blob.replace(b"\r\n", b"\n").split(b"\n\n") if e.strip()]


def without(marker: bytes) -> Callable[[bytes], bytes]:
    """The stream minus every event that contains `marker` (its terminal event, say)."""
    return lambda blob: b"".join(e for e in split_events(blob) if marker not in e)


def first(n: int) -> Callable[[bytes], bytes]:
    """Only the stream's first `n` events: cut off cleanly in the middle."""
    return lambda blob: b"".join(split_events(blob)[:n])


def as_failed(blob: bytes) -> bytes:
    """A Responses stream whose terminal event is `response.failed`."""
    return blob.replace(b"response.completed", b"response.failed").replace(b'"status":"completed"',
                                                                             b'"status":"failed"')


def same(blob: bytes) -> bytes:
    return blob


def run(api_in: ApiName, api_out: ApiName, blob: bytes, seed: int = 0) -> tuple[Reshape, bytes]:
    """The stream through a Reshape as the relay drives it: fed in random pieces, then closed."""
    translator = None if api_in == api_out else TRANSLATIONS[(api_in, api_out)].stream(REQUEST)
    reshape = Reshape(SHAPES[api_in], translator)
    rnd, out, i = random.Random(seed), [], 0
    while i < len(blob):
        n = rnd.randint(1, 97)
        out.append(reshape.feed(blob[i:i + n]))
        i += n
    out.append(reshape.close())
    return reshape, b"".join(out)


CASES = [
    # (caller, provider, payload, alteration, end)
    ("chat", "chat", "chat/stream_text.sse", same, COMPLETE),
    ("chat", "chat", "chat/stream_tool_calls.sse", same, COMPLETE),
    ("chat", "chat", "chat/stream_text.sse", without(b"[DONE]"), COMPLETE),   # its finish_reason came
    ("chat", "chat", "chat/stream_text.sse", lambda b: without(b"[DONE]")(b).replace(b'"stop"', b"null"), TRUNCATED),
    ("chat", "chat", "chat/stream_text.sse", first(3), TRUNCATED),
    ("chat", "chat", "chat/stream_error.sse", same, ERROR),
    ("messages", "messages", "messages/stream_text.sse", same, COMPLETE),
    ("messages", "messages", "messages/stream_tool_use.sse", same, COMPLETE),
    ("messages", "messages", "messages/stream_text.sse", without(b"message_stop"), TRUNCATED),
    ("messages", "messages", "messages/stream_thinking.sse", first(4), TRUNCATED),
    ("messages", "messages", "messages/stream_error.sse", same, ERROR),
    ("responses", "responses", "responses/stream_text.sse", same, COMPLETE),
    ("responses", "responses", "responses/stream_text.sse", without(b"response.completed"), TRUNCATED),
    ("responses", "responses", "responses/stream_text.sse", first(5), TRUNCATED),
    ("responses", "responses", "responses/stream_text.sse", as_failed, ERROR),
    # translations: the translator's own verdict
    ("messages", "chat", "chat/stream_text.sse", same, COMPLETE),
    ("messages", "chat", "chat/stream_text.sse", first(4), TRUNCATED),
    ("messages", "chat", "chat/stream_error.sse", same, ERROR),
    ("chat", "messages", "messages/stream_text.sse", same, COMPLETE),
    ("chat", "messages", "messages/stream_text.sse", without(b"message_stop"), TRUNCATED),
    ("chat", "messages", "messages/stream_error.sse", same, ERROR),
    ("responses", "chat", "chat/stream_tool_calls.sse", same, COMPLETE),
    ("responses", "chat", "chat/stream_text.sse", first(4), TRUNCATED),
    ("responses", "chat", "chat/stream_error.sse", same, ERROR),
]


@pytest.mark.parametrize("api_in,api_out,payload,alter,end", CASES)
def test_how_a_stream_ended(api_in, api_out, payload, alter, end):
    blob = alter(raw(payload))
    for seed in range(5):
        reshape, out = run(api_in, api_out, blob, seed)
        assert reshape.end is end, seed
        if api_in == api_out:
            assert out == blob   # a native stream is relayed byte for byte, whatever its end
            continue
        # the caller is told, in its own shape, when it was not complete
        last = split_events(out)[-1]
        told = last.startswith(b"event: error") or last.startswith(b'data: {"error"')
        assert told is (end is not COMPLETE), last[:200]


def test_the_end_is_only_known_at_the_end():
    reshape = Reshape(SHAPES["messages"], None)
    reshape.feed(first(4)(raw("messages/stream_text.sse")))
    assert reshape.reader is not None and reshape.reader.end is None   # not over yet: nothing claimed
    reshape.feed(b'event: message_stop\ndata: {"type":"message_stop"}')  # the last event, no blank line
    reshape.close()
    assert reshape.end is COMPLETE   # the decoder's last event counts once the stream is over


def test_words_in_the_answer_are_not_markers():
    """Text that reads like a marker inside a delta is escaped JSON: not an end, not an error."""
    delta = {"type": "content_block_delta", "index": 0,
             "delta": {"type": "text_delta", "text": '"type": "message_stop" and "type":"error"'}}
    blob = without(b"message_stop")(raw("messages/stream_text.sse"))
    blob += b"event: content_block_delta\ndata: " + json.dumps(delta).encode() + b"\n\n"
    reshape, _ = run("messages", "messages", blob)
    assert reshape.end is TRUNCATED
    chunk = {"choices": [{"index": 0, "delta": {"content": "error"}, "finish_reason": None}]}
    reshape, _ = run("chat", "chat", b"data: " + json.dumps(chunk).encode() + b"\n\n")
    assert reshape.end is TRUNCATED


# -- an error event added to a native Responses stream continues its sequence ------------------

def sequence_numbers(blob: bytes) -> list[int]:
    return [json.loads(e.split(b"data: ", 1)[1])["sequence_number"] for e in split_events(blob)]


@pytest.mark.parametrize("n", [1, 3, 11])
def test_a_native_responses_error_event_continues_the_sequence(n):
    blob = first(n)(raw("responses/stream_text.sse"))
    reshape, out = run("responses", "responses", blob)
    error = reshape.fail("routecar: upstream stream broke")
    seqs = sequence_numbers(out + error)
    assert seqs == list(range(n + 1)) and json.loads(error.split(b"data: ", 1)[1])["type"] == "error"


def test_a_responses_error_event_before_any_event_is_number_zero():
    reshape = Reshape(SHAPES["responses"], None)
    assert sequence_numbers(reshape.fail("cut")) == [0]


def test_a_translated_responses_error_event_continues_the_sequence():
    reshape, out = run("responses", "chat", first(4)(raw("chat/stream_text.sse")))
    seqs = sequence_numbers(out)
    assert seqs == list(range(len(seqs))) and b'"type":"error"' in split_events(out)[-1]
