"""bodies: request Content-Encoding undone within a bound, and JSON read the one way routecar
re-serialises it (no duplicate keys, NaN/Infinity or lone surrogates)."""

from __future__ import annotations

import json
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routecar.bodies import content_codings, decode_request, is_json_object, loads_strict
from routecar.errors import BadRequest, PayloadTooLarge, UnsupportedEncoding
from tests.fakes.compress import Encoder

BODY = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "héllo " * 50}]}).encode()
MAX = 64 * 1024


def raw_deflate(data: bytes) -> bytes:
    z = zlib.compressobj(wbits=-15)
    return z.compress(data) + z.flush()


def encode(data: bytes, codings: list[str]) -> bytes:
    for c in codings:   # in the order they are applied, as the header lists them
        data = Encoder(c).whole(data)
    return data


# -- Content-Encoding ---------------------------------------------------------------------

@pytest.mark.parametrize("header,codings", [
    (["gzip"], ["gzip"]), (["GZIP"], ["gzip"]), ([" br "], ["br"]), (["gzip, br"], ["gzip", "br"]),
    (["gzip", "zstd"], ["gzip", "zstd"]), (["identity"], ["identity"]), ([], []), (["gzip,,br"], ["gzip", "br"]),
])
def test_content_codings_in_the_order_applied(header, codings):
    assert content_codings(header) == codings


@pytest.mark.parametrize("codings", [
    [], ["identity"], ["gzip"], ["deflate"], ["br"], ["zstd"],
    ["gzip", "br"], ["br", "gzip"], ["zstd", "gzip", "deflate"], ["identity", "gzip", "identity"],
])
def test_every_coding_and_stack_decodes(codings):
    assert decode_request(encode(BODY, [c for c in codings if c != "identity"]), [", ".join(codings)] if codings
                          else [], MAX) == BODY


def test_x_gzip_and_raw_deflate_and_concatenated_gzip_members():
    assert decode_request(encode(BODY, ["gzip"]), ["x-gzip"], MAX) == BODY
    assert decode_request(raw_deflate(BODY), ["deflate"], MAX) == BODY
    assert decode_request(encode(BODY[:100], ["gzip"]) + encode(BODY[100:], ["gzip"]), ["gzip"], MAX) == BODY


@pytest.mark.parametrize("coding", ["compress", "x-snappy", "lz4", "gzip;q=1", "*"])
def test_unknown_coding_is_415(coding):
    with pytest.raises(UnsupportedEncoding) as ei:
        decode_request(BODY, [coding], MAX)
    assert ei.value.status == 415 and ei.value.code == "unsupported_encoding"
    assert coding in ei.value.message


def test_unknown_coding_anywhere_in_a_stack_is_415_before_any_work():
    with pytest.raises(UnsupportedEncoding):
        decode_request(encode(BODY, ["gzip"]), ["x-snappy, gzip"], MAX)


@pytest.mark.parametrize("codings", [["gzip"], ["deflate"], ["br"], ["zstd"], ["gzip", "br"], ["zstd", "gzip"]])
def test_a_decompression_bomb_is_413_without_inflating_it(codings):
    bomb = encode(b"\0" * (20 * 1024 * 1024), codings)   # 20 MiB of zeros
    assert len(bomb) < MAX
    with pytest.raises(PayloadTooLarge) as ei:
        decode_request(bomb, [", ".join(codings)], MAX)
    assert ei.value.status == 413 and "once decoded" in ei.value.message


def test_exactly_max_body_once_decoded_is_fine_one_more_is_413():
    assert len(decode_request(encode(b"x" * MAX, ["gzip"]), ["gzip"], MAX)) == MAX
    with pytest.raises(PayloadTooLarge):
        decode_request(encode(b"x" * (MAX + 1), ["gzip"]), ["gzip"], MAX)


def test_raw_body_over_max_is_413_even_uncompressed():
    with pytest.raises(PayloadTooLarge):
        decode_request(b"x" * (MAX + 1), [], MAX)


