"""The README's main command works: the demo runs end to end, removes what it made except
its trace DB, and the commands it prints to look at the traces again work as printed."""

from __future__ import annotations

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
    for tenant in ("acme-free", "globex-enterprise", "initech-eu", "umbrella-health", "stark-vip", "wayne-mixed"):
        assert tenant in text
    assert "gemini-3.5-pro @ google" in text          # the VIP's first choice failed, the second answered
    assert "400 no_candidate" in text                 # a header cannot loosen its tenant's policy
    assert "replay: same decision" in text
    assert "demo finished" in text
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
