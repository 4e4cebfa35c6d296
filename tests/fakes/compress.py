"""Content codings for the fake providers: compress answers like a real CDN would.

`choose(rule_value, accept_encoding)` picks the coding a scripted rule asks for:
``"auto"`` honours the request's Accept-Encoding (the first coding it lists that
the fake knows, ``identity`` or nothing: none); any other value is used even if
the client did not ask for it. A name the fake does not know (``"x-snappy"``)
is sent as a header over an uncompressed body: a provider that lies.

`Encoder(coding)` compresses a body or a stream chunk by chunk; each chunk is
flushed so a streamed event can be decoded as soon as it arrives.
"""

from __future__ import annotations

import zlib

import brotli

try:  # Python 3.14+
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the Python version
    from backports import zstd  # type: ignore[import-not-found,no-redef]

KNOWN = ("gzip", "deflate", "br", "zstd")


def choose(rule_value: str | None, accept_encoding: str | None) -> str | None:
    """The coding to answer with, or None for an uncompressed body."""
    if not rule_value:
        return None
    if rule_value != "auto":
        return rule_value
    for item in (accept_encoding or "").split(","):
        name, _, params = item.strip().partition(";")
        name = name.strip().lower()
        if params.replace(" ", "").lower() in ("q=0", "q=0.0", "q=0.00", "q=0.000"):
            continue
        if name in KNOWN:
            return name
    return None


class Encoder:
    """Compresses with `coding`; `chunk()` output is decodable up to that point."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        if coding == "gzip":
            self._z = zlib.compressobj(wbits=31)
        elif coding == "deflate":
            self._z = zlib.compressobj(wbits=15)   # HTTP "deflate" is the zlib format
        elif coding == "br":
            self._br = brotli.Compressor(quality=4)   # fast: tests compress tens of MiB
        elif coding == "zstd":
            self._zstd = zstd.ZstdCompressor()

    def chunk(self, data: bytes) -> bytes:
        if self.coding in ("gzip", "deflate"):
            return self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)
        if self.coding == "br":
            return self._br.process(data) + self._br.flush()
        if self.coding == "zstd":
            return self._zstd.compress(data, zstd.ZstdCompressor.FLUSH_BLOCK)
        return data   # an unknown coding: the header lies, the body is plain

    def finish(self) -> bytes:
        if self.coding in ("gzip", "deflate"):
            return self._z.flush(zlib.Z_FINISH)
        if self.coding == "br":
            return self._br.finish()
        if self.coding == "zstd":
            return self._zstd.flush(zstd.ZstdCompressor.FLUSH_FRAME)
        return b""

    def whole(self, data: bytes) -> bytes:
        return self.chunk(data) + self.finish()
