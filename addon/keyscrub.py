"""Keep the operator's provider keys out of everything relayed to the app.

A provider's error body (or a header) may echo the request's headers back,
`Authorization: Bearer <the operator's key>` included. Every byte routecar
relays from a provider goes through a `KeyScrubber` first: whole bodies and
header values with `scrub`, streams with `stream()`, which holds back the
end of a chunk that could be the start of a key until the next chunk says
whether it is one (a key split across two reads is still caught; bytes that
cannot start a key are never held, so SSE events are not delayed).

Forms caught: the key as is, JSON-escaped and percent-encoded. Not caught: a
key split into two separately encoded JSON strings (two SSE events of model
output; the model never sees request headers), or a provider's own masked echo
(`sk-...abcd`). No mitmproxy import here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from urllib.parse import quote

REDACTED = b"[redacted]"
MIN_KEY_LENGTH = 8   # shorter "keys" (test values) would redact ordinary text


def _forms(key: str) -> set[bytes]:
    forms = {key, json.dumps(key)[1:-1], key.replace("/", "\\/"), quote(key, safe="")}
    return {f.encode("utf-8") for f in forms}


class KeyScrubber:
    def __init__(self, keys: Iterable[str]) -> None:
        found = {f for k in keys if len(k) >= MIN_KEY_LENGTH for f in _forms(k)}
        self.patterns = tuple(sorted(found, key=len, reverse=True))

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def scrub(self, data: bytes) -> bytes:
        for p in self.patterns:
            if p in data:
                data = data.replace(p, REDACTED)
        return data

    def scrub_text(self, text: str) -> str:
        raw = text.encode("utf-8", "surrogateescape")
        clean = self.scrub(raw)
        return text if clean is raw else clean.decode("utf-8", "surrogateescape")

    def scrub_headers(self, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        return [(k, self.scrub_text(v)) for k, v in headers]

    def held(self, data: bytes) -> int:
        """How many bytes at the end of `data` could begin a key (and must wait)."""
        hold = 0
        for p in self.patterns:
            start = max(0, len(data) - len(p) + 1)
            i = data.find(p[:1], start)
            while i != -1:
                if p.startswith(data[i:]):
                    hold = max(hold, len(data) - i)
                    break
                i = data.find(p[:1], i + 1)
        return hold

    def stream(self) -> StreamScrub:
        return StreamScrub(self)


class StreamScrub:
    """`feed(chunk)` returns what can be sent now; `flush()` the rest at a clean end."""

    def __init__(self, scrubber: KeyScrubber) -> None:
        self.scrubber = scrubber
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        if not self.scrubber:
            return chunk
        data = self.scrubber.scrub(self._pending + chunk)
        hold = self.scrubber.held(data)
        self._pending = data[len(data) - hold:] if hold else b""
        return data[: len(data) - hold] if hold else data

    def flush(self) -> bytes:
        out, self._pending = self._pending, b""
        return out
