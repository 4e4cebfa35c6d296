"""Issue 10 §4 end to end: bytes are what their headers say.

Real `routecar run` (and stock mitmdump for one case), the official openai SDK, curl
and raw sockets against the loopback fakes:
- answers a provider compresses (asked or not) reach the SDK decoded;
- request bodies with a Content-Encoding are decoded within routecar_max_body
  (a bomb is 413, an unknown coding 415) and the coding never reaches a provider;
- JSON routecar will not guess at (duplicate keys, NaN/Infinity, lone surrogates) is a
  traced 400; what the provider gets is exactly the object routecar evaluated;
- relayed answers honour HTTP/1.0 clients and `Connection: close`.

Tests whose calls succeed or are refused before any provider share one sidecar per
configuration (`shared_sidecar`) and read their own traces by id; the one whose provider
answer counts as a failure in live health starts its own.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import zlib
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.e2e.conftest import sdk, trace
from tests.fakes.compress import Encoder

EU = json.dumps({"rules": [["eq", "region", "eu"]]})
EU_NO_LOG = json.dumps({"rules": [["eq", "region", "eu"]], "no_log": True})
MSG = [{"role": "user", "content": "hi"}]
CHAT = {"model": "gpt-4o", "messages": MSG}
OK_TEXT = "[fake:mistral] model=mistral-small-3 ok"


def headers_of(rec: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in rec["headers"] if k.lower() == name]


# -- compressed answers ----------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["reverse", "regular"])
def test_compressed_answers_reach_the_sdk_decoded(shared_sidecar, fake, mode):
    side = shared_sidecar(mode=mode)
    client = sdk(side)
    for coding in ("auto", "gzip", "deflate", "br", "zstd"):
        fake.reset()
        fake.set_script("mistral", [{"compress": coding}])
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=MSG, extra_headers={"X-Route-Policy": EU})
        assert raw.parse().choices[0].message.content == OK_TEXT, coding
        assert "content-encoding" not in raw.headers
        chunks = client.chat.completions.create(model="gpt-4o", messages=MSG, stream=True,
                                                extra_headers={"X-Route-Policy": EU})
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == OK_TEXT, coding
        relayed = client.chat.completions.create(model="gpt-4o", messages=MSG,   # no_log: via the relay
                                                 extra_headers={"X-Route-Policy": EU_NO_LOG})
        assert relayed.choices[0].message.content == OK_TEXT, coding
        # routecar asks for identity; the SDK's own Accept-Encoding never reaches the provider.
        assert [headers_of(r, "accept-encoding") for r in fake.requests("mistral")] == [["identity"]] * 3


def test_an_answer_in_a_coding_nobody_decodes_falls_back(sidecar, fake):
    side = sidecar(mode="reverse")
    fake.set_script("mistral", [{"compress": "x-snappy"}])
    raw = sdk(side).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MSG, extra_headers={"X-Route-Policy": EU})
    assert raw.headers["x-route-provider"] == "scaleway"
    t = trace(side, raw.headers["x-route-trace-id"])
    assert [(a["status"], a["error_class"]) for a in t["attempts"]] == [(200, "invalid_response"), (200, "ok")]


# -- request bodies with a Content-Encoding ----------------------------------------------------

def post(side, data: bytes, headers: list[tuple[str, str]], tmp_path: Path) -> tuple[int, dict[str, str], bytes]:
    """curl POSTs the chat path the way a user would (reverse: the sidecar's URL; regular: via the
    proxy). `headers` may repeat a name: curl sends each -H as its own header line."""
    body_file, head_file, out_file = tmp_path / "req.bin", tmp_path / "head.txt", tmp_path / "out.bin"
    body_file.write_bytes(data)
    if side.mode == "reverse":
        target = [side.url + "/v1/chat/completions"]
    else:
        target = ["-x", side.url, "--cacert", str(side.ca), "https://api.openai.com/v1/chat/completions"]
    argv = ["curl", "-s", "-D", str(head_file), "-o", str(out_file), "--data-binary", f"@{body_file}",
            "-H", "content-type: application/json", "-H", f"x-route-policy: {EU}", *target]
    for k, v in headers:
        argv += ["-H", f"{k}: {v}"]
    subprocess.run(argv, check=True, timeout=30)
    # The last header block: through the proxy, the CONNECT's "200 Connection established" comes first.
    lines = [b for b in head_file.read_text().split("\n\n") if b.strip()][-1].splitlines()
    status = int(lines[0].split()[1])
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if ":" in line)}
    return status, hdrs, out_file.read_bytes()


def encode(data: bytes, codings: list[str]) -> bytes:
    for c in codings:
        if c == "deflate-raw":
            z = zlib.compressobj(wbits=-15)
            data = z.compress(data) + z.flush()
        elif c != "identity":
            data = Encoder(c).whole(data)
    return data


BODY = json.dumps(CHAT).encode()
ENCODED = [  # (Content-Encoding header lines, codings applied)
    (["gzip"], ["gzip"]), (["x-gzip"], ["gzip"]), (["deflate"], ["deflate"]), (["deflate"], ["deflate-raw"]),
    (["br"], ["br"]), (["zstd"], ["zstd"]), (["GZip"], ["gzip"]), (["identity"], []),
    (["gzip, br"], ["gzip", "br"]), (["zstd, deflate, gzip"], ["zstd", "deflate", "gzip"]),
    (["gzip", "br"], ["gzip", "br"]),   # two header lines
]


@pytest.mark.parametrize("mode", ["reverse", "regular"])
def test_encoded_request_bodies_are_decoded_and_the_coding_not_forwarded(shared_sidecar, fake, tmp_path, mode):
    side = shared_sidecar(mode=mode)
    for lines, codings in ENCODED:
        fake.reset()
        status, hdrs, out = post(side, encode(BODY, codings), [("content-encoding", v) for v in lines], tmp_path)
        assert status == 200, (lines, out[:300])
        assert json.loads(out)["choices"][0]["message"]["content"] == OK_TEXT
        [rec] = fake.requests("mistral")
        assert headers_of(rec, "content-encoding") == [], lines
        assert rec["body"]["messages"] == MSG   # plain JSON at the provider
        t = trace(side, hdrs["x-route-trace-id"])
        assert (t["status"], t["outcome"]) == (200, "ok")


def test_a_chunked_upload_of_a_gzip_body_is_decoded_too(shared_sidecar, fake, tmp_path):
    side = shared_sidecar(mode="reverse")
    status, _, out = post(side, encode(BODY, ["gzip"]),
                          [("content-encoding", "gzip"), ("transfer-encoding", "chunked")], tmp_path)
    assert status == 200 and json.loads(out)["choices"][0]["message"]["content"] == OK_TEXT
    assert fake.requests("mistral")[0]["body"]["messages"] == MSG


def test_dry_run_bodies_are_decoded_within_the_bound_too(shared_sidecar, tmp_path):
    side = shared_sidecar(mode="reverse")
    rank = json.dumps({"policy": {"rules": [["eq", "region", "eu"]]}}).encode()
    bomb = encode(b'{"policy": {"rules": []}, "pad": "' + b"A" * (12 * 1024 * 1024) + b'"}', ["gzip"])
    for data, expected in ((encode(rank, ["gzip"]), 200), (bomb, 413), (rank, 200)):
        (tmp_path / "rank.bin").write_bytes(data)
        argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--data-binary", f"@{tmp_path / 'rank.bin'}",
                "-H", "content-type: application/json", side.url + "/x/rank"]
        if data is not rank:
            argv += ["-H", "content-encoding: gzip"]
        code = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
        assert int(code) == expected


BOMB = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "' + b"A" * (12 * 1024 * 1024) + b'"}]}'
REFUSED = [  # (header lines, body, status, code, words in the message)
    (["x-snappy"], BODY, 415, "unsupported_encoding", "x-snappy"),
    (["gzip, lz4"], encode(BODY, ["gzip"]), 415, "unsupported_encoding", "lz4"),
    (["compress"], BODY, 415, "unsupported_encoding", "compress"),
    (["gzip"], encode(BOMB, ["gzip"]), 413, "request_too_large", "once decoded"),
    (["br"], encode(BOMB, ["br"]), 413, "request_too_large", "once decoded"),
    (["zstd"], encode(BOMB, ["zstd"]), 413, "request_too_large", "once decoded"),
    (["deflate"], encode(BOMB, ["deflate"]), 413, "request_too_large", "once decoded"),
    (["gzip, br"], encode(BOMB, ["gzip", "br"]), 413, "request_too_large", "once decoded"),
    (["gzip"], b"this is not gzip", 400, "invalid_request", "not valid gzip"),
    (["br"], encode(BODY, ["br"])[:-4], 400, "invalid_request", "not valid br"),
    (["gzip"], encode(BODY, ["br"]), 400, "invalid_request", "not valid gzip"),   # the header lies
]


def test_unknown_codings_bombs_and_garbage_are_refused_and_traced(shared_sidecar, fake, tmp_path):
    side = shared_sidecar(mode="reverse")
    for lines, data, status, code, words in REFUSED:
        got, hdrs, out = post(side, data, [("content-encoding", v) for v in lines], tmp_path)
        err = json.loads(out)["error"]
        assert (got, err["code"]) == (status, code), (lines, err)
        assert words in err["message"]
        t = trace(side, hdrs["x-route-trace-id"])
        assert (t["status"], t["outcome"]) == (status, code)
    assert all(fake.requests(n) == [] for n in fake.ports)   # nothing reached any provider


# -- JSON routecar will not guess at ---------------------------------------------------------

STRICT = [  # (raw body, words in the error message)
    (b'{"model": "gpt-4o", "model": "gpt-5", "messages": [{"role": "user", "content": "hi"}]}', "'model' twice"),
    (b'{"model": "gpt-4o", "mod\\u0065l": "x", "messages": []}', "'model' twice"),
    (b'{"model": "m", "messages": [{"role": "user", "role": "system", "content": "hi"}]}', "'role' twice"),
    (b'{"model": "m", "tools": [], "tools": [{"type": "function"}], "messages": []}', "'tools' twice"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "NaN"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": Infinity}', "Infinity"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "top_p": -Infinity}', "-Infinity"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e999}', "1e999"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}', "surrogate"),
    (b'{"model": "gpt-\\udfff", "messages": [{"role": "user", "content": "hi"}]}', "surrogate (not Unicode text) in model"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "user": "\\ud83d"}', "surrogate"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "metadata": {"\\udc00": "k"}}', "surrogate"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}', "surrogate"),
]


@pytest.mark.parametrize("mode", ["reverse", "regular"])
def test_ambiguous_json_is_a_traced_400_and_never_forwarded(shared_sidecar, fake, tmp_path, mode):
    side = shared_sidecar(mode=mode)
    ids = []
    for raw, words in STRICT:
        status, hdrs, out = post(side, raw, [], tmp_path)
        err = json.loads(out)["error"]
        assert (status, err["code"]) == (400, "invalid_request"), (raw, err)
        assert words in err["message"], err["message"]
        # The call is traced, never lost (SQLite refuses lone surrogates in a row).
        t = trace(side, hdrs["x-route-trace-id"])
        assert (t["status"], t["outcome"]) == (400, "invalid_request")
        ids.append(hdrs["x-route-trace-id"])
    assert all(fake.requests(n) == [] for n in fake.ports)
    marks = ", ".join("?" * len(ids))   # one row per call, each under its own id
    assert side.trace_rows(f"select count(*) from decisions where trace_id in ({marks})", *ids)[0][0] == len(STRICT)


def test_the_provider_gets_exactly_the_object_routecar_evaluated(shared_sidecar, fake, tmp_path):
    side = shared_sidecar(mode="reverse")
    raw = (b'\xef\xbb\xbf { "messages" : [ {"content": "caf\\u00e9 \\ud83d\\ude00 \\\\ud800 \\u0000 \xc3\xa9",'
           b' "role": "user"} ],\n "model":"gpt-4o", "n": 1, "temperature": 0.1000000000000000055511151231257827,'
           b' "logit_bias": {"50256": -100}, "seed": 123456789012345678901234567890, "top_p": 1.0,'
           b' "stop": ["\\n", "\\"", "</s>"], "metadata": {"a": {"a": {"a": [[], {}, null, true, false]}}} }')
    status, hdrs, out = post(side, raw, [], tmp_path)
    assert status == 200, out
    [rec] = fake.requests("mistral")
    expected = json.loads(raw.decode("utf-8-sig"))
    expected["model"] = "mistral-small-3"     # the one change routecar makes
    canon = lambda v: json.dumps(v, sort_keys=True)   # noqa: E731 - "1" and "1.0" stay different
    assert canon(rec["body"]) == canon(expected)
    assert rec["body"]["messages"][0]["content"] == "café 😀 \\ud800 \x00 é"


@pytest.mark.parametrize("stream", [False, True])
def test_a_providers_lone_surrogates_never_make_a_call_untraced(shared_sidecar, fake, stream):
    side = shared_sidecar(mode="reverse")
    usage = '{"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2, "\\ud800": NaN}'
    if stream:
        body = ('data: {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [{"index": 0, '
                '"delta": {"content": "\\udfff"}, "finish_reason": null}]}\n\n'
                f'data: {{"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [], "usage": {usage}}}\n\n'
                "data: [DONE]\n\n")
        rule = {"status": 200, "body": body, "content_type": "text/event-stream"}
    else:
        body = ('{"id": "c", "object": "chat.completion", "model": "m", "choices": [{"index": 0, "message": '
                f'{{"role": "assistant", "content": "\\ud800"}}, "finish_reason": "stop"}}], "usage": {usage}}}')
        rule = {"status": 200, "body": body, "content_type": "application/json"}
    fake.set_script("mistral", [rule])
    status, hdrs, out = post(side, BODY if not stream else json.dumps(dict(CHAT, stream=True)).encode(), [],
                             Path(side.traces).parent)
    assert status == 200 and (b"\\ud800" in out or b"\\udfff" in out)
    t = trace(side, hdrs["x-route-trace-id"])
    assert (t["status"], t["outcome"], t["prompt_tokens"]) == (200, "ok", 1)


# -- HTTP/1.0 and Connection: close, with raw sockets -----------------------------------------

def raw_call(side, version: str, connection: str | None, stream: bool, no_log: bool,
             timeout: float = 10.0) -> tuple[str, dict[str, str], bytes, bool]:
    """One request on a fresh socket; (status line, headers, body bytes, closed by the server)."""
    body = json.dumps(dict(CHAT, stream=stream)).encode()
    head = (f"POST /v1/chat/completions {version}\r\nHost: api.openai.com\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"X-Route-Policy: {EU_NO_LOG if no_log else EU}\r\n")
    if connection:
        head += f"Connection: {connection}\r\n"
    host, port = side.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(head.encode() + b"\r\n" + body)
        data, closed = b"", False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            data += chunk
            s.settimeout(max(deadline - time.monotonic(), 0.01))
            if not closed and _complete_keepalive(data):
                s.settimeout(1.0)   # a whole keep-alive answer: only wait to see if the server closes
    status, _, rest = data.partition(b"\r\n")
    head_raw, _, payload = rest.partition(b"\r\n\r\n")
    hdrs = {}
    for line in head_raw.decode("latin-1").split("\r\n"):
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return status.decode(), hdrs, payload, closed


def _complete_keepalive(data: bytes) -> bool:
    """A whole answer has arrived: its last chunk, or as many body bytes as its Content-Length."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    fields = dict(line.partition(b":")[::2] for line in head.lower().split(b"\r\n")[1:])
    if b"chunked" in fields.get(b"transfer-encoding", b""):
        return data.endswith(b"\r\n0\r\n\r\n")
    length = fields.get(b"content-length")
    return length is not None and len(body) >= int(length)


