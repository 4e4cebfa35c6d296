"""governance.classify, table-driven: every way an attacker might spell a call so that it
reaches a provider ungoverned. Each table row is one attack variant (or a control that
must keep working); the e2e tests (tests/e2e/test_fail_closed.py) replay a sample of
them through the real proxy."""

from __future__ import annotations

import pytest

from routecar.errors import BadRequest, ConfigError
from routecar.governance import (SHAPES, Governance, Kind, Shape, Verdict, check_routing_headers, clean_path,
                                 loose_path, normal_host)

HOSTS = frozenset({"api.openai.com", "api.anthropic.com", "api.groq.com", "routecar-eu.openai.azure.com"})
GOV = Governance(HOSTS, frozenset({"/v1", "/openai/v1", "/v1beta/openai"}), passthrough=("/v1/files",))
CHAT = "/v1/chat/completions"


def verdict(method: str = "POST", path: str = CHAT, host: str = "api.openai.com", mode: str = "regular",
            headers: dict[str, str] | None = None, names: tuple[str | None, ...] = ()) -> Verdict:
    return GOV.classify(method, host, path, mode, headers or {}, names)  # type: ignore[arg-type]


# -- the routed path, spelt otherwise: refused (404), never routed nor passed ----------------------

SPELLINGS = [
    "/v1/chat/completions/", "/v1/chat/completions//", "/V1/CHAT/COMPLETIONS", "/v1/Chat/Completions",
    "/v1/chat/completions;x=1", "/v1;x=1/chat/completions", "/v1/chat/completions;", "/v1/chat/completions;/",
    "/v1/chat%2Fcompletions", "/v1%2Fchat%2Fcompletions", "/v1/chat%2fcompletions", "/v1/chat%252Fcompletions",
    "/v1/chat/%63ompletions", "/%76%31/chat/completions", "/v1/chat/completions%00", "/v1/chat/completions%20",
    "/v1/chat/completions%09", "/v1/chat/completions%2F", "/v1/chat/completions%3B", "/v1/chat/completions%3F",
    "/v1/./chat/completions", "/v1/chat/./completions", "/v1/x/../chat/completions", "/v2/../v1/chat/completions",
    "/v1/chat/completions/.", "/v1/chat/completions/x/..", "/v1/%2e/chat/completions", "/v1/%2E%2E/v1/chat/completions",
    "/v1/chat/completions/%2e", "//v1/chat/completions", "/v1//chat/completions", "/v1/chat//completions",
    "/v1\\chat\\completions", "/v1/chat\\completions", "/v1/chat/completions#", "/v1/chat/completions#frag",
    "/v1/chat/completions.json", "/v1/chat/completions~", "/v1/chat/completions\t", " /v1/chat/completions",
    "/v1/\uff43hat/completions", "/v1/chat/completions\u200b", "http://api.openai.com/v1/chat/completions",
    "https://api.openai.com/v1/chat/completions", "*", "/v1/chat/completions/..;/completions",
]


@pytest.mark.parametrize("path", SPELLINGS)
def test_other_spellings_of_the_routed_path_are_refused(path):
    v = verdict(path=path)
    assert (v.kind, v.status) == (Kind.REFUSE, 404), v


def test_a_near_spelling_is_explained():
    assert "is not /v1/chat/completions as routecar routes it" in verdict(path="/V1/chat/completions/").reason
    assert "routecar does not govern POST /v1/embeddings" in verdict(path="/v1/embeddings").reason


# -- query strings on the routed path: refused (routecar builds the provider's URL itself) --------

