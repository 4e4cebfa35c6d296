"""Trust routecar's CA without losing the public roots.

An app behind routecar in regular mode sees certificates minted by
routecar's CA. Pointing `SSL_CERT_FILE` (and friends) at that CA alone would
break every other HTTPS call the app makes, so `write_bundle` writes the
public roots (certifi's Mozilla bundle) plus routecar's CA into one PEM, and
`env_exports` prints the variables that make common clients use it.

Pure: no mitmproxy import, no network; the caller passes paths and env.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from collections.abc import Mapping
from pathlib import Path

import certifi

__all__ = ["default_home", "confdir", "write_bundle", "env_exports", "CA_ENV_VARS"]

# Python ssl/httpx/OpenSSL, requests, curl; Node adds to (not replaces) its roots.
CA_ENV_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
NO_PROXY = "localhost,127.0.0.1"


def default_home(env: Mapping[str, str]) -> Path:
    """`$ROUTECAR_HOME`, else `~/.routecar`."""
    if home := env.get("ROUTECAR_HOME"):
        return Path(home).expanduser()
    return Path("~/.routecar").expanduser()


def confdir(home: Path) -> Path:
    """Where mitmproxy keeps routecar's CA and certificates."""
    return home / "mitmproxy"


def write_bundle(ca_cert: Path, out: Path) -> Path:
    """Write certifi's public roots followed by `ca_cert` to `out` (atomically); return `out`."""
    ca = Path(ca_cert).read_text()
    if "-----BEGIN CERTIFICATE-----" not in ca:
        raise ValueError(f"{ca_cert} holds no PEM certificate")
    roots = Path(certifi.where()).read_text()
    text = f"{roots.rstrip()}\n\n# routecar CA ({ca_cert})\n{ca.strip()}\n"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Apps may read the bundle while `routecar env` rewrites it: never expose half a file.
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def env_exports(
    proxy_url: str,
    bundle: Path,
    ca_cert: Path,
    shell: str = "sh",
    *,
    http_proxy: bool = False,
) -> str:
    """Shell lines that send an app's HTTPS through routecar and trust its CA.

    `shell` is "sh" (bash/zsh/sh: `export K=V`) or "fish" (`set -gx K V`).
    `HTTP_PROXY` is only set with `http_proxy=True`: LLM APIs are HTTPS, and
    plain-HTTP traffic of the app has no reason to pass through routecar.
    `NODE_EXTRA_CA_CERTS` gets the CA alone, since Node adds it to its own roots.
    """
    pairs: list[tuple[str, str]] = [("HTTPS_PROXY", proxy_url)]
    if http_proxy:
        pairs.append(("HTTP_PROXY", proxy_url))
    pairs.append(("NO_PROXY", NO_PROXY))
    pairs += [(var, str(bundle)) for var in CA_ENV_VARS]
    pairs.append(("NODE_EXTRA_CA_CERTS", str(ca_cert)))
    if shell == "sh":
        return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in pairs)
    if shell == "fish":
        return "".join(f"set -gx {k} {shlex.quote(v)}\n" for k, v in pairs)
    raise ValueError(f"unsupported shell {shell!r}: use 'sh' or 'fish'")
