"""The SSE decoder: the same events whatever the chunking, every line ending, bounded memory."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routecar.apis.sse import DONE, SSEDecoder, SSEError, SSEEvent, encode, encode_typed
from tests.apis_payloads import raw

CASES = [
    # (name, stream, expected events)
    ("lf", b"data: a\n\ndata: b\n\n", [SSEEvent(None, "a"), SSEEvent(None, "b")]),
    ("crlf", b"data: a\r\n\r\ndata: b\r\n\r\n", [SSEEvent(None, "a"), SSEEvent(None, "b")]),
    ("cr only", b"data: a\r\rdata: b\r\r", [SSEEvent(None, "a"), SSEEvent(None, "b")]),
    ("mixed endings", b"data: a\rdata: b\n\ndata: c\r\n\r", [SSEEvent(None, "a\nb"), SSEEvent(None, "c")]),
    ("named", b"event: ping\ndata: {}\n\n", [SSEEvent("ping", "{}")]),
    ("multi-line data", b"data: one\ndata: two\n\n", [SSEEvent(None, "one\ntwo")]),
    ("no space after colon", b"data:x\n\n", [SSEEvent(None, "x")]),
    ("only one space dropped", b"data:  x\n\n", [SSEEvent(None, " x")]),
    ("comments and ids ignored", b": keep-alive\nid: 7\nretry: 10\ndata: x\n\n", [SSEEvent(None, "x")]),
    ("event without data is not dispatched", b"event: ping\n\ndata: x\n\n", [SSEEvent(None, "x")]),
    ("name does not leak into the next event", b"event: a\ndata: 1\n\ndata: 2\n\n",
     [SSEEvent("a", "1"), SSEEvent(None, "2")]),
    ("utf-8", "data: héllo ✓\n\n".encode(), [SSEEvent(None, "héllo ✓")]),
]


def decode_in(blob: bytes, cuts: list[int]) -> list[SSEEvent]:
    dec, out, prev = SSEDecoder(), [], 0
    for cut in sorted(set(cuts)) + [len(blob)]:
        out += dec.feed(blob[prev:cut])
        prev = cut
    return out + dec.close()


@pytest.mark.parametrize(("name", "blob", "expected"), CASES, ids=[c[0] for c in CASES])
def test_every_split_point_gives_the_same_events(name: str, blob: bytes, expected: list[SSEEvent]) -> None:
    assert decode_in(blob, []) == expected
    for i in range(len(blob)):
        assert decode_in(blob, [i]) == expected, f"split at {i}"
    assert decode_in(blob, list(range(len(blob)))) == expected   # byte by byte


@given(st.lists(st.integers(min_value=0, max_value=5000), max_size=40))
def test_recorded_stream_any_chunking(cuts: list[int]) -> None:
    blob = raw("messages/stream_tool_use.sse") + raw("chat/stream_length.sse")   # LF then CRLF
    assert decode_in(blob, cuts) == decode_in(blob, [])


def test_close_flushes_an_event_without_its_blank_line() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: last") == []
    assert dec.close() == [SSEEvent(None, "last")]
    assert dec.close() == []


def test_memory_is_bounded() -> None:
    dec = SSEDecoder(max_event=100)
    with pytest.raises(SSEError, match="larger than 100 bytes"):
        dec.feed(b"data: " + b"x" * 200)            # one endless line
    dec = SSEDecoder(max_event=100)
    with pytest.raises(SSEError):
        for _ in range(20):                          # many data lines, no blank line
            dec.feed(b"data: 0123456789\n")
    dec = SSEDecoder(max_event=100)
    for _ in range(1000):                            # many small events are fine
        assert dec.feed(b"data: 0123456789\n\n") == [SSEEvent(None, "0123456789")]


def test_encode() -> None:
    assert encode({"a": "é"}) == 'data: {"a":"é"}\n\n'.encode()
    assert encode_typed({"type": "ping"}) == b'event: ping\ndata: {"type":"ping"}\n\n'
    assert SSEDecoder().feed(encode_typed({"type": "x", "v": [1]}))[0].json() == {"type": "x", "v": [1]}
    assert SSEDecoder().feed(DONE) == [SSEEvent(None, "[DONE]")]
