"""keyscrub: the operator's keys never leave in a relayed body, header or stream, however the
provider's bytes are chunked."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routecar.keyscrub import REDACTED, KeyScrubber

KEY = "sk-op-SECRET/key+with=chars_0123456789"
OTHER = "op-key-mistral-abcdef"
SCRUB = KeyScrubber([KEY, OTHER, "short"])


@pytest.mark.parametrize("echo", [
    f"Authorization: Bearer {KEY}".encode(),
    json.dumps({"error": {"message": f"bad header Authorization: Bearer {KEY}"}}).encode(),
    json.dumps({"headers": {"authorization": f"Bearer {KEY}"}}).encode(),      # JSON-escaped (/)
    f'{{"h": "{KEY.replace("/", chr(92) + "/")}"}}'.encode(),                 # \/ escaped
    f"url=https://x/?key={quote(KEY, safe='')}".encode(),                     # percent-encoded
    f"{OTHER}{OTHER}".encode(),
])
def test_whole_bodies(echo):
    out = SCRUB.scrub(echo)
    assert KEY.encode() not in out and OTHER.encode() not in out and quote(KEY, safe="").encode() not in out
    assert REDACTED in out


def test_headers_and_short_values_left_alone():
    assert SCRUB.scrub_headers([("x-echo", f"Bearer {KEY}"), ("x-ok", "short")]) == [
        ("x-echo", "Bearer [redacted]"), ("x-ok", "short")]  # keys under 8 chars are not scrubbed
    assert not KeyScrubber(["", "abc"])


def test_nothing_held_when_nothing_could_start_a_key():
    stream = SCRUB.stream()
    event = b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n'
    assert stream.feed(event) == event          # an SSE event is never delayed
    assert stream.feed(b"partial sk-op-SEC") == b"partial "
    assert stream.feed(b"RET is not a key\n\n") == b"sk-op-SECRET is not a key\n\n"
    assert stream.flush() == b""


@settings(max_examples=300, deadline=None)
@given(prefix=st.binary(max_size=40), suffix=st.binary(max_size=40),
       cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_a_key_split_anywhere_is_caught(prefix, suffix, cuts):
    data = prefix + b"Bearer " + KEY.encode() + b" and " + OTHER.encode() + suffix
    bounds = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    stream = SCRUB.stream()
    out = b"".join(stream.feed(data[a:b]) for a, b in zip(bounds, bounds[1:])) + stream.flush()
    assert out == SCRUB.scrub(data)
    assert KEY.encode() not in out and OTHER.encode() not in out