@pytest.mark.parametrize("coding,data", [
    ("gzip", b"not gzip at all"), ("gzip", b""), ("br", b"\xff\xff\xff"), ("zstd", b"nope"),
    ("deflate", b"\x00\x01garbage"),
])
def test_garbage_is_400(coding, data):
    if not data:
        assert decode_request(data, [coding], MAX) == b""   # nothing to decode: parse_body says "empty"
        return
    with pytest.raises(BadRequest) as ei:
        decode_request(data, [coding], MAX)
    assert ei.value.status == 400


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_truncated_is_400(coding):
    data = encode(BODY, [coding])
    with pytest.raises(BadRequest) as ei:
        decode_request(data[: len(data) // 2], [coding], MAX)
    assert ei.value.status == 400 and not isinstance(ei.value, PayloadTooLarge)


def test_trailing_garbage_after_gzip_is_400():
    with pytest.raises(BadRequest):
        decode_request(encode(BODY, ["gzip"]) + b"junk", ["gzip"], MAX)


# -- strict JSON ----------------------------------------------------------------------------

@pytest.mark.parametrize("raw,message", [
    (b'{"model": "a", "model": "b"}', "key 'model' twice"),
    (b'{"model": "a", "mod\\u0065l": "b"}', "key 'model' twice"),        # the same key once unescaped
    (b'{"messages": [{"role": "user", "role": "system"}]}', "key 'role' twice"),
    (b'{"a": {"b": {"c": 1, "c": 1}}}', "key 'c' twice"),                # even when equal
    (b'{"t": NaN}', "NaN, which is not JSON"),
    (b'{"t": Infinity}', "Infinity, which is not JSON"),
    (b'{"t": -Infinity}', "-Infinity, which is not JSON"),
    (b'{"t": 1e999}', "1e999, too large"),
    (b'{"t": -1e400}', "-1e400, too large"),
    (b'{"m": "\\ud800"}', "lone UTF-16 surrogate (not Unicode text) in m"),
    (b'{"m": "\\uDFFF"}', "lone UTF-16 surrogate"),
    (b'{"m": "a\\udc00b"}', "lone UTF-16 surrogate"),
    (b'{"m": "\\ude00\\ud83d"}', "lone UTF-16 surrogate"),               # a pair in the wrong order
    (b'{"messages": [{"content": "x"}, {"content": "\\ud83d"}]}', "in messages[1].content"),
    (b'{"\\ud800": 1}', "in .<key>"),
    (b'{"m": "\xed\xa0\x80"}', "lone UTF-16 surrogate"),                # a surrogate encoded in UTF-8 bytes
    (b'{"m": "\xff"}', "not valid JSON"),                                 # not UTF-8 at all
    (b'{"m": 1', "not valid JSON"),
])
def test_what_routecar_will_not_guess_at_is_400(raw, message):
    with pytest.raises(BadRequest) as ei:
        loads_strict(raw)
    assert ei.value.status == 400 and ei.value.code == "invalid_request"
    assert message in ei.value.message
    ei.value.message.encode("utf-8")   # the error itself is storable text


@pytest.mark.parametrize("raw,value", [
    (b'{"m": "\\ud83d\\ude00"}', {"m": "😀"}),                 # an escaped pair is a real character
    (b'{"m": "\\\\ud800"}', {"m": "\\ud800"}),                  # an escaped backslash, not an escape
    (b'{"n": 1e308, "i": 123456789012345678901234567890}', {"n": 1e308, "i": 123456789012345678901234567890}),
    (b'\xef\xbb\xbf{"bom": true}', {"bom": True}),
    (b'{"a": {"k": 1}, "b": {"k": 2}}', {"a": {"k": 1}, "b": {"k": 2}}),   # same key in different objects
])
def test_valid_json_is_read_as_is(raw, value):
    assert loads_strict(raw) == value


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20)


@given(json_values)
def test_what_json_dumps_writes_loads_strict_reads_back(value):
    # Hypothesis text includes lone surrogates: they are the one thing refused.
    raw = json.dumps(value).encode()
    try:
        assert loads_strict(raw) == json.loads(raw)
    except BadRequest as e:
        assert "surrogate" in e.message


def test_is_json_object():
    assert is_json_object(b'{"id": 1}')
    for garbage in (b"", b"[]", b'"x"', b"null", b"<html>", b'{"a": 1', b"\x1f\x8b\x08"):
        assert not is_json_object(garbage)
