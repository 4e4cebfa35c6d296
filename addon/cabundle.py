"""Trust routecar's CA without losing the public roots.

An app behind routecar in regular mode sees certificates minted by
routecar's CA. Pointing `SSL_CERT_FILE` (and friends) at that CA alone would
break every other HTTPS call the app makes, so `write_bundle` writes the
public roots (certifi's Mozilla bundle) plus routecar's CA into one PEM, and
`env_exports` prints the variables that make common clients use it.
`reverse_exports` is the other zero-code path: the base-URL variables the
official SDKs read, for runtimes that ignore `HTTPS_PROXY` (Node 20's `fetch`).

Pure: no mitmproxy import, no network; the caller passes paths and env.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import tempfile
from collections.abc import Mapping
from pathlib import Path

import certifi

__all__ = ["default_home", "confdir", "bundle_path", "write_bundle", "env_exports", "reverse_exports", "env_command",
           "CA_ENV_VARS", "BASE_URL_VARS"]

# Python ssl/httpx/OpenSSL, requests, curl; Node adds to (not replaces) its roots.
CA_ENV_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
NO_PROXY = "localhost,127.0.0.1"
# What the official SDKs read (Python and Node alike), and the path each appends itself:
# openai adds "/chat/completions" to a base ending in /v1, anthropic adds "/v1/messages".
BASE_URL_VARS = (("OPENAI_BASE_URL", "/v1"), ("ANTHROPIC_BASE_URL", ""))


def default_home(env: Mapping[str, str]) -> Path:
    """`$ROUTECAR_HOME`, else `~/.routecar`."""
    if home := env.get("ROUTECAR_HOME"):
        return Path(home).expanduser()
    return Path("~/.routecar").expanduser()


def confdir(home: Path) -> Path:
    """Where mitmproxy keeps routecar's CA and certificates."""
    return home / "mitmproxy"


def bundle_path(home: Path, ca_dir: Path) -> Path:
    """Where the trust bundle for the CA in `ca_dir` lives: `home/ca-bundle.pem` for routecar's
    own CA, a name of its own for another confdir's (e.g. stock mitmdump's ~/.mitmproxy)."""
    if Path(ca_dir).expanduser().resolve() == confdir(home).expanduser().resolve():
        return home / "ca-bundle.pem"
    tag = hashlib.sha256(str(Path(ca_dir).expanduser().resolve()).encode()).hexdigest()[:8]
    return home / f"ca-bundle-{tag}.pem"


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
    # Node 24 (and late 22.x) honour HTTPS_PROXY in fetch only with this; Node 20 ignores it
    # (use reverse_exports there).
    pairs.append(("NODE_USE_ENV_PROXY", "1"))
    return _lines(pairs, shell)


def reverse_exports(base_url: str, shell: str = "sh") -> str:
    """Shell lines pointing the official SDKs' base URLs at a reverse-mode sidecar.

    No proxy and no CA: the app calls routecar at `base_url` in plain HTTP on loopback,
    so this works for any runtime, including those that ignore `HTTPS_PROXY`.
    """
    root = base_url.rstrip("/")
    return _lines([(var, root + suffix) for var, suffix in BASE_URL_VARS], shell)


def env_command(listen_url: str, *, reverse: bool, ca_dir: str | os.PathLike[str],
                env: Mapping[str, str]) -> str:
    """The `routecar env` command an app's shell evaluates for a sidecar at `listen_url`.

    A proxy signing with another CA than routecar's own (stock `mitmdump -s` uses its
    confdir, ~/.mitmproxy by default) gets `--confdir`, so the app trusts that CA.
    """
    if reverse:
        return f"routecar env --reverse {listen_url}"
    cmd = f"routecar env --proxy {listen_url}"
    ca_dir = Path(ca_dir).expanduser()
    if ca_dir.resolve() != confdir(default_home(env)).resolve():
        cmd += f" --confdir {shlex.quote(str(ca_dir))}"
    return cmd


def _lines(pairs: list[tuple[str, str]], shell: str) -> str:
    if shell == "sh":
        return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in pairs)
    if shell == "fish":
        return "".join(f"set -gx {k} {shlex.quote(v)}\n" for k, v in pairs)
    raise ValueError(f"unsupported shell {shell!r}: use 'sh' or 'fish'")
