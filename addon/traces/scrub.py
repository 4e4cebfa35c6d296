"""What never reaches the trace database: credentials (`scrub`) and, for a `no_log`
record, any string of its payloads (`payload_strings`, `without`).

Every text written goes through `scrub()` (or `dumps_json`, which scrubs a JSON
document structurally when one cheap search says it might hold a credential).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "[redacted]"
NO_LOG_REDACTED = "[no_log]"

_SECRET_HEADER = re.compile(
    r"(?i)\b((?:proxy-)?authorization|x-api-key|api[-_]key)\b"  # the header/field name
    r"([\\\"'\s]*[:=][\\\"'\s]*)"                                  # ": ", '=', '\": \"'
    r"(?!\[redacted\]|null\b)((?:(?:bearer|basic|token)\s+)?[^\\\"'\s,;&}\]]+)")
_BEARER = re.compile(r"(?i)\b(bearer)\s+(?!\[redacted\])[A-Za-z0-9._~+/=-]+")
_KEY = re.compile(r"\bsk-[A-Za-z0-9_-]{8,}")
_SECRET_KEYS = frozenset({"authorization", "proxy-authorization", "api-key", "x-api-key",
                          "api_key", "apikey"})


# One cheap search decides whether the three substitutions are needed at all:
# almost every string written (entry ids, clause ids, reasons) holds no credential.
_HINTS = ("sk-", "bearer", "authorization", "api-key", "api_key", "apikey")


def maybe_secret(text: str) -> bool:
    low = text.lower()  # each hint spelled out: a generator over _HINTS costs 3x on short texts
    return ("sk-" in low or "bearer" in low or "authorization" in low or "api-key" in low
            or "api_key" in low or "apikey" in low)


def scrub(text: str) -> str:
    """Replace anything that looks like a credential in `text` with `[redacted]`."""
    if not maybe_secret(text):
        return text
    text = _SECRET_HEADER.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    text = _BEARER.sub(lambda m: m.group(1) + " " + REDACTED, text)
    return _KEY.sub(REDACTED, text)


def scrub_obj(value: Any) -> Any:
    """`scrub()` every string in a JSON-like value; secret-named keys lose their value."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {scrub(str(k)): REDACTED if str(k).lower() in _SECRET_KEYS and v is not None
                else scrub_obj(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_obj(v) for v in value]
    return value


# One encoder for every JSON text in the store (json.dumps with arguments builds one per call).
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def dumps(value: Any) -> str:
    """Compact JSON with sorted keys: the one encoding of every JSON text in the store."""
    return _ENCODER.encode(value)


def dumps_json(value: Any) -> str | None:
    """`dumps(value)` with credentials scrubbed (None stays None)."""
    if value is None:
        return None
    text = dumps(value)
    if not maybe_secret(text):  # the common case: one search over the whole document
        return text
    return dumps(scrub_obj(value))


def loads_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


_NOT_PAYLOAD_KEYS = frozenset({"model", "role", "type", "object", "id", "finish_reason",
                               "system_fingerprint", "stream", "tool_choice", "service_tier"})


def payload_strings(body: str | None) -> set[str]:
    """The substrings of a body that must not survive a no_log record: the body itself
    and every string leaf of its JSON (message contents, tool arguments...)."""
    if not body:
        return set()
    found = {body.strip()}

    def walk(value: Any, key: str | None) -> None:
        if isinstance(value, str) and len(value) >= 8 and key not in _NOT_PAYLOAD_KEYS:
            found.add(value)
        elif isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, str(k))
        elif isinstance(value, list):
            for v in value:
                walk(v, key)
    try:
        walk(json.loads(body), None)
    except ValueError:
        pass
    return {s for s in found if s}


def without(value: Any, secrets: set[str]) -> Any:
    """Replace every string containing one of `secrets` with `[no_log]`."""
    if isinstance(value, str):
        return NO_LOG_REDACTED if any(s in value for s in secrets) else value
    if isinstance(value, Mapping):
        return {k: without(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without(v, secrets) for v in value]
    return value


def string_leaves(value: Any) -> str:
    """Every string value in a JSON-like value, joined by NUL: what `without` would look at,
    as one text that `mentions` searches (a match across two strings is a false alarm, never a miss)."""
    out: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, Mapping):
            for x in v.values():
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)
    walk(value)
    return "\0".join(out)


def mentions(leaves: str, secrets: set[str]) -> bool:
    """True if one of `secrets` occurs in `leaves` (from `string_leaves`)."""
    return any(s in leaves for s in secrets)
