"""Provider adapters: default file, intercepted hosts, auth headers, missing keys."""

from __future__ import annotations

import pytest

from routecar.catalog import load_catalog
from routecar.errors import ConfigError, MissingProviderKey
from routecar.providers import FORWARD_HEADERS, load_providers, parse_providers


def test_load_default_covers_the_catalog() -> None:
    ps = load_providers()
    assert set(load_catalog().providers()) <= set(ps.by_name)
    openai = ps.get("openai")
    assert openai is not None
    assert (openai.scheme, openai.host, openai.port) == ("https", "api.openai.com", 443)
    assert openai.chat_url == "https://api.openai.com/v1/chat/completions"
    assert openai.chat_path == "/v1/chat/completions"
    assert ps.get("nope") is None


def test_intercept_hosts() -> None:
    ps = parse_providers({"providers": {
        "a": {"base_url": "https://API.a.com/v1/", "key_env": "A_KEY", "hosts": ["Alt.A.com"]},
        "b": {"base_url": "http://127.0.0.1:8080", "key_env": "B_KEY"}}, "hosts": ["extra.example"]})
    # `hosts:` replaces the base URL's host (apps call Alt.A.com; routecar sends to API.a.com)
    assert ps.intercept_hosts == {"alt.a.com", "127.0.0.1", "extra.example"}
    assert ps.is_provider_host("ALT.A.COM.") and not ps.is_provider_host("api.a.com")
    assert not ps.is_provider_host("example.com")
    assert ps.get("a").spec.base_url == "https://API.a.com/v1" and ps.get("b").port == 8080


def test_auth_headers() -> None:
    ps = load_providers()
    assert ps.get("openai").auth_headers("sk-1") == {"authorization": "Bearer sk-1"}
    assert ps.get("azure").auth_headers("az-1") == {"api-key": "az-1"}
    assert ps.get("anthropic").auth_headers("sk-ant-1") == {"x-api-key": "sk-ant-1"}
    custom = parse_providers({"x": {"base_url": "https://x.io", "key_env": "X", "headers": {"X-Extra": "1",
                                                                                           "Authorization": "no"}}})
    assert custom.get("x").auth_headers("k") == {"x-extra": "1", "authorization": "Bearer k"}
    assert not {"authorization", "api-key", "x-route-policy", "x-tenant-id"} & FORWARD_HEADERS


def test_missing_key_names_the_env_var_and_never_a_key() -> None:
    p = load_providers().get("mistral")
    assert p.key({"MISTRAL_API_KEY": "secret-mistral-123"}) == "secret-mistral-123"
    for env in ({}, {"MISTRAL_API_KEY": ""}, {"OPENAI_API_KEY": "secret-openai-456"}):
        with pytest.raises(MissingProviderKey) as ei:
            p.key(env)
        err = ei.value
        assert err.env_var == "MISTRAL_API_KEY" and "MISTRAL_API_KEY" in str(err)
        body = str(err.to_openai())
        assert "secret" not in body and "secret" not in str(err)
        assert err.to_openai()["error"]["code"] == "provider_key_missing"


def test_shipped_api_shapes() -> None:
    ps = load_providers()
    anthropic, openai, mistral = ps.get("anthropic"), ps.get("openai"), ps.get("mistral")
    assert anthropic.spec.apis == ("messages",) and anthropic.spec.auth == "x-api-key"
    assert anthropic.url("messages") == "https://api.anthropic.com/v1/messages"
    assert anthropic.speaks("messages") and not anthropic.speaks("chat")
    assert openai.spec.apis == ("chat", "responses")
    assert openai.url("responses") == "https://api.openai.com/v1/responses"
    assert openai.url("chat") == openai.chat_url
    assert mistral.spec.apis == ("chat",)   # the default
    assert not mistral.speaks("responses")
    custom = parse_providers({"x": {"base_url": "https://x.io/api", "key_env": "X", "chat_path": "/chat"}}).get("x")
    assert custom.url("chat") == "https://x.io/api/chat" and custom.url("messages") == "https://x.io/api/messages"


@pytest.mark.parametrize(("data", "message"), [
    ({"a": {"base_url": "https://x", "key_env": "K", "apis": ["chat", "completions"]}}, "provider a field apis.1: Input should be 'chat', 'responses' or 'messages'"),
    ({"a": {"base_url": "https://x", "key_env": "K", "apis": []}}, "provider a field apis: Value error, apis must list at least one"),
    ({"a": {"base_url": "https://x", "key_env": "K", "apis": ["chat", "chat"]}}, "provider a field apis: Value error, apis lists a shape twice"),
    ({}, "expected 'providers:' mapping"),
    ({"a": {"base_url": "ftp://x", "key_env": "K"}}, "provider a field base_url: Value error, base_url must be an http(s) URL"),
    ({"a": {"base_url": "https://x", "key_env": "K", "auth": "basic"}}, "provider a field auth"),
    ({"a": {"base_url": "https://x"}}, "provider a field key_env: Field required"),
    ({"a": {"base_url": "https://x", "key_env": "K", "typo": 1}}, "provider a field typo: Extra inputs are not permitted"),
])
def test_errors(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_providers(data, "p.yaml")
    assert message in str(ei.value)
