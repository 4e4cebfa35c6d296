"""Where routecar's shipped data (catalog, providers, tenants, rules, examples) lives.

In a checkout (or an editable install) that is the repository's `policies/`; in
an installed wheel it is package data under `routecar/policies/`.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
POLICIES = _HERE / "policies" if (_HERE / "policies").is_dir() else _HERE.parent / "policies"
