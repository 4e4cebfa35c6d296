"""A raw HTTP/1.1 client for attack tests: the request bytes go out exactly as written (no
client library normalises the path, the method, the Host header or the header bytes).

    raw_request(port, b"POST /v1//chat/completions HTTP/1.1\\r\\n...")          # plain (reverse mode)
    raw_request(port, req, connect="api.openai.com:443", sni="api.openai.com",   # through the proxy's
                cafile=ca)                                                        # TLS interception

Every request should say `Connection: close`; the answer is read to EOF and parsed.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]   # lower-case names (last value wins)
    body: bytes


def build(method: str, target: str, headers: list[tuple[str, str | bytes]], body: bytes = b"") -> bytes:
    """A request with Connection: close and Content-Length added; `headers` go out as given."""
    lines = [f"{method} {target} HTTP/1.1".encode("latin-1")]
    for k, v in headers:
        lines.append(k.encode("latin-1") + b": " + (v if isinstance(v, bytes) else v.encode("utf-8")))
    lines += [b"Connection: close", b"Content-Length: " + str(len(body)).encode()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def raw_request(port: int, data: bytes, *, connect: str | None = None, sni: str | None = None,
                cafile: str | None = None, timeout: float = 20.0) -> RawResponse:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        conn: socket.socket = sock
        if connect is not None:
            sock.sendall(f"CONNECT {connect} HTTP/1.1\r\nHost: {connect}\r\n\r\n".encode())
            head = _read_head(sock)
            if b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
                raise ConnectionError(f"CONNECT {connect} refused: {head[:200]!r}")
            ctx = ssl.create_default_context(cafile=cafile)
            ctx.check_hostname = bool(sni)
            conn = ctx.wrap_socket(sock, server_hostname=sni)
        conn.sendall(data)
        chunks = []
        for _ in range(100_000):  # bounded: a response is far smaller
            try:
                chunk = conn.recv(65536)
            except (ssl.SSLError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return parse(b"".join(chunks))


def _read_head(sock: socket.socket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf and len(buf) < 65536:
        chunk = sock.recv(1)
        if not chunk:
            break
        buf += chunk
    return buf


def parse(raw: bytes) -> RawResponse:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/"):
        raise ValueError(f"not an HTTP response: {raw[:200]!r}")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    return RawResponse(status, headers, body)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return out
