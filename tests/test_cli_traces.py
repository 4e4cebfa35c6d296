"""`routecar traces`, `explain`, `compile` through `routecar.cli.main.main`, over a trace DB filled
with records built from real `evaluate(...)` decisions on the default catalog."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from routecar.catalog import load_catalog
from routecar.cli.main import main
from routecar.policy import Decision, RequestProfile, evaluate, parse_policy
from routecar.tenants.rules import compile_policy, load_rules
from routecar.tenants.table import load_tenants
from routecar.traces.record import TraceRecord
from routecar.traces.store import TraceStore

ROOT = Path(__file__).resolve().parents[1]
CATALOG = load_catalog()
NOW = time.time()
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Summarise the Q3 churn numbers."}]}
EU_POLICY = {"rules": [{"id": "eu-only", "from": "rule:data-residency", "rule": ["eq", "region", "eu"]},
                       ["cmp", "bench_intelligence", "ge", 0.4]],
             "rank": [["asc", "est_cost"]], "fallback": {"max_attempts": 2}}
FLOOR_POLICY = {"rules": [{"id": "floor", "rule": ["cmp", "bench_intelligence", "ge", 0.6]}]}


def decision_for(policy_ir: Any, body: dict[str, Any] = BODY) -> Decision:
    policy = parse_policy(policy_ir, CATALOG.registry)
    return evaluate(policy, CATALOG, RequestProfile.from_body(body))


def dict_for(policy_ir: Any, body: dict[str, Any] = BODY) -> dict[str, Any]:
    """The decision as `routecar rank` answers and a trace stores it."""
    return decision_for(policy_ir, body).to_dict()


def record(trace_id: str, policy_ir: Any, *, ts: float, tenant: str | None = None, ok: bool = True,
           catalog: bool = False, **kw: Any) -> TraceRecord:
    d = decision_for(policy_ir)
    ranked = d.to_dict()["ranked"]
    if ok:
        attempts = [{"entry": ranked[0]["id"], "provider": ranked[0]["provider"],
                     "model": ranked[0]["model"], "status": 200, "duration_ms": 12.5}]
    else:
        attempts = [{"entry": r["id"], "provider": r["provider"], "model": r["model"], "status": 503,
                     "error_class": "server_error", "duration_ms": 30.0} for r in ranked[:2]]
    return TraceRecord(
        trace_id=trace_id, ts=ts, tenant=tenant, mode="regular", status=200 if ok else 502,
        outcome="ok" if ok else "upstream_failed", latency_ms=40.0, decision=d, attempts=attempts,
        request_body=json.dumps(BODY), response_body=b'{"choices": []}',
        catalog=CATALOG.to_list() if catalog else None, **kw)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "traces.db"
    now = time.time()  # not import time: --since is relative to when the test runs
    with TraceStore(path) as store:
        store.write([
            record("rt_eu", EU_POLICY, ts=now - 60, tenant="acme", catalog=True),
            record("rt_floor_failed", FLOOR_POLICY, ts=now - 7200, tenant="globex", ok=False),
            record("rt_nolog", FLOOR_POLICY, ts=now - 30, tenant="umbrella", no_log=True),
            TraceRecord(trace_id="rt_invalid", ts=now - 10, outcome="invalid_policy", status=400,
                        error={"error": {"code": "invalid_policy", "message": "rules[0]: bad"}}),
        ])
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- traces ---------------------------------------------------------------------------------

FP_FLOOR = parse_policy(FLOOR_POLICY).fingerprint


@pytest.mark.parametrize("args,expected", [
    ([], ["rt_invalid", "rt_nolog", "rt_eu", "rt_floor_failed"]),
    (["--tenant", "acme"], ["rt_eu"]),
    (["--tenant", "nobody"], []),
    (["--fingerprint", FP_FLOOR], ["rt_nolog", "rt_floor_failed"]),
    (["--since", "1h"], ["rt_invalid", "rt_nolog", "rt_eu"]),
    (["--since", "45s"], ["rt_invalid", "rt_nolog"]),
    (["--last", "2"], ["rt_invalid", "rt_nolog"]),
    (["--tenant", "globex", "--since", "3h"], ["rt_floor_failed"]),
])
def test_traces_filters(capsys, db, args, expected):
    code, out, _ = run(capsys, "traces", "--db", str(db), "--json", *args)
    assert code == 0
    assert [r["trace_id"] for r in json.loads(out)] == expected


def test_traces_table(capsys, db):
    code, out, _ = run(capsys, "traces", "--db", str(db))
    assert code == 0
    assert "4 trace(s), newest first" in out
    eu = next(line for line in out.splitlines() if "rt_eu" in line)
    selected = dict_for(EU_POLICY)["selected"]
    assert selected in eu and "acme" in eu and "200 ok" in eu and parse_policy(EU_POLICY).fingerprint in eu
    failed = next(line for line in out.splitlines() if "rt_floor_failed" in line)
    assert "502 upstream_failed" in failed and failed.split()[-4] == "2"  # attempts (then ms, est., actual cost)
    assert "no_log" in next(line for line in out.splitlines() if "rt_nolog" in line)


def test_piped_output_is_plain_and_as_wide_as_its_content(capsys, db, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")  # a pipe has no width: neither 40 nor a forced 150
    for argv in (["traces"], ["explain", "rt_eu"]):
        code, out, _ = run(capsys, *argv, "--db", str(db))
        assert code == 0
        lines = out.splitlines()
        assert not any(ch in out for ch in "│┃━─\x1b"), "no box drawing, no colour codes into a pipe"
        assert all(line == line.rstrip() for line in lines), "no padding to a fixed width"
    header = next(line for line in lines if line.startswith("entry "))  # explain's candidates table
    rows = lines[lines.index(header) + 1:]
    assert len(rows) >= len(CATALOG.entries) and all(" drop " in r or " pass " in r for r in rows[:len(CATALOG.entries)])
    code, out, _ = run(capsys, "traces", "--db", str(db))
    widest = max(len(line) for line in out.splitlines())
    assert 40 < widest < 150  # its content, one row per line
    assert [line.split()[2] for line in out.splitlines()[2:]] == ["rt_invalid", "rt_nolog", "rt_eu", "rt_floor_failed"]


@pytest.mark.parametrize("columns", [80, 120])
def test_terminal_output_fits_the_terminal(db, columns):
    import fcntl
    import pty
    import struct
    import termios
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([sys.executable, "-m", "routecar.cli", "traces", "--db", str(db)],
                            stdout=follower, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=60) == 0
    os.close(leader)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode())
    lines = [line for line in text.splitlines() if line.strip()]
    assert "┃" in text  # a terminal gets the boxed table
    assert max(len(line) for line in lines) <= columns
    assert any("rt_floor_failed" in line for line in lines)  # ids are never wrapped


def test_traces_json_parses_json_columns(capsys, db):
    code, out, _ = run(capsys, "traces", "--db", str(db), "--json", "--tenant", "acme")
    [row] = json.loads(out)
    assert row["decision"]["selected"] == dict_for(EU_POLICY)["selected"]
    assert row["chosen_entry"] == row["decision"]["selected"]
    assert row["attempts_count"] == 1 and row["est_cost"] > 0


@pytest.mark.parametrize("argv,message", [
    (["traces", "--db", "{missing}"], "routecar: no trace database at {missing} "),
    (["explain", "rt_x", "--db", "{missing}"], "routecar: no trace database at {missing} "),
    (["traces", "--db", "{db}", "--since", "soon"], "routecar: invalid duration 'soon'"),
    (["explain", "rt_nope", "--db", "{db}"], "routecar: no trace 'rt_nope' in {db}"),
    (["traces", "--db", "{notdb}"], "routecar: cannot open trace database {notdb}: "),
])
def test_errors_are_one_line_exit_2(capsys, db, tmp_path, argv, message):
    notdb = tmp_path / "notdb.db"
    notdb.write_bytes(b"this is not sqlite" * 100)
    paths = {"missing": tmp_path / "missing.db", "db": db, "notdb": notdb}
    code, out, err = run(capsys, *[a.format(**paths) for a in argv])
    assert code == 2
    assert out == ""
    assert err.startswith(message.format(**paths)) and err.count("\n") == 1
    assert not paths["missing"].exists()  # a query never creates a database


def test_missing_db_defaults_to_routecar_home(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ROUTECAR_HOME", str(tmp_path / "home"))
    code, _, err = run(capsys, "traces")
    assert code == 2
    assert err == f"routecar: no trace database at {tmp_path / 'home' / 'traces.db'} " \
                  "(routecar run writes it; or pass --db PATH)\n"


def test_last_must_be_positive(capsys, db):
    with pytest.raises(SystemExit) as e:
        main(["traces", "--db", str(db), "--last", "0"])
    assert e.value.code == 2
    assert "expected a positive integer, got '0'" in capsys.readouterr().err


# -- explain --------------------------------------------------------------------------------

def test_explain_tells_the_whole_story(capsys, db):
    code, out, _ = run(capsys, "explain", "rt_eu", "--db", str(db))
    assert code == 0
    d = dict_for(EU_POLICY)
    assert "tenant=acme" in out
    # every clause, where it came from
    assert '[0] eu-only                  ["eq", "region", "eu"]   (from rule:data-residency)' in out
    assert '[1] rules[1]' in out
    # a dropped candidate with its failing clause and actual value
    assert 'eu-only failed: ["eq", "region", "eu"] (actual region="us")' in out
    # the ranking with costs, every attempt, the outcome
    assert f"{d['ranked'][0]['est_cost']:.6f}" in out
    assert f"selected {d['selected']}   fallback: {d['fallback'][0]}" in out
    # the attempts table: one row, the selected entry answering 200 after 12.5 ms
    first = d["ranked"][0]
    lines = out.splitlines()  # (into a pipe: plain columns, two spaces apart)
    title = next(n for n, line in enumerate(lines) if line.strip() == "attempts")
    assert lines[title + 1].split() == ["#", "entry", "provider", "/", "model", "status", "error", "class",
                                        "duration", "ms"]
    assert [c.strip() for c in lines[title + 2].split("  ") if c.strip()] == [
        "1", d["selected"], f"{first['provider']} / {first['model']}", "200", "-", "12"]
    assert f"outcome ok status=200  chosen={d['selected']}" in out
    assert "payload kept in the payloads table" in out
    assert "replay: same decision" in out
    assert "replay assumes every entry healthy" in out


def test_explain_json_replay_equals_original(capsys, db):
    code, out, _ = run(capsys, "explain", "rt_eu", "--db", str(db), "--json")
    assert code == 0
    got = json.loads(out)
    original = dict_for(EU_POLICY)
    assert got["replay"]["status"] == "same" and got["replay"]["differences"] == []
    assert got["replay"]["replayed"] == original
    assert got["trace"]["decision"] == original
    assert [a["entry_id"] for a in got["trace"]["attempts"]] == [original["selected"]]


def test_explain_failed_attempts_and_replay_uses_stored_snapshot(capsys, db):
    # rt_floor_failed carried no catalog of its own: the snapshot from rt_eu (same version) serves
    code, out, _ = run(capsys, "explain", "rt_floor_failed", "--db", str(db))
    assert code == 0
    assert "503" in out and "server_error" in out
    assert "outcome upstream_failed status=502" in out
    assert "replay: same decision" in out


def test_explain_no_log_and_no_decision(capsys, db):
    code, out, _ = run(capsys, "explain", "rt_nolog", "--db", str(db))
    assert code == 0 and "payload not kept (no_log)" in out and "replay: same decision" in out
    code, out, _ = run(capsys, "explain", "rt_invalid", "--db", str(db))
    assert code == 0
    assert "no decision was made" in out and "invalid_policy: rules[0]: bad" in out
    assert "replay: not possible: the trace has no decision" in out


def _tamper(db: Path, trace_id: str, sql: str) -> None:
    with sqlite3.connect(db) as conn:
        assert conn.execute(sql, (trace_id,)).rowcount == 1


EU = dict_for(EU_POLICY)
_AT = {e.id: i for i, e in enumerate(CATALOG.entries)}
_PART = "key = (SELECT part FROM decisions WHERE trace_id = ?)"


def _unrank(*ids: str) -> str:
    return "".join(f", '$[{_AT[i]}][9]', NULL" for i in ids)


@pytest.mark.parametrize("sql,difference", [
    # a trace's verdicts and ranking live in its decision part (columns: see PART_COLUMNS)
    (f"UPDATE decision_parts SET candidates = json_set(candidates{_unrank(EU['selected'])}) WHERE {_PART}",
     f'selected: stored "{EU["ranked"][1]["id"]}", replay "{EU["selected"]}"'),
    (f"UPDATE decision_parts SET candidates = json_set(candidates{_unrank(*[r['id'] for r in EU['ranked']])}) "
     f"WHERE {_PART}", f'ranked order: stored [], replay ["{EU["selected"]}"'),
    ("UPDATE decision_parts SET candidates = json_set(candidates, '$[0][3]', 1, '$[0][5]', NULL) "
     f"WHERE {_PART} AND json_extract(candidates, '$[0][0]') = 'openai/gpt-5.5'",
     'verdict openai/gpt-5.5: stored "pass", replay "drop (eu-only)"'),
    ("UPDATE policy_parts SET policy = json_set(policy, '$.no_log', json('true')), "
     "summary = json_set(summary, '$.no_log', json('true')) "
     f"WHERE key = (SELECT policy_key FROM decision_parts WHERE {_PART})",
     "policy digest: stored"),
])
def test_explain_reports_a_tampered_decision(capsys, db, sql, difference):
    _tamper(db, "rt_eu", sql)
    code, out, _ = run(capsys, "explain", "rt_eu", "--db", str(db))
    assert code == 1
    assert "replay: different decision" in out
    assert difference in out
    code, out, _ = run(capsys, "explain", "rt_eu", "--db", str(db), "--json")
    assert code == 1 and json.loads(out)["replay"]["status"] == "different"


def test_explain_without_snapshot_says_so(capsys, tmp_path):
    path = tmp_path / "t.db"
    with TraceStore(path) as store:
        store.write([record("rt_1", EU_POLICY, ts=NOW)])
    code, out, _ = run(capsys, "explain", "rt_1", "--db", str(path))
    assert code == 0
    assert f"replay: not possible: catalog snapshot {CATALOG.version} is not in the trace store" in out


def test_catalog_snapshot_first_copy_kept(tmp_path):
    path = tmp_path / "t.db"
    with TraceStore(path) as store:
        store.write([record("rt_1", EU_POLICY, ts=NOW, catalog=True)])
        store.write([TraceRecord("rt_2", NOW, decision=decision_for(EU_POLICY), catalog=[{"id": "x"}])])
        assert store.get_catalog(CATALOG.version) == json.loads(json.dumps(CATALOG.to_list()))
        assert store.get_catalog("cat_nope") is None
        assert store.db["catalogs"].count == 1


EXAMPLES = sorted((ROOT / "policies" / "examples").glob("*.json"))
TENANTS = load_tenants(ROOT / "policies" / "tenants.yaml")
RULES = load_rules(ROOT / "policies" / "rules.yaml")


@pytest.mark.parametrize("policy_ir", [
    *(json.loads(p.read_text()) for p in EXAMPLES),
    *(compile_policy(t, RULES, CATALOG.registry).to_ir() for t in TENANTS),
], ids=[*(p.stem for p in EXAMPLES), *(t.id for t in TENANTS)])
def test_replay_equals_original_for_shipped_policies(capsys, tmp_path, policy_ir):
    path = tmp_path / "t.db"
    body = {"model": "gpt-4o", "max_tokens": 300, "messages": [{"role": "user", "content": "x" * 4000}]}
    d = decision_for(policy_ir, body)
    with TraceStore(path) as store:
        store.write([TraceRecord("rt_1", NOW, decision=d, catalog=CATALOG.to_list())])
    code, out, _ = run(capsys, "explain", "rt_1", "--db", str(path), "--json")
    replay = json.loads(out)["replay"]
    assert (code, replay["status"]) == (0, "same"), replay
    assert replay["replayed"] == d.to_dict()


# -- compile --------------------------------------------------------------------------------

@pytest.mark.parametrize("tenant,clauses,no_log_from", [
    ("acme-free", [("free-floor", "rule:free-floor", ["cmp", "bench_intelligence", "ge", 0.5])], []),
    ("globex-enterprise", [("approved-providers", "rule:approved-providers",
                            ["in", "provider", ["openai", "anthropic", "azure"]])], []),
    ("initech-eu", [("data-residency", "rule:data-residency", ["eq", "region", "eu"])], []),
    ("umbrella-health", [("blocked-providers", "rule:blocked-providers",
                          ["nin", "provider", ["deepseek", "groq"]])], ["rule:sensitive-no-log"]),
    ("stark-vip", [("quality-floor", "rule:quality-floor", ["cmp", "bench_intelligence", "ge", 0.55])], []),
    ("wayne-mixed", [("quality-floor", "rule:quality-floor", ["cmp", "bench_intelligence", "ge", 0.5]),
                     ("approved-providers", "rule:approved-providers",
                      ["in", "provider", ["mistral", "scaleway", "azure"]]),
                     ("data-residency", "rule:data-residency", ["eq", "region", "eu"])], []),
])
def test_compile_shipped_tenants(capsys, tenant, clauses, no_log_from):
    expected = compile_policy(TENANTS.get(tenant), RULES, CATALOG.registry)
    code, out, _ = run(capsys, "compile", "--tenant", tenant, "--json")
    assert code == 0
    got = json.loads(out)
    assert (got["fingerprint"], got["digest"]) == (expected.fingerprint, expected.digest)
    assert [(c["id"], c["from"], c["rule"]) for c in got["clauses"]] == clauses
    assert got["origin"]["no_log"] == no_log_from
    assert got["policy_ir"]["no_log"] is bool(no_log_from)
    assert parse_policy(got["policy_ir"]).digest == expected.digest

    code, out, _ = run(capsys, "compile", "--tenant", tenant, "--tenants",
                       str(ROOT / "policies" / "tenants.yaml"))
    assert code == 0
    assert out.startswith(f"tenant {tenant}: {expected.fingerprint}  (sha256 {expected.digest})\n")
    for cid, origin, rule in clauses:
        assert f"{cid:<24} {json.dumps(rule)}   (from {origin})" in out
    assert (f"no_log: true   (from {no_log_from[0]})" if no_log_from else "no_log: false   (default)") in out


def test_compile_unknown_tenant(capsys):
    code, out, err = run(capsys, "compile", "--tenant", "nobody")
    assert (code, out) == (2, "")
    assert err.startswith("routecar: unknown tenant 'nobody' in ") and "acme-free" in err


@pytest.mark.parametrize("command", ["traces", "explain", "compile"])
def test_help_has_an_example(capsys, command):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert f"Example: routecar {command}" in capsys.readouterr().out


@pytest.mark.parametrize("prefix,code,expect", [
    ("rt_e", 0, "trace rt_eu"),                 # unique prefix
    ("rt_eu\r\n", 0, "trace rt_eu"),           # pasted with a line ending
    ("rt_", 2, "matches several traces"),       # ambiguous
    ("rt%", 2, "no trace 'rt%'"),               # LIKE wildcards are literal
])
def test_explain_accepts_a_unique_prefix(capsys, db, prefix, code, expect):
    got, out, err = run(capsys, "explain", prefix, "--db", str(db))
    assert got == code
    assert expect in (out if code == 0 else err)
