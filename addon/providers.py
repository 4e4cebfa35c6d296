"""Provider adapters: where a chosen entry's request goes and how it authenticates.

`policies/providers.yaml` maps each provider to its base URL, its auth style
(`bearer` -> `Authorization: Bearer KEY`, `api-key` -> `api-key: KEY`,
`x-api-key` -> `x-api-key: KEY`), the environment variable holding the
operator's key, and the API shapes it speaks (`apis:`, default `[chat]`; the
path of each is `chat_path`, `/responses`, `/messages` under the base URL). The hosts routecar
intercepts are, per provider, its `hosts:` (what apps call) or else its base URL's
host, plus the top-level `hosts:` list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .apis.base import ApiName
from .catalog import decode_yaml_or_json, read_source
from .errors import ConfigError, MissingProviderKey
from .shipped import POLICIES

DEFAULT_PROVIDERS = POLICIES / "providers.yaml"

class ProviderSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str
    auth: Literal["bearer", "api-key", "x-api-key"] = "bearer"
    key_env: str = Field(min_length=1)
    hosts: tuple[str, ...] = ()
    headers: dict[str, str] = Field(default_factory=dict)
    chat_path: str = "/chat/completions"
    apis: tuple[ApiName, ...] = ("chat",)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        u = urlsplit(v)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"base_url must be an http(s) URL, got {v!r}")
        return v.rstrip("/")

    @field_validator("apis")
    @classmethod
    def _apis(cls, v: tuple[ApiName, ...]) -> tuple[ApiName, ...]:
        if not v:
            raise ValueError("apis must list at least one of chat, responses, messages")
        if len(set(v)) != len(v):
            raise ValueError(f"apis lists a shape twice: {list(v)}")
        return v

@dataclass(frozen=True)
class Provider:
    name: str
    spec: ProviderSpec

    @property
    def scheme(self) -> str:
        return urlsplit(self.spec.base_url).scheme

    @property
    def host(self) -> str:
        return urlsplit(self.spec.base_url).hostname or ""

    @property
    def port(self) -> int:
        u = urlsplit(self.spec.base_url)
        return u.port or (443 if u.scheme == "https" else 80)

    @property
    def chat_url(self) -> str:
        return self.spec.base_url + self.spec.chat_path

    @property
    def chat_path(self) -> str:
        return urlsplit(self.spec.base_url).path + self.spec.chat_path

    def speaks(self, api: ApiName) -> bool:
        return api in self.spec.apis

    def url(self, api: ApiName) -> str:
        """Where a request in shape `api` goes (the provider may not speak it: see `speaks`)."""
        return self.spec.base_url + (self.spec.chat_path if api == "chat" else "/" + api)

    def key(self, env: Mapping[str, str]) -> str:
        value = env.get(self.spec.key_env, "")
        if not value:
            raise MissingProviderKey(self.name, self.spec.key_env)
        return value

    def auth_headers(self, key: str) -> dict[str, str]:
        """Lower-case names: mitmproxy keeps header case, so the caller replaces by lower-case name."""
        auth: dict[str, str] = ({"authorization": f"Bearer {key}"} if self.spec.auth == "bearer"
                                else {str(self.spec.auth): key})   # "api-key" and "x-api-key" are header names
        return {**{k.lower(): v for k, v in self.spec.headers.items()}, **auth}

@dataclass(frozen=True)
class Providers:
    by_name: Mapping[str, Provider]
    intercept_hosts: frozenset[str]

    def get(self, name: str) -> Provider | None:
        return self.by_name.get(name)

    def is_provider_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.intercept_hosts

    @property
    def base_paths(self) -> frozenset[str]:
        """The path of each provider's base URL ("/v1", "/openai/v1"...): where apps' routed
        paths start."""
        return frozenset(urlsplit(p.spec.base_url).path.rstrip("/") for p in self.by_name.values())

    def speaks_at(self, host: str, api: ApiName) -> bool:
        """True if `host` is what apps call for a provider speaking `api` (e.g. api.anthropic.com)."""
        host = host.lower().rstrip(".")
        return any(p.speaks(api) and host in {h.lower() for h in (p.spec.hosts or (p.host,))}
                   for p in self.by_name.values())

# Headers of the app's request that a routed request carries to a provider: content
# negotiation and the API protocol headers the SDKs send. Everything else stays behind:
# the app's credentials, cookies, gateway keys (Ocp-Apim-Subscription-Key, Helicone-Auth),
# its OpenAI-Organization/-Project (the app's account, not the operator's), tracing and
# SDK telemetry headers, routing headers, anything unknown. routecar sets content-type
# itself and adds exactly one credential, the operator's (`Provider.auth_headers`).
FORWARD_HEADERS = frozenset({"accept", "anthropic-version", "anthropic-beta", "openai-beta"})

def parse_providers(data: Any, source: str = "<memory>") -> Providers:
    if isinstance(data, Mapping) and "providers" in data:
        extra_hosts = data.get("hosts", [])
        data = data["providers"]
    else:
        extra_hosts = []
    if not isinstance(data, Mapping) or not data:
        raise ConfigError(f"{source}: expected 'providers:' mapping provider names to base_url/auth/key_env")
    by_name: dict[str, Provider] = {}
    problems: list[str] = []
    for name, raw in data.items():
        try:
            by_name[str(name)] = Provider(str(name), ProviderSpec.model_validate(raw))
        except ValidationError as e:
            for err in e.errors():
                loc = ".".join(str(p) for p in err["loc"]) or "provider"
                problems.append(f"provider {name} field {loc}: {err['msg']}")
    if problems:
        raise ConfigError(f"{source}: invalid providers file:\n  " + "\n  ".join(problems))
    # Compared lower case without a trailing dot: `API.openai.com.` is api.openai.com.
    hosts = {h.lower().rstrip(".") for h in extra_hosts if isinstance(h, str)}
    for p in by_name.values():
        # `hosts:` lists what apps call (e.g. api.openai.com while base_url points at a
        # gateway or a loopback fake); without it, the base URL's host is what they call.
        hosts.update(h.lower().rstrip(".") for h in (p.spec.hosts or (p.host,)))
    return Providers(by_name, frozenset(hosts))

def load_providers(source: str | Path = DEFAULT_PROVIDERS) -> Providers:
    blob = read_source(source)
    return parse_providers(decode_yaml_or_json(blob, str(source)), str(source))


@dataclass(frozen=True)
class MissingKey:
    provider: str
    env_var: str


def missing_keys(providers: Providers, names: Iterable[str], env: Mapping[str, str]) -> list[MissingKey]:
    """The providers among `names` (e.g. the catalog's) whose key variable is unset or empty in `env`."""
    out = []
    for name in sorted(set(names)):
        p = providers.get(name)
        if p is not None and not env.get(p.spec.key_env):
            out.append(MissingKey(name, p.spec.key_env))
    return out
