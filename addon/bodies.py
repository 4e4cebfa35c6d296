"""Request bodies are what their headers say, and what routecar evaluates is what it sends.

    raw bytes ──decode_request(Content-Encoding)──▶ identity bytes (bounded by max_body) ──loads_strict──▶ dict

`decode_content` undoes a request's Content-Encoding (gzip, deflate, br, zstd,
identity; stacked codings in reverse order of application). Every step stops
at `max_body` decoded bytes, so a decompression bomb is a 413 after at most
`max_body` bytes of output, never a full inflate; a coding routecar does not
know is a 415 (`UnsupportedEncoding`) and corrupt data a 400.

`loads_strict` is `json.loads` minus what would let the provider read a body
differently from routecar: duplicate object keys (which one wins differs
between parsers), `NaN`/`Infinity` and numbers that overflow to them (not
JSON; Python would re-serialise them as such), and lone UTF-16 surrogates
(not Unicode; no trace row can store them). Each is a 400 `invalid_request`
naming where it is. routecar then re-serialises the object it evaluated, so
the provider sees exactly that. Pure: no I/O, no mitmproxy.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import brotli

from .errors import BadRequest, PayloadTooLarge, UnsupportedEncoding

try:  # Python 3.14+
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the Python version
    from backports import zstd  # type: ignore[import-not-found,no-redef]

CODINGS = ("gzip", "x-gzip", "deflate", "br", "zstd", "identity")


def decode_request(raw: bytes | None, content_encoding: Iterable[str], max_body: int) -> bytes:
    """A request body as sent (`content_encoding`: its Content-Encoding header lines), decoded."""
    raw = raw or b""
    if len(raw) > max_body:
        raise PayloadTooLarge(f"request body larger than {max_body} bytes (routecar_max_body)")
    return decode_content(raw, content_codings(content_encoding), max_body)


def content_codings(values: Iterable[str]) -> list[str]:
    """The codings of every Content-Encoding header line, in the order they were applied."""
    return [c.strip().lower() for v in values for c in v.split(",") if c.strip()]


def decode_content(raw: bytes, codings: list[str], max_body: int) -> bytes:
    """`raw` with `codings` undone (last applied, first undone); at most `max_body` bytes."""
    unknown = [c for c in codings if c not in CODINGS]
    if unknown:
        raise UnsupportedEncoding(f"request Content-Encoding {', '.join(unknown)!s} is not supported: "
                                  f"send identity, gzip, deflate, br or zstd")
    data = raw
    for coding in reversed(codings):
        if coding == "identity":
            continue
        try:
            data = _DECODERS[coding](data, max_body + 1)
        except (zlib.error, brotli.error, zstd.ZstdError, EOFError) as e:
            raise BadRequest(f"request body is not valid {coding} data ({type(e).__name__})") from None
        if len(data) > max_body:
            raise PayloadTooLarge(f"request body larger than {max_body} bytes once decoded "
                                  f"({coding}; routecar_max_body)")
    return data


def _members(data: bytes, limit: int, new: Callable[[], Any]) -> bytes:
    """Decode concatenated members (gzip members, zstd frames) until `limit` bytes of output."""
    out = bytearray()
    while data and len(out) < limit:
        d = new()
        out += d.decompress(data, limit - len(out))
        if not d.eof:
            if len(out) >= limit:
                break   # over the limit: the caller refuses it, no need to read further
            raise EOFError("truncated")
        data = d.unused_data
    return bytes(out)


def _gzip(data: bytes, limit: int) -> bytes:
    return _members(data, limit, lambda: zlib.decompressobj(wbits=31))


def _deflate(data: bytes, limit: int) -> bytes:
    # HTTP "deflate" is the zlib format; some clients send a raw deflate stream instead.
    wbits = 15 if data[:1] and data[0] & 0x0F == 8 and int.from_bytes(data[:2]) % 31 == 0 else -15
    return _members(data, limit, lambda: zlib.decompressobj(wbits=wbits))


def _brotli(data: bytes, limit: int) -> bytes:
    d = brotli.Decompressor()
    out = d.process(data, output_buffer_limit=limit)
    if len(out) < limit and not d.is_finished():
        raise EOFError("truncated")
    return out


def _zstd(data: bytes, limit: int) -> bytes:
    return _members(data, limit, zstd.ZstdDecompressor)


_DECODERS: dict[str, Callable[[bytes, int], bytes]] = {
    "gzip": _gzip, "x-gzip": _gzip, "deflate": _deflate, "br": _brotli, "zstd": _zstd,
}


# -- strict JSON ---------------------------------------------------------------------------

def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise BadRequest(f"request body has the key {dup[:100]!r} twice in one object: parsers disagree on "
                         f"which one counts, so routecar refuses to guess")
    return obj


def _constant(name: str) -> Any:
    raise BadRequest(f"request body contains {name}, which is not JSON")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadRequest(f"request body contains the number {text[:40]}, too large for a float")
    return value


# A surrogate escape (\uD800-\uDFFF) or UTF-8-encoded surrogate bytes (json accepts those too).
_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(value: Any, path: str) -> str | None:
    """The path of the first string (key or value) holding a lone surrogate, or None."""
    stack = [(value, path)]
    while stack:
        v, p = stack.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v):
                return p
        elif isinstance(v, dict):
            for k, item in v.items():
                if _SURROGATE.search(k):
                    return f"{p}.<key>"
                stack.append((item, f"{p}.{k}" if p else k))
        elif isinstance(v, list):
            stack.extend((item, f"{p}[{i}]") for i, item in enumerate(v))
    return None


def loads_strict(raw: bytes) -> Any:
    """`json.loads` that raises BadRequest for duplicate keys, NaN/Infinity and lone surrogates."""
    try:
        value = json.loads(raw, object_pairs_hook=_object, parse_constant=_constant, parse_float=_float)
    except (ValueError, RecursionError) as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None
    if _MAYBE_SURROGATE.search(raw):   # rare: only then walk every string
        where = _lone_surrogate(value, "")
        if where is not None:
            raise BadRequest(f"request body has a lone UTF-16 surrogate (not Unicode text) "
                             f"in {where[:200] or 'the body'}")
    return value


def is_json_object(data: bytes | bytearray) -> bool:
    """A provider's non-streaming 2xx body must be this: one JSON object."""
    try:
        return isinstance(json.loads(data), dict)
    except (ValueError, RecursionError):
        return False


MAX_BODY = 8 * 1024 * 1024


def parse_body(raw: bytes | None, max_body: int = MAX_BODY) -> dict[str, Any]:
    """The JSON object of a chat request, or BadRequest saying what is wrong."""
    if raw is None or not raw:
        raise BadRequest("request body is empty: expected a JSON chat completion request")
    if len(raw) > max_body:
        raise PayloadTooLarge(f"request body larger than {max_body} bytes (routecar_max_body)")
    body = loads_strict(raw)   # no duplicate keys, NaN/Infinity or lone surrogates (see bodies.py)
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def identity_body(raw: bytes | None, max_body: int = MAX_BODY) -> dict[str, Any]:
    """The JSON object of a request routecar does not route (for `body_user` identification
    only): {} when it is not one (a file upload, an empty GET...)."""
    if not raw or len(raw) > max_body:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    return body if isinstance(body, dict) else {}
