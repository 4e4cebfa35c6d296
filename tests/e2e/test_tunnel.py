"""Only provider hosts are decrypted: any other HTTPS an app makes through the sidecar is
tunnelled untouched, so it neither needs nor sees routecar's CA."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not-a-provider")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "server.pem", tmp / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = b"hello from a non-provider host"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    cert, key = _self_signed(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], cert
    finally:
        server.shutdown()
        server.server_close()


def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-s", "-S", "--max-time", "10", *args], capture_output=True, text=True,
                          timeout=20)


def test_other_https_is_tunnelled_with_its_own_certificate(sidecar, tls_server):
    port, server_cert = tls_server
    side = sidecar()
    # Trusting only the server's own certificate works: the sidecar did not decrypt it.
    out = _curl("--proxy", side.url, "--cacert", str(server_cert), f"https://127.0.0.1:{port}/")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello from a non-provider host"
    # Control: a provider host is intercepted, so the same trust store rejects it (the
    # handshake with the sidecar fails; nothing is forwarded)...
    chat = "https://api.openai.com/v1/chat/completions"
    provider = _curl("--proxy", side.url, "--cacert", str(server_cert), chat)
    assert provider.returncode != 0 and "certificate" in provider.stderr.lower()
    # ...and routecar's CA is what it takes. (An invalid policy: routecar answers itself,
    # so nothing leaves this machine.)
    ok = _curl("--proxy", side.url, "--cacert", str(side.ca), "-o", "/dev/null", "-w", "%{http_code}",
               "-H", "X-Route-Policy: {not json", "-H", "content-type: application/json",
               "--data-binary", '{"model": "x", "messages": []}', chat)
    assert ok.returncode == 0 and ok.stdout == "400"
