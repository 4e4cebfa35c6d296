"""Tenant table and hot reload.

A tenant is an id, a mapping of attributes and the sha256 hashes of the API
keys its apps use. The table comes from a YAML file, a CSV file or a SQLite
table (see docs/tenants.md); which one is chosen by the source string:

    policies/tenants.yaml                       YAML (also .yml, .json)
    tenants.csv                                 CSV
    sqlite:///var/lib/routecar/t.db?table=tenants   SQLite (sqlite://rel/path.db for a relative path)

Turning a tenant into a policy lives in `.rules`; finding the tenant of a
request in `.identify`.
Errors: every bad row is a `ConfigError` naming the file and the row/tenant.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from ..errors import ConfigError
from ..reloading import ReloadingSource

__all__ = ["Tenant", "TenantSource", "TenantTable", "hash_api_key", "load_tenants"]


def hash_api_key(raw_key: str) -> str:
    """The lower-case hex sha256 of an API key, the only form routecar keeps.

    (surrogateescape: a header that is not UTF-8 hashes as the bytes it was, never raises.)"""
    return hashlib.sha256(raw_key.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class Tenant:
    """A tenant; attributes are frozen (lists become tuples) so a Tenant can be shared and hashed."""

    id: str
    attributes: Mapping[str, Any]
    key_sha256: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        frozen = {k: tuple(v) if isinstance(v, list) else v for k, v in self.attributes.items()}
        object.__setattr__(self, "attributes", MappingProxyType(frozen))
        object.__setattr__(self, "key_sha256", tuple(self.key_sha256))

    def __hash__(self) -> int:
        return hash((self.id, self.key_sha256))


class TenantTable:
    """An immutable set of tenants, indexed by id and by API-key hash."""

    def __init__(self, tenants: Sequence[Tenant], *, source: str = "<memory>") -> None:
        self.source = source
        self._by_id: dict[str, Tenant] = {}
        self._by_key: dict[str, Tenant] = {}
        for t in tenants:
            if t.id in self._by_id:
                raise ConfigError(f"{source}: duplicate tenant id {t.id!r}", tenant=t.id)
            self._by_id[t.id] = t
            for h in t.key_sha256:
                other = self._by_key.get(h)
                if other is not None:
                    raise ConfigError(f"{source}: tenant {t.id!r}: api_key_sha256 {h[:12]}… "
                                      f"is already used by tenant {other.id!r}", tenant=t.id)
                self._by_key[h] = t
        canon = [{"id": t.id, "attributes": _thaw(t.attributes), "keys": sorted(t.key_sha256)}
                 for t in sorted(self._by_id.values(), key=lambda t: t.id)]
        digest = hashlib.sha256(json.dumps(canon, sort_keys=True, separators=(",", ":")).encode())
        self.version = "ten_" + digest.hexdigest()[:12]

    def get(self, tenant_id: str) -> Tenant | None:
        return self._by_id.get(tenant_id)

    def by_key_hash(self, hex_digest: str) -> Tenant | None:
        return self._by_key.get(hex_digest.strip().lower())

    def by_api_key(self, raw_key: str) -> Tenant | None:
        return self._by_key.get(hash_api_key(raw_key))

    def ids(self) -> tuple[str, ...]:
        return tuple(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Tenant]:
        return iter(self._by_id.values())

    def __contains__(self, tenant_id: object) -> bool:
        return tenant_id in self._by_id

    def __repr__(self) -> str:
        return f"TenantTable({self.source!r}, {len(self)} tenants, version={self.version})"


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


# --- reading the three source formats -------------------------------------

KEY_FIELD = "api_key_sha256"
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_INT = re.compile(r"[+-]?\d+\Z")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?\Z")
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_SCALARS = (str, int, float, bool)


@dataclass(frozen=True)
class _Spec:
    kind: str  # "yaml" | "csv" | "sqlite"
    path: Path
    label: str
    table: str = "tenants"


def parse_source(source: str) -> _Spec:
    if source.startswith("sqlite://"):
        path, _, query = source.removeprefix("sqlite://").partition("?")
        table = (urllib.parse.parse_qs(query).get("table") or ["tenants"])[-1]
        if not path:
            raise ConfigError(f"{source}: no database file (expected sqlite:///path/to/file.db?table=tenants)")
        if not _TABLE_NAME.match(table):
            raise ConfigError(f"{source}: bad table name {table!r}")
        return _Spec("sqlite", Path(path), source, table)
    suffix = Path(source).suffix.lower()
    if suffix in (".yaml", ".yml", ".json"):
        return _Spec("yaml", Path(source), source)
    if suffix == ".csv":
        return _Spec("csv", Path(source), source)
    raise ConfigError(f"{source}: unknown tenant source; expected a .yaml/.yml/.json or .csv file "
                      "or a sqlite:///path/to/file.db?table=tenants URL")


def source_signature(spec: _Spec) -> tuple[Any, ...]:
    """Cheap change detector: file identity, plus WAL and row stats for SQLite."""
    def stat(p: Path) -> tuple[int, int, int]:
        st = p.stat()
        return (st.st_ino, st.st_mtime_ns, st.st_size)
    try:
        sig: tuple[Any, ...] = stat(spec.path)
        if spec.kind != "sqlite":
            return sig
        wal = spec.path.with_name(spec.path.name + "-wal")
        sig += stat(wal) if wal.exists() else (None,)
        with _connect_ro(spec) as conn:
            sig += tuple(conn.execute(f"select count(*), max(rowid) from [{spec.table}]").fetchone())
        return sig
    except OSError as e:
        raise ConfigError(f"{spec.label}: cannot read: {e.strerror or e}") from e
    except sqlite3.Error as e:
        raise ConfigError(f"{spec.label}: {e}") from e


def _connect_ro(spec: _Spec, *, any_thread: bool = False) -> sqlite3.Connection:
    if not spec.path.is_file():
        raise FileNotFoundError(2, "No such file or directory", str(spec.path))
    # Read-only URI: never create or lock a database file that is not there.
    return sqlite3.connect(spec.path.resolve().as_uri() + "?mode=ro", uri=True, check_same_thread=not any_thread)


# Each reader yields (where, id, attributes, keys, cells_are_text).
_Raw = tuple[str, Any, dict[str, Any], Any, bool]


def _read_yaml(spec: _Spec) -> Iterator[_Raw]:
    try:
        data = yaml.safe_load(spec.path.read_text("utf-8"))
    except OSError as e:
        raise ConfigError(f"{spec.label}: cannot read: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{spec.label}: not valid YAML: {e}") from e
    items = data.get("tenants") if isinstance(data, Mapping) else None
    if not isinstance(items, list):
        raise ConfigError(f"{spec.label}: expected a mapping with a 'tenants:' list")
    for n, item in enumerate(items, 1):
        if not isinstance(item, Mapping):
            raise ConfigError(f"{spec.label}: tenant #{n}: expected a mapping, got {type(item).__name__}")
        fields = dict(item)
        yield f"tenant #{n}", fields.pop("id", None), fields, fields.pop(KEY_FIELD, None), False


def _read_csv(spec: _Spec) -> Iterator[_Raw]:
    try:
        with spec.path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            if "id" not in columns:
                raise ConfigError(f"{spec.label}: no 'id' column (columns: {', '.join(columns) or 'none'})")
            for row in reader:
                where = f"row {reader.line_num}"
                if None in row:
                    raise ConfigError(f"{spec.label}: {where}: more cells than columns")
                fields = {k: v for k, v in row.items() if k}
                yield where, fields.pop("id"), fields, fields.pop(KEY_FIELD, None), True
    except OSError as e:
        raise ConfigError(f"{spec.label}: cannot read: {e.strerror or e}") from e


def _read_sqlite(spec: _Spec) -> Iterator[_Raw]:
    from sqlite_utils import Database   # ~0.2 s to import (with numpy, when installed): only for SQLite tables

    try:
        with _connect_ro(spec) as conn:
            table = Database(conn)[spec.table]
            if not table.exists():
                raise ConfigError(f"{spec.label}: no table {spec.table!r}")
            if "id" not in table.columns_dict:
                raise ConfigError(f"{spec.label}: table {spec.table!r} has no 'id' column")
            rows = list(table.pks_and_rows_where())
            real_columns = set(table.columns_dict)
    except OSError as e:
        raise ConfigError(f"{spec.label}: cannot read: {e.strerror or e}") from e
    except sqlite3.Error as e:
        raise ConfigError(f"{spec.label}: {e}") from e
    for pk, row in rows:
        fields = {k: v for k, v in row.items() if k in real_columns}  # drop the added `rowid`
        yield f"rowid {pk}", fields.pop("id"), fields, fields.pop(KEY_FIELD, None), True


def parse_cell(text: str) -> Any:
    """A CSV/SQLite text cell: JSON, `a|b|c` list, true/false, number or string."""
    s = text.strip()
    if s[:1] in ("[", "{", '"'):
        return json.loads(s)
    if "|" in s:
        return [_scalar(p.strip()) for p in s.split("|") if p.strip()]
    return _scalar(s)


def _scalar(s: str) -> Any:
    if s.lower() in ("true", "false"):
        return s.lower() == "true"
    if _INT.match(s):
        return int(s)
    if _FLOAT.match(s):
        return float(s)
    return s


def _attribute(value: Any, text: bool, objects: bool = False) -> Any:
    if text and isinstance(value, str):
        value = parse_cell(value)
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, list) and all(isinstance(v, _SCALARS) for v in value):
        return tuple(value)
    if objects and isinstance(value, (list, dict)):
        return tuple(value) if isinstance(value, list) else value
    raise ValueError(f"must be a string, number, boolean or a list of those, got {json.dumps(value)}")


def _keys(value: Any) -> tuple[str, ...]:
    items = value.split("|") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(k, str) for k in items):
        raise ValueError(f"{KEY_FIELD} must be a list of hex strings")
    keys = tuple(k.strip().lower() for k in items if k.strip())
    for k in keys:
        if not _HEX64.match(k):
            raise ValueError(f"bad {KEY_FIELD} {k!r}: expected 64 hex digits (sha256 of the key)")
    return keys


def tenant_from_fields(label: str, where: str, raw_id: Any, fields: Mapping[str, Any], raw_keys: Any, *,
                       text: bool, objects: bool = False) -> Tenant:
    """One record of a source as a Tenant, or a ConfigError naming `label`, `where` and the tenant.

    `text`: cells are text to parse (CSV, SQLite); `objects`: JSON objects and nested
    lists are kept as attribute values (typed database columns such as jsonb).
    """
    if isinstance(raw_id, int) and not isinstance(raw_id, bool):
        raw_id = str(raw_id)
    if not isinstance(raw_id, str) or not raw_id.strip():
        raise ConfigError(f"{label}: {where}: missing id")
    tid = raw_id.strip()
    attributes: dict[str, Any] = {}
    try:
        keys = _keys(raw_keys) if raw_keys is not None else ()
        for name, value in fields.items():
            if value is None or (text and isinstance(value, str) and not value.strip()):
                continue  # an empty cell or null means "attribute absent"
            try:
                attributes[str(name)] = _attribute(value, text, objects)
            except ValueError as e:
                raise ValueError(f"attribute {name!r}: {e}") from None
    except ValueError as e:
        raise ConfigError(f"{label}: {where} (tenant {tid!r}): {e}", tenant=tid) from None
    return Tenant(tid, attributes, keys)


def read_records(spec: _Spec) -> list[Tenant]:
    reader = {"yaml": _read_yaml, "csv": _read_csv, "sqlite": _read_sqlite}[spec.kind]
    tenants: list[Tenant] = []
    first_seen: dict[str, str] = {}
    for where, raw_id, fields, raw_keys, text in reader(spec):
        tenant = tenant_from_fields(spec.label, where, raw_id, fields, raw_keys, text=text)
        if tenant.id in first_seen:
            raise ConfigError(f"{spec.label}: {where} (tenant {tenant.id!r}): duplicate id, first defined at "
                              f"{first_seen[tenant.id]}", tenant=tenant.id)
        first_seen[tenant.id] = where
        tenants.append(tenant)
    return tenants


def load_tenants(source: str | os.PathLike[str]) -> TenantTable:
    """Read a tenant table from a YAML/CSV path or a `sqlite:///file.db?table=t` URL."""
    spec = parse_source(str(source))
    records = read_records(spec)
    return TenantTable(records, source=spec.label)


class TenantSource(ReloadingSource[TenantTable]):
    """The current tenant table, re-read when its file changes.

    The change signature (inode/mtime/size, for SQLite also the WAL file and a
    row count + max rowid) is checked at most every `ttl_s` seconds of the
    injected clock; the rest (keep the last good table, `last_error`, only the
    first load raises) is `ReloadingSource`.
    """

    def __init__(self, source: str | os.PathLike[str], *, clock: Callable[[], float],
                 ttl_s: float = 2.0, background: bool = False) -> None:
        self._spec = parse_source(str(source))
        # Set by the engine: a new table is only put in service if every tenant compiles.
        self.check: Callable[[TenantTable], None] | None = None
        super().__init__(str(source), self._load, clock, ttl_s, url_ttl_s=ttl_s, label=self._spec.label,
                         background=background)

    def _load(self, source: str) -> TenantTable:
        table = load_tenants(source)
        if self.check is not None:
            self.check(table)
        return table

    def stamp(self) -> Any:
        return source_signature(self._spec)

    def kept(self) -> str:
        return f"; keeping tenant table {self._value.version}"
