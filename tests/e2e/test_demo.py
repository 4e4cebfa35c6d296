"""The README's main command works: the demo runs end to end and cleans up after itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_every_call_and_explains_the_fallback(tmp_path):
    scratch = tmp_path / "tmp"  # the demo's temporary files go here (TMPDIR)
    scratch.mkdir()
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")], capture_output=True, text=True,
                         timeout=180, env={"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
                                           "HOME": str(tmp_path), "COLUMNS": "200", "TMPDIR": str(scratch)})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    for tenant in ("acme-free", "globex-enterprise", "initech-eu", "umbrella-health", "stark-vip", "wayne-mixed"):
        assert tenant in text
    assert "gemini-3.5-pro @ google" in text          # the VIP's first choice failed, the second answered
    assert "400 no_candidate" in text                 # a header cannot loosen its tenant's policy
    assert "replay: same decision" in text
    assert "demo finished" in text
    assert list(scratch.iterdir()) == []  # everything it made is gone