QUERIES = ["/v1/chat/completions?x=1", "/v1/chat/completions?", "/v1/chat/completions?api-version=2024-10-21",
           "/v1/chat/completions?/../responses", "/v1/chat/completions?_method=GET",
           # the anthropic SDK's beta marker is accepted exactly as it sends it, on Messages only
           "/v1/messages?beta=true&beta=true", "/v1/messages?BETA=true", "/v1/messages?Beta=true",
           "/v1/messages?beta=TRUE", "/v1/messages?beta=True", "/v1/messages?beta=1", "/v1/messages?beta=false",
           "/v1/messages?beta", "/v1/messages?beta=", "/v1/messages?beta=true&x=1", "/v1/messages?x=1&beta=true",
           "/v1/messages?beta=true&", "/v1/messages?&beta=true", "/v1/messages?beta=true;x=1",
           "/v1/messages?beta=%74rue", "/v1/messages?%62eta=true", "/v1/messages?beta%3Dtrue",
           "/v1/messages?beta=true%00", "/v1/messages?beta=true%20", "/v1/messages?beta+=true",
           "/v1/messages??beta=true", "/v1/messages?beta=true#", "/v1/messages?beta=true?",
           "/v1/messages?beta==true", "/v1/messages?beta=true/../../v1/responses",
           "/v1/messages?\uff42eta=true", "/v1/messages? beta=true",
           "/v1/chat/completions?beta=true", "/v1/responses?beta=true"]


@pytest.mark.parametrize("path", QUERIES)
def test_query_on_the_routed_path_is_refused(path):
    v = verdict(path=path)
    assert (v.kind, v.status) == (Kind.REFUSE, 400) and "query" in v.reason


# exactly what `client.beta.messages.create/stream` sends, at every base path
BETA_ACCEPTED = ["/v1/messages?beta=true", "/openai/v1/messages?beta=true", "/v1beta/openai/messages?beta=true"]


@pytest.mark.parametrize("path", BETA_ACCEPTED)
def test_the_anthropic_sdks_beta_marker_is_routed_as_messages(path):
    assert verdict(path=path, host="api.anthropic.com") == Verdict(Kind.ROUTE, api="messages")
    assert verdict(path=path, host="127.0.0.1", mode="reverse") == Verdict(Kind.ROUTE, api="messages")


@pytest.mark.parametrize("method,path,status", [
    ("GET", "/v1/messages?beta=true", 405), ("post", "/v1/messages?beta=true", 405),
    ("POST", "/v1/messages/?beta=true", 404), ("POST", "/V1/messages?beta=true", 404),
    ("POST", "/v1/messages/count_tokens?beta=true", 404), ("POST", "/v1/messages;x=1?beta=true", 404),
    ("POST", "/v1/models?beta=true", 405),
])
def test_the_beta_marker_does_not_open_other_paths_or_methods(method, path, status):
    v = verdict(method=method, path=path, host="api.anthropic.com")
    assert (v.kind, v.status, v.error_format) == (Kind.REFUSE, status, "anthropic")


def test_a_refused_query_names_what_is_accepted():
    assert "takes no query string but ?beta=true" in verdict(path="/v1/messages?beta=1").reason
    assert "takes no query string (" in verdict(path="/v1/chat/completions?beta=true").reason


# -- other methods on the routed path: 405 ----------------------------------------------------------

