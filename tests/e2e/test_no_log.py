"""Issue 6's no_log guarantee, end to end through the real `routecar run --save FLOWFILE`:
a canary in the request (and in the provider's answer) of a `no_log` call, plain and
streaming, is nowhere on disk after shutdown (trace DB and its -wal/-shm, the proxy log,
the saved flow file, any file the sidecar wrote), while the decision is still traced.
The same calls without no_log do leave the canary in the payloads table, which proves
the search finds what is there. The app's own API key is in none of these files."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from tests.e2e.conftest import Sidecar, sdk

APP_KEY = "sk-app-own-key-1234567890"


def _policy(no_log: bool) -> str:
    return json.dumps({"rules": [["eq", "region", "eu"]], "no_log": no_log})


def _calls(side: Sidecar, fake, no_log: bool) -> list[dict[str, str]]:
    """One plain and one streaming call, each with its own request and response canaries."""
    client = sdk(side)
    out = []
    for stream in (False, True):
        tag = secrets.token_hex(8)
        req_canary, resp_canary = f"CANARY-REQ-{tag}", f"CANARY-RESP-{tag}"
        # chunks=1: the response canary reaches the wire in one piece, so a stored copy
        # would be found whole (the control below depends on it).
        fake.set_script("mistral", [{"content": f"answer {resp_canary}", "chunks": 1}])
        messages = [{"role": "user", "content": f"please keep this secret: {req_canary}"}]
        headers = {"X-Route-Policy": _policy(no_log)}
        if stream:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=messages, stream=True, extra_headers=headers)
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        else:
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=messages, extra_headers=headers)
            text = raw.parse().choices[0].message.content or ""
        assert resp_canary in text  # the app got its answer either way
        assert raw.headers["x-route-provider"] == "mistral"
        out.append({"trace_id": raw.headers["x-route-trace-id"],
                    "fingerprint": raw.headers["x-route-fingerprint"],
                    "request": req_canary, "response": resp_canary, "stream": str(stream)})
    return out


def _files(side: Sidecar, flows: Path, workdir: Path) -> dict[str, bytes]:
    """Everything the sidecar may have left a payload in, as raw bytes."""
    files = {"db": side.traces.read_bytes(), "log": side.log().encode(), "flows": flows.read_bytes()}
    for suffix in ("-wal", "-shm", "-journal"):
        extra = side.traces.with_name(side.traces.name + suffix)
        if extra.exists():
            files[suffix] = extra.read_bytes()
    for p in sorted(workdir.rglob("*")):  # and any other file in the sidecar's directory
        if p.is_file():
            files.setdefault(str(p.relative_to(workdir)), p.read_bytes())
    return files


def _run(sidecar, fake, tmp_path: Path, no_log: bool) -> tuple[Sidecar, list[dict[str, str]], dict[str, bytes]]:
    flows = tmp_path / "flows.mitm"
    side = sidecar("--save", str(flows))
    calls = _calls(side, fake, no_log)
    assert side.stop() == 0  # SIGTERM: mitmproxy's `done` flushes the trace writer
    assert flows.exists() and side.traces.exists()
    assert fake.requests("mistral") and len(fake.requests("mistral")) == 2
    return side, calls, _files(side, flows, tmp_path)


def _where(files: dict[str, bytes], needle: str) -> list[str]:
    return [name for name, blob in files.items() if needle.encode() in blob]


def test_no_log_leaves_no_payload_anywhere(sidecar, fake, tmp_path):
    side, calls, files = _run(sidecar, fake, tmp_path, no_log=True)
    assert {"db", "log", "flows"} <= files.keys()
    assert b"Addon error" not in files["log"]
    for call in calls:  # the routed flows were saved (their metadata names the trace)
        assert call["trace_id"].encode() in files["flows"]
    for call in calls:
        for which in ("request", "response"):
            assert _where(files, call[which]) == [], f"{which} canary of stream={call['stream']}"
        rows = side.trace_rows("SELECT fingerprint, chosen_entry, no_log, stream, outcome FROM decisions "
                               "WHERE trace_id = ?", call["trace_id"])
        assert rows == [(call["fingerprint"], "mistral/mistral-small-3", 1,
                         int(call["stream"] == "True"), "ok")]
        assert side.trace_rows("SELECT count(*) FROM payloads WHERE trace_id = ?", call["trace_id"]) == [(0,)]
        assert side.trace_rows("SELECT count(*) FROM candidates WHERE trace_id = ?",
                               call["trace_id"])[0][0] > 1
    assert _where(files, APP_KEY) == []


def test_control_without_no_log_keeps_the_payload(sidecar, fake, tmp_path):
    side, calls, files = _run(sidecar, fake, tmp_path, no_log=False)
    for call in calls:
        [(request, response)] = side.trace_rows(
            "SELECT request, response FROM payloads WHERE trace_id = ?", call["trace_id"])
        assert call["request"] in request and call["response"] in response
        # the raw-bytes search finds it too (in the DB or its WAL, wherever SQLite put it)
        assert {"db", "-wal"} & set(_where(files, call["request"]))
    assert b"Addon error" not in files["log"]
    plain = next(c for c in calls if c["stream"] == "False")
    assert "flows" in _where(files, plain["request"])  # and in a saved flow, when allowed
    assert _where(files, APP_KEY) == []


@pytest.mark.parametrize("no_log", [True, False])
def test_canary_search_sees_the_fake_received_it(fake, shared_sidecar, no_log):
    # The canary did travel: the provider got it, so its absence on disk is routecar's doing.
    side = shared_sidecar()   # both cases: calls that succeed, nothing read from its files
    calls = _calls(side, fake, no_log)
    got = json.dumps(fake.requests("mistral"))
    assert all(c["request"] in got for c in calls)
    assert APP_KEY not in got


def test_no_log_from_the_tenant_alone(sidecar, fake, tmp_path):
    # umbrella-health's rules set no_log; the app sends only its tenant header, no policy.
    tenants = Path(__file__).resolve().parents[2] / "policies" / "tenants.yaml"
    flows = tmp_path / "flows.mitm"
    side = sidecar("--tenants", str(tenants), "--save", str(flows))
    canary = f"CANARY-TENANT-{secrets.token_hex(8)}"
    raw = sdk(side).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": canary}],
        extra_headers={"X-Tenant-Id": "umbrella-health"})
    trace_id = raw.headers["x-route-trace-id"]
    assert side.stop() == 0
    files = _files(side, flows, tmp_path)
    assert canary in json.dumps(fake.requests(raw.headers["x-route-provider"]))  # it did travel
    assert _where(files, canary) == []
    assert side.trace_rows("SELECT tenant, no_log FROM decisions WHERE trace_id = ?", trace_id) == [
        ("umbrella-health", 1)]
    assert side.trace_rows("SELECT count(*) FROM payloads WHERE trace_id = ?", trace_id) == [(0,)]
