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


# -- a new user's first hour (issue 14) --------------------------------------------------------

def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("routecar 0.") and "mitmproxy 12." in out


def test_every_option_of_every_command_has_help_and_every_command_an_example():
    import argparse
    from routecar.cli.main import build_parser
    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    commands = sub.choices
    assert set(commands) >= {"run", "env", "check", "fields", "rank", "compile", "traces", "explain", "demo"}
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}"
               for name, sp in [("routecar", parser), *commands.items()] for a in sp._actions
               if not a.help and a is not sub]
    assert missing == []
    for name, sp in commands.items():
        text = sp.format_help()
        assert "Example:" in text and f"routecar {name}" in text.split("Example:", 1)[1], name


def test_check_prints_one_line_per_rule_with_its_id(capsys):
    code, out, err = run(capsys, "check", str(EXAMPLES / "mixed.json"))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("pol_")
    assert [line.split()[:2] for line in lines[1:4]] == [["[0]", "eu-only"], ["[1]", "quality-floor"],
                                                        ["[2]", "eu-providers"]]
    assert lines[1].endswith('["eq", "region", "eu"]')
    assert lines[4].startswith("rank: ") and lines[5].startswith("canonical: {")
    assert len(lines) == 6


@pytest.mark.parametrize("rule,warning", [
    (["eq", "region", "EU"], "warning: rules[0][2]: no catalog entry has region 'EU' (did you mean 'eu'?); "
                             "known: cn, eu, us"),
    (["eq", "provider", "openia"], "warning: rules[0][2]: no catalog entry has provider 'openia' (did you mean "
                                   "'openai'?)"),
    (["has", "capabilities", "tool"], "warning: rules[0][2]: no catalog entry has capability 'tool' (did you mean "
                                      "'tools'?); known: json, tools, vision"),
])
def test_check_warns_about_values_no_entry_has(capsys, rule, warning):
    code, out, err = run(capsys, "check", json.dumps({"rules": [rule]}))
    assert code == 0 and out.startswith("pol_")  # valid: a catalog may gain the value later
    assert err.startswith(warning)
    code, out, _ = run(capsys, "check", json.dumps({"rules": [rule]}), "--json")
    assert [w["path"] for w in json.loads(out)["warnings"]] == ["rules[0][2]"]


def test_check_operator_hints(capsys):
    code, _, err = run(capsys, "check", '{"rules": [["cmp", "price_in", "gte", 1], ["equals", "region", "eu"]]}')
    assert code == 2
    assert "rules[0][2]: unknown comparison 'gte' (did you mean 'ge'?)" in err
    assert "rules[1][0]: unknown operator 'equals' (did you mean 'eq'?); operators: eq ne in nin cmp has and or not" in err


def test_yaml_policy_files_are_read(capsys, tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("rules:\n  - id: eu-only\n    rule: [eq, region, eu]\nno_log: true\n")
    code, out, _ = run(capsys, "check", str(path), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["clauses"][0]["id"] == "eu-only" and data["canonical"]["no_log"] is True
    assert data["fingerprint"] == json.loads(run(capsys, "check", json.dumps(
        {"rules": [["eq", "region", "eu"]], "no_log": True}), "--json")[1])["fingerprint"]
    code, out, _ = run(capsys, "rank", str(path), "--json")
    assert (code, json.loads(out)["selected"]) == (0, "mistral/mistral-small-3")


@pytest.mark.parametrize("name,text,message", [
    ("broken.yaml", "rules: [eq, region\n", "routecar: policy '{p}' is not valid YAML: "),
    ("broken.json", "{rules: nope", "  $: not valid JSON: "),
    ("list.json", "- 1\n- 2\n", "  $: not valid JSON: "),
])
def test_unreadable_policies_are_one_clear_error(capsys, tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    code, out, err = run(capsys, "check", str(path))
    assert (code, out) == (2, "")
    assert message.format(p=path) in err and "Traceback" not in err


def test_rank_reads_the_shipped_example_request(capsys):
    code, out, _ = run(capsys, "rank", "--tenant", "stark-vip", "--tenants", str(ROOT / "policies" / "tenants.yaml"),
                       "--request", str(EXAMPLES / "requests" / "tools.json"), "--json")
    assert code == 0
    assert json.loads(out)["request"]["tools"] is True


@pytest.mark.parametrize("text,message", [
    ("{not json", "routecar: request '{p}' is not valid JSON or YAML: "),
    ("[1, 2]", "routecar: request '{p}' must be a chat request object like "),
])
def test_rank_bad_request_is_one_clear_error(capsys, tmp_path, text, message):
    path = tmp_path / "req.json"
    path.write_text(text)
    code, out, err = run(capsys, "rank", str(EXAMPLES / "eu-only.json"), "--request", str(path))
    assert (code, out) == (2, "")
    assert err.startswith(message.format(p=path)) and "Traceback" not in err