METHODS = ["GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "CONNECT", "post", "Post", "PROPFIND"]


@pytest.mark.parametrize("method", METHODS)
def test_other_methods_on_the_routed_path_are_refused(method):
    v = verdict(method=method)
    assert (v.kind, v.status) == (Kind.REFUSE, 405)


# -- headers that would change the method or path at a lenient server: 400 --------------------------

OVERRIDES = [
    ("POST", {"x-http-method-override": "GET"}), ("GET", {"x-http-method-override": "POST"}),
    ("POST", {"x-http-method": "PUT"}), ("POST", {"x-method-override": "DELETE"}),
    ("POST", {"x-original-method": "GET"}), ("POST", {"x-original-url": "/v1/responses"}),
    ("POST", {"x-rewrite-url": "/v1/embeddings"}), ("POST", {"x-http-method-override": "POST"}),
]


@pytest.mark.parametrize("method,headers", OVERRIDES)
def test_method_and_url_override_headers_are_refused(method, headers):
    v = verdict(method=method, headers=headers)
    assert (v.kind, v.status) == (Kind.REFUSE, 400) and next(iter(headers)) in v.reason
    # also on a passthrough path: the operator listed a path, not a path rewriter
    assert verdict(method=method, path="/v1/files", headers=headers).kind is Kind.REFUSE


# -- hosts: case and trailing dots are the same host; disagreeing names are refused ------------------

SAME_HOST = [("API.OPENAI.COM", {}, ()), ("api.openai.com.", {}, ()), ("Api.OpenAi.Com.", {}, ()),
             ("api.openai.com..", {}, ()), ("api.openai.com", {"host": "api.openai.com:443"}, ()),
             ("api.openai.com", {"host": "API.OPENAI.COM."}, ()), ("api.openai.com.", {}, ("api.openai.com",)),
             ("api.groq.com", {}, ()), ("ROUTECAR-EU.OPENAI.AZURE.COM.", {}, ())]


@pytest.mark.parametrize("host,headers,names", SAME_HOST)
def test_host_spellings_are_still_the_provider(host, headers, names):
    path = "/openai/v1/chat/completions" if "groq" in host else CHAT
    assert verdict(host=host, path=path, headers=headers, names=names) == Verdict(Kind.ROUTE, api="chat")


MISMATCHES = [
    ("api.openai.com", {"host": "example.com"}, ()),            # Host header elsewhere
    ("203.0.113.7", {"host": "api.openai.com"}, ()),            # by IP, Host names the provider
    ("example.com", {}, ("api.openai.com",)),                   # SNI names the provider
    ("api.openai.com", {}, ("api.anthropic.com",)),             # SNI names another provider
    ("api.openai.com", {}, ("evil.example", None)),             # absolute-form authority inside the tunnel
    ("api.openai.com", {"host": "routecar.local"}, ()),         # Host pretends to be routecar
    ("api.openai.com", {"host": "user@api.openai.com"}, ()),    # userinfo in Host
    ("api.openai.com", {"host": "api.openai.com.evil.example"}, ()),
]


@pytest.mark.parametrize("host,headers,names", MISMATCHES)
def test_names_that_disagree_are_refused(host, headers, names):
    v = verdict(host=host, headers=headers, names=names)
    assert (v.kind, v.status) == (Kind.REFUSE, 400) and "more than one host" in v.reason


@pytest.mark.parametrize("host,headers,names,kind", [
    ("routecar.local", {}, (), Kind.DRY_RUN), ("ROUTECAR.LOCAL.", {}, (), Kind.DRY_RUN),
    ("example.com", {}, (), Kind.OUTSIDE), ("api.openai.com.evil.example", {}, (), Kind.OUTSIDE),
    ("xapi.openai.com", {}, (), Kind.OUTSIDE), ("api.openai.co", {}, (), Kind.OUTSIDE),
    ("example.com", {"host": "example.com"}, ("example.com",), Kind.OUTSIDE),
])
def test_not_a_provider(host, headers, names, kind):
    assert verdict(host=host, headers=headers, names=names).kind is kind


# -- endpoints routecar does not route (yet): refused, in the caller's error format -----------------

ENDPOINTS = [
    ("POST", "/v1/completions", "openai"), ("POST", "/v1/embeddings", "openai"),
    ("POST", "/v1/messages/count_tokens", "anthropic"),
    ("POST", "/V1/Messages/", "anthropic"), ("GET", "/v1/models/gpt-4o", "openai"),
    ("POST", "/v1/responses/resp_1", "openai"), ("GET", "/v1/models/", "openai"),
    ("POST", "/v1/audio/transcriptions", "openai"), ("POST", "/v1/images/generations", "openai"),
    ("POST", "/v1/moderations", "openai"), ("POST", "/v1/batches", "openai"),
    ("POST", "/v1/threads/t_1/messages", "openai"), ("POST", "/v1/realtime/sessions", "openai"),
    ("POST", "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21", "openai"),
    ("POST", "/chat/completions", "openai"), ("POST", "/v2/chat/completions", "openai"),
    ("POST", "/v1/chat/completions/stream", "openai"), ("POST", "/v1/responses/resp_1/cancel", "openai"),
    ("GET", "/", "openai"), ("POST", "/v1/files/../chat/completions", "openai"),
]


@pytest.mark.parametrize("method,path,fmt", ENDPOINTS)
def test_unrouted_endpoints_are_refused(method, path, fmt):
    v = verdict(method=method, path=path)
    assert (v.kind, v.status, v.error_format) == (Kind.REFUSE, 404, fmt)


@pytest.mark.parametrize("host,path,headers,fmt", [
    ("api.anthropic.com", "/v1/complete", {}, "anthropic"),
    ("api.anthropic.com", "/v1/models/claude-x", {}, "anthropic"),
    ("api.openai.com", "/v1/whatever", {"anthropic-version": "2023-06-01"}, "anthropic"),
    ("api.openai.com", "/v1/whatever", {}, "openai"),
])
def test_error_format_follows_the_caller(host, path, headers, fmt):
    assert verdict(host=host, path=path, headers=headers).error_format == fmt


def test_routed_chat_on_every_base_path_and_errors_in_openai_format():
    for base in ("/v1", "/openai/v1", "/v1beta/openai"):
        assert verdict(path=base + "/chat/completions") == Verdict(Kind.ROUTE, api="chat")
    # chat on Anthropic's host is OpenAI-compatible: routed (its errors are chat errors)
    assert verdict(host="api.anthropic.com").kind is Kind.ROUTE


# -- passthrough: operator prefixes, clean paths only ---------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/files", "/v1/files/", "/v1/files/file-abc/content",
                                  "/v1/files?purpose=batch&limit=2"])
