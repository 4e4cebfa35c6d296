"""A built wheel is usable outside a checkout: it carries the shipped policies."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_the_default_policies(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    [wheel] = tmp_path.glob("routecar-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("catalog.yaml", "providers.yaml", "tenants.yaml", "rules.yaml", "examples/eu-only.json"):
        assert f"routecar/policies/{f}" in names
    assert "routecar/mitm/addon.py" in names and "routecar/shipped.py" in names
    assert not any(n.startswith(("tests/", "policies/")) for n in names)
    # Every package under addon/ ships as routecar.<name> (found, not listed in pyproject.toml).
    for init in (ROOT / "addon").rglob("__init__.py"):
        assert f"routecar/{init.relative_to(ROOT / 'addon').as_posix()}" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "routecar = routecar.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