def dechunk(payload: bytes) -> bytes:
    out = b""
    while payload:
        size, _, payload = payload.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            return out
        out, payload = out + payload[:n], payload[n + 2:]
    raise AssertionError("chunked body without its last chunk")


def answer_text(body: bytes, stream: bool) -> str:
    if not stream:
        return json.loads(body)["choices"][0]["message"]["content"]
    events = [b[6:] for b in body.split(b"\n\n") if b.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    return "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])


@pytest.mark.parametrize("stock", [False, True])
def test_http10_and_connection_close_clients_get_answers_they_can_read(shared_sidecar, fake, stock):
    side = shared_sidecar(mode="reverse", stock=stock)
    cases = [(v, c, s, n) for v, c in [("HTTP/1.0", None), ("HTTP/1.0", "keep-alive"), ("HTTP/1.1", "close")]
             for s in (False, True) for n in (False, True)]
    for version, connection, stream, no_log in cases:
        case = (version, connection, stream, no_log)
        status, hdrs, payload, closed = raw_call(side, version, connection, stream, no_log)
        assert status.split()[1] == "200", case
        if version == "HTTP/1.0":
            # No chunk framing for a 1.0 client: the body is the answer itself.
            assert "chunked" not in hdrs.get("transfer-encoding", ""), case
            body = payload
        else:
            body = dechunk(payload) if "chunked" in hdrs.get("transfer-encoding", "") else payload
        assert answer_text(body, stream) == OK_TEXT, case
        if connection != "keep-alive" or stream or no_log:   # everything routecar relayed, or asked to close
            assert closed, case
            assert hdrs.get("connection") == "close", case
        trace(side, hdrs["x-route-trace-id"])


def test_http11_keep_alive_still_reuses_the_connection_for_relayed_answers(shared_sidecar, fake):
    side = shared_sidecar(mode="reverse")
    host, port = side.url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps(dict(CHAT, stream=True)).encode()
    req = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\nX-Route-Policy: {EU}\r\n\r\n").encode() + body
    with socket.create_connection((host, int(port)), timeout=10) as s:
        for _ in range(2):   # the second request rides the same connection
            s.sendall(req)
            data = b""
            while not data.endswith(b"\r\n0\r\n\r\n"):
                chunk = s.recv(65536)
                assert chunk, "the server closed a keep-alive connection"
                data += chunk
            head, _, payload = data.partition(b"\r\n\r\n")
            assert b"connection: close" not in head.lower()
            assert answer_text(dechunk(payload), True) == OK_TEXT


def test_a_compressed_error_answer_reaches_the_sdk_decoded(shared_sidecar, fake):
    side = shared_sidecar(mode="reverse")
    fake.set_script("mistral", [{"compress": "gzip", "status": 400,
                                 "body": {"error": {"message": "bad temperature", "type": "invalid_request_error",
                                                    "code": "invalid_value", "param": None}}}])
    with pytest.raises(openai.APIStatusError) as ei:   # a 400 the provider means is returned as is
        sdk(side).chat.completions.create(model="gpt-4o", messages=MSG, extra_headers={"X-Route-Policy": EU})
    assert ei.value.status_code == 400 and ei.value.body["code"] == "invalid_value"