def test_passthrough_prefix(path):
    assert verdict(method="GET", path=path).kind is Kind.PASSTHROUGH


PASSTHROUGH_ATTACKS = [
    "/v1/files/../chat/completions", "/v1/files/%2e%2e/chat/completions", "/v1/files/..%2Fchat%2Fcompletions",
    "/v1/files/%2E%2E%2Fchat", "/v1/files//x", "/v1/files;x=1", "/v1/files;/../chat/completions",
    "/v1/files\\..\\chat\\completions", "/v1/filesystem", "/V1/FILES", "/v1/files/./x", "/v1/files/.",
    "/v1/files/..", "/v1/files%2F..%2Fchat", "/v1/files/%252e%252e/chat", "//v1/files",
    "/v1/files/\u2024\u2024/chat",
]


@pytest.mark.parametrize("path", PASSTHROUGH_ATTACKS)
def test_passthrough_needs_a_clean_path_under_the_prefix(path):
    assert verdict(method="POST", path=path).kind is Kind.REFUSE


@pytest.mark.parametrize("prefix", ["/v1", "/", "/V1/CHAT", "/v1/chat/completions", "/v1/chat/completions/",
                                    "v1/files", "/v1/files/../chat", "/v1/%66iles", "/v1//files", "/v1/files;x",
                                    "/openai/v1", "/OpenAI"])
def test_passthrough_prefixes_that_would_cover_governed_paths_fail_at_start(prefix):
    with pytest.raises(ConfigError, match="routecar_passthrough"):
        Governance(HOSTS, frozenset({"/v1", "/openai/v1"}), passthrough=(prefix,))


# -- reverse mode: every request is for the provider ------------------------------------------------------

@pytest.mark.parametrize("method,path,headers,kind", [
    ("POST", CHAT, {"host": "127.0.0.1:8080"}, Kind.ROUTE),
    ("GET", "/x/fields", {}, Kind.DRY_RUN),
    ("GET", "/metrics", {}, Kind.DRY_RUN),           # Prometheus scrapes the sidecar's own address
    ("GET", "/metrics/", {}, Kind.REFUSE),
    ("GET", "/v1/metrics", {}, Kind.REFUSE),
    ("POST", "/v1/responses", {}, Kind.ROUTE),
    ("POST", "/v1/embeddings", {}, Kind.REFUSE),
    ("GET", "/X/fields", {}, Kind.REFUSE),
    ("GET", "//x/fields", {}, Kind.REFUSE),
    ("POST", "/v1/chat/completions/", {}, Kind.REFUSE),
    ("GET", "/v1/files/f1", {}, Kind.PASSTHROUGH),
])
def test_reverse_mode(method, path, headers, kind):
    assert verdict(method=method, path=path, host="127.0.0.1", mode="reverse", headers=headers).kind is kind


# -- shapes plug in ----------------------------------------------------------------------------------------

