"""The `routecar` CLI shell: check, fields, rank, env. Exit codes and output, run in-process."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from routecar.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "policies" / "examples"


def run(capsys, *argv: str, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_check_valid_prints_fingerprint_and_canonical(capsys):
    code, out, _ = run(capsys, "check", str(EXAMPLES / "eu-only.json"), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["fingerprint"] == "pol_" + data["digest"][:6]
    assert data["canonical"]["rules"] == [["eq", "region", "eu"]]


def test_check_reads_stdin(capsys, monkeypatch):
    code, out, _ = run(capsys, "check", "-", stdin='{"rules": [["eq", "region", "eu"]]}', monkeypatch=monkeypatch)
    assert code == 0
    assert out.startswith("pol_")


def test_check_invalid_lists_every_error_and_exits_2(capsys):
    code, _, err = run(capsys, "check", '{"rules": [["eq", "regoin", "eu"], ["cmp", "provider", "ge", 1]], "no_log": 1}')
    assert code == 2
    assert "invalid policy: 3 error(s)" in err
    assert "rules[0][1]: unknown field 'regoin' (did you mean 'region'?)" in err
    assert "no_log: no_log must be true or false" in err


def test_check_missing_file_is_one_clear_line(capsys):
    code, _, err = run(capsys, "check", "/nonexistent/policy.json")
    assert code == 2
    assert err.strip().startswith("routecar: cannot read policy '/nonexistent/policy.json'")
    assert "Traceback" not in err


def test_fields_json_lists_types_and_operators(capsys):
    code, out, _ = run(capsys, "fields", "--json")
    assert code == 0
    by_name = {f["name"]: f for f in json.loads(out)}
    assert by_name["bench_intelligence"]["type"] == "number"
    assert "cmp" in by_name["bench_intelligence"]["operators"]
    assert by_name["capabilities"]["operators"] == ["has"]
    assert by_name["tier"]["source"] == "extra"


@pytest.mark.parametrize("example,selected", [
    ("free-tier.json", "groq/gpt-oss-120b"),
    ("eu-only.json", "mistral/mistral-small-3"),
    ("vip.json", "anthropic/claude-sonnet-4-6"),
])
def test_rank_json_selects(capsys, example, selected):
    code, out, _ = run(capsys, "rank", str(EXAMPLES / example), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["selected"] == selected
    assert len(data["candidates"]) == 19


def test_rank_table_says_why_each_entry_dropped(capsys):
    code, out, _ = run(capsys, "rank", '{"rules": [{"id": "eu", "rule": ["eq", "region", "eu"]}]}')
    assert code == 0
    assert "eu failed" in out and "actual region" in out
    assert "selected mistral/mistral-small-3" in out


def test_rank_no_candidate_exits_1(capsys):
    code, out, _ = run(capsys, "rank", '{"rules": [["cmp", "bench_intelligence", "gt", 0.99]]}')
    assert code == 1
    assert "no candidate" in out


def test_rank_for_a_tenant_shows_rule_origins(capsys):
    code, out, _ = run(capsys, "rank", "--tenant", "initech-eu", "--tenants", str(ROOT / "policies" / "tenants.yaml"),
                       "--json")
    assert code == 0
    data = json.loads(out)
    assert data["tenant"] == "initech-eu"
    assert {c["from"] for c in data["policy"]["clauses"]} == {"rule:data-residency"}
    assert data["selected"] == "mistral/mistral-small-3"


def test_rank_unknown_tenant_is_a_clear_error(capsys):
    code, _, err = run(capsys, "rank", "--tenant", "nobody", "--tenants", str(ROOT / "policies" / "tenants.yaml"))
    assert code == 2
    assert "unknown tenant 'nobody'" in err


def test_env_prints_exports_with_a_combined_bundle(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ROUTECAR_HOME", str(tmp_path))
    code, out, _ = run(capsys, "env", "--proxy", "http://127.0.0.1:9999")
    assert code == 0
    lines = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines())
    assert lines["HTTPS_PROXY"] == "http://127.0.0.1:9999"
    bundle = Path(lines["SSL_CERT_FILE"])
    ca = Path(lines["NODE_EXTRA_CA_CERTS"])
    assert bundle.read_text().count("BEGIN CERTIFICATE") > 10  # public roots + routecar's CA
    assert ca.read_text().strip() in bundle.read_text()
    assert lines["REQUESTS_CA_BUNDLE"] == lines["CURL_CA_BUNDLE"] == str(bundle)
    assert lines["NODE_USE_ENV_PROXY"] == "1"


def test_env_confdir_trusts_that_proxys_ca_and_keeps_routecars_bundle(capsys, tmp_path, monkeypatch):
    from mitmproxy.certs import CertStore
    monkeypatch.setenv("ROUTECAR_HOME", str(tmp_path / "rc"))
    code, out, _ = run(capsys, "env")
    own_bundle = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines())["SSL_CERT_FILE"]
    own = Path(own_bundle).read_text()
    CertStore.from_store(tmp_path / ".mitmproxy", "mitmproxy", 2048)  # what stock mitmdump makes
    code, out, _ = run(capsys, "env", "--confdir", str(tmp_path / ".mitmproxy"))
    assert code == 0
    lines = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines())
    assert lines["NODE_EXTRA_CA_CERTS"] == str(tmp_path / ".mitmproxy" / "mitmproxy-ca-cert.pem")
    ca = Path(lines["NODE_EXTRA_CA_CERTS"]).read_text().strip()
    assert ca in Path(lines["SSL_CERT_FILE"]).read_text()
    assert lines["SSL_CERT_FILE"] != own_bundle and Path(own_bundle).read_text() == own  # untouched


def test_env_confdir_without_a_ca_is_a_clear_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ROUTECAR_HOME", str(tmp_path / "rc"))
    code, out, err = run(capsys, "env", "--confdir", str(tmp_path / "nothing"))
    assert (code, out) == (2, "")
    assert err == (f"routecar: no CA certificate at {tmp_path / 'nothing' / 'mitmproxy-ca-cert.pem'} "
                   f"(mitmproxy writes it to its confdir on first start)\n")
    assert not (tmp_path / "nothing").exists()


@pytest.mark.parametrize("argv,expected", [
    (["--reverse"], ["export OPENAI_BASE_URL=http://127.0.0.1:4000/v1",
                     "export ANTHROPIC_BASE_URL=http://127.0.0.1:4000"]),
    (["--reverse", "http://127.0.0.1:4100", "--shell", "fish"],
     ["set -gx OPENAI_BASE_URL http://127.0.0.1:4100/v1", "set -gx ANTHROPIC_BASE_URL http://127.0.0.1:4100"]),
])
def test_env_reverse_prints_the_sdk_base_urls(capsys, tmp_path, monkeypatch, argv, expected):
    monkeypatch.setenv("ROUTECAR_HOME", str(tmp_path))
    code, out, _ = run(capsys, "env", *argv)
    assert (code, out.splitlines()) == (0, expected)
    assert list(tmp_path.iterdir()) == []  # no CA needed in reverse mode


def test_check_without_a_policy_checks_the_configuration(capsys, monkeypatch):
    monkeypatch.setenv("MISTRAL_API_KEY", "k")
    code, out, _ = run(capsys, "check", "--tenants", str(ROOT / "policies" / "tenants.yaml"))
    assert code == 0
    assert "19 entries, 8 providers" in out and "6 tenant(s), every one compiles" in out
    assert "OPENAI_API_KEY" in out and "MISTRAL_API_KEY" not in out  # which keys this shell lacks
    assert out.rstrip().endswith("ok")


@pytest.mark.parametrize("file,content,message", [
    ("tenants", "tenants:\n  - {id: a, quality_floor: high}\n", "1 tenant(s) do not compile"),
    ("catalog", "entries:\n  - {id: x, model: m, provider: nowhere, region: eu, bench_intelligence: 0.5, "
                "price_in: 1, price_out: 1, context_window: 1000, max_output: 100}\n",
     "catalog uses provider(s) not in providers.yaml: nowhere"),
])
def test_check_configuration_errors_exit_2(capsys, tmp_path, file, content, message):
    path = tmp_path / f"{file}.yaml"
    path.write_text(content)
    code, _, err = run(capsys, "check", f"--{file}", str(path))
    assert code == 2
    assert message in err and "Traceback" not in err
