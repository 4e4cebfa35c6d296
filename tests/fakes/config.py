"""Write a providers.yaml that sends every provider to a loopback fake.

Each provider keeps its real host in `hosts:` so routecar still intercepts the
app's calls to e.g. api.openai.com, while the routed request goes to
127.0.0.1. Keys are fake and per provider (`fake-key-<name>`), so tests can
prove which key reached which fake.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import yaml

from routecar.providers import DEFAULT_PROVIDERS, load_providers


def fake_key(name: str) -> str:
    return f"fake-key-{name}"


def write_loopback_providers(url_of: Callable[[str], str], out: Path,
                             names: list[str] | None = None) -> tuple[Path, dict[str, str]]:
    """providers.yaml for the default providers at `url_of(name)`; returns (path, env with keys)."""
    real = load_providers(DEFAULT_PROVIDERS)
    providers: dict[str, dict] = {}
    env: dict[str, str] = {}
    for name, p in real.by_name.items():
        if names is not None and name not in names:
            continue
        providers[name] = {"base_url": url_of(name), "auth": p.spec.auth, "key_env": p.spec.key_env,
                           "hosts": [p.host], "apis": list(p.spec.apis)}
        env[p.spec.key_env] = fake_key(name)
    out.write_text(yaml.safe_dump({"providers": providers}, sort_keys=False))
    return out, env


def key_envs(providers: Mapping[str, dict]) -> dict[str, str]:
    return {p["key_env"]: fake_key(n) for n, p in providers.items()}
