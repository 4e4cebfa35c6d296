"""The README's main command works: the demo runs end to end, removes what it made except
its trace DB, and the commands it prints to look at the traces again work as printed."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_every_call_and_explains_the_fallback(tmp_path):
    scratch = tmp_path / "tmp"  # the demo's temporary files go here (TMPDIR)
    scratch.mkdir()
    cwd = tmp_path / "somewhere"  # a user's shell, not the checkout
    cwd.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "COLUMNS": "200", "TMPDIR": str(scratch)}
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")], capture_output=True, text=True,
                         timeout=180, cwd=cwd, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    # The "what routecar decided" table (into a pipe: plain columns, two or more spaces apart):
    # per call, the tenant and outcome come from its trace row, not from the call's label.
    section = text.split("what routecar decided", 1)[1].split("4. routecar explain", 1)[0]
    rows = [re.split(r" {2,}", line.strip()) for line in section.splitlines()[2:] if line.strip()]
    table = {r[0]: (r[1], r[3], r[4], r[6], r[7]) for r in rows if len(r) == 8}
    assert table == {
        "acme-free (by API key only)": ("acme-free", "chat -> chat", "openai/gpt-oss-120b @ groq", "1", "ok"),
        "globex-enterprise": ("globex-enterprise", "chat -> chat", "gpt-5.5-nano @ openai", "1", "ok"),
        "initech-eu (streaming)": ("initech-eu", "chat -> chat", "mistral-small-3 @ mistral", "1", "ok"),
        "umbrella-health (no_log)": ("umbrella-health", "chat -> chat", "mistral-small-3 @ mistral", "1", "ok (no payload kept)"),
        # the VIP's first choice failed, the second answered
        "stark-vip (first choice down)": ("stark-vip", "chat -> chat", "gemini-3.5-pro @ google", "2", "ok"),
        "wayne-mixed": ("wayne-mixed", "chat -> chat", "mistral-medium-3 @ mistral", "1", "ok"),
        "header policy: vision, price_out <= 3": ("-", "chat -> chat", "meta-llama/llama-4-maverick @ groq", "1", "ok"),
        # a header cannot loosen its tenant's policy
        # an Anthropic-SDK app and a Responses app, routed per tenant and translated
        "globex-enterprise, Anthropic SDK": ("globex-enterprise", "messages -> chat", "gpt-5.5-nano @ openai", "1",
                                             "ok"),
        "initech-eu, Responses API": ("initech-eu", "responses -> chat", "mistral-small-3 @ mistral", "1", "ok"),
        "initech-eu asking for openai": ("initech-eu", "chat -> -", "400 no_candidate", "-", "no_candidate"),
    }
    assert "tenant=stark-vip" in text and "replay: same decision" in text  # the explained fallback
    assert "demo finished" in text  # (only said when every call answered as expected and was traced)
    assert list(scratch.iterdir()) == []  # everything it made is gone but the trace DB
    db = tmp_path / ".routecar" / "demo-traces.db"
    assert f"The traces are kept in {db}" in text

    # The printed commands work as printed, in the shell the demo ran from, after it ended.
    printed = [shlex.split(line) for line in text.splitlines() if line.startswith("  ") and "--db" in line]
    assert [argv[1] for argv in printed] == ["traces", "explain"]
    assert Path(printed[0][0]).is_absolute()  # `routecar` is not on this PATH: the full path is printed
    for argv in printed:
        again = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd, env=env)
        assert again.returncode == 0, again.stderr
    assert printed[1][2] in again.stdout and "replay: same decision" in again.stdout