def test_a_new_shape_is_one_entry():
    gov = Governance(HOSTS, passthrough=(), shapes=SHAPES + (Shape("POST", "/responses", Kind.ROUTE, "responses"),
                                                            Shape("GET", "/models", Kind.ANSWER, "models")))
    assert gov.classify("POST", "api.openai.com", "/v1/responses", "regular", {}) == Verdict(Kind.ROUTE, api="responses")
    assert gov.classify("GET", "api.openai.com", "/v1/models", "regular", {}) == Verdict(Kind.ANSWER, api="models")
    assert gov.classify("POST", "api.openai.com", "/v1/responses/", "regular", {}).kind is Kind.REFUSE
    with pytest.raises(ConfigError):  # and passthrough can no longer cover it
        Governance(HOSTS, passthrough=("/v1/models",), shapes=gov.shapes)


# -- routing headers --------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields,message", [
    ([(b"X-Tenant-Id", b"a"), (b"X-Tenant-Id", b"b")], "X-Tenant-Id is sent more than once"),
    ([(b"X-Tenant-Id", b"a"), (b"x-tenant-id", b"a")], "X-Tenant-Id is sent more than once"),
    ([(b"x-route-policy", b"{}"), (b"X-ROUTE-POLICY", b"{}")], "X-Route-Policy is sent more than once"),
    ([(b"X-Tenant-Id", b"acme\xff")], "X-Tenant-Id is not valid UTF-8"),
    ([(b"X-Route-Policy", b'{"rules": [["eq", "region", "\xe9u"]]}')], "X-Route-Policy is not valid UTF-8"),
    ([(b"X-Tenant-Id", b"\xc3\x28")], "X-Tenant-Id is not valid UTF-8"),
])
def test_routing_headers_once_and_utf8(fields, message):
    with pytest.raises(BadRequest) as ei:
        check_routing_headers(fields)
    assert (ei.value.status, ei.value.code, ei.value.message) == (400, "invalid_request", message)


def test_routing_headers_that_are_fine():
    check_routing_headers([(b"X-Tenant-Id", "caf\u00e9".encode()), (b"X-Route-Policy", b"{}"),
                           (b"Authorization", b"\xff"), (b"X-Tenant-Idx", b"a"), (b"X-Tenant-Idx", b"b")])


@pytest.mark.parametrize("name,host", [("API.OpenAI.com.", "api.openai.com"), ("api.openai.com:443", "api.openai.com"),
                                       ("[::1]:8080", "::1"), ("::1", "::1"), ("a.b..", "a.b"), (" x.y ", "x.y")])
def test_normal_host(name, host):
    assert normal_host(name) == host


def test_clean_and_loose_paths():
    assert clean_path("/v1/files/f-1") and not clean_path("/v1/files/../x") and not clean_path("/v1/%2e")
    assert loose_path("/V1/./x/../Chat//Completions;x=1/?q") == "/v1/chat/completions"
    assert loose_path("/v1/chat%252Fcompletions") == "/v1/chat/completions"


ATTACK_VARIANTS = (len(SPELLINGS) + len(QUERIES) + len(METHODS) + len(OVERRIDES) + len(MISMATCHES)
                   + len(ENDPOINTS) + len(PASSTHROUGH_ATTACKS) + len(SAME_HOST))


def test_attack_variant_count_is_reported():
    # docs/security.md quotes this figure; keep them in step.
    assert ATTACK_VARIANTS >= 100


def test_shipped_shapes_route_responses_and_messages_and_answer_models():
    assert verdict(path="/v1/responses") == Verdict(Kind.ROUTE, api="responses")
    assert verdict(host="api.anthropic.com", path="/v1/messages") == Verdict(Kind.ROUTE, api="messages")
    assert verdict(method="GET", path="/v1/models") == Verdict(Kind.ANSWER, api="models")
    assert verdict(method="GET", path="/v1/responses").status == 405
    assert verdict(path="/v1/messages?beta=true") == Verdict(Kind.ROUTE, api="messages")   # anthropic SDK beta
    assert verdict(path="/v1/messages?beta=1").kind is Kind.REFUSE
