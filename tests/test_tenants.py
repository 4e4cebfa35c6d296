"""Tenant table sources (YAML, CSV, SQLite), hot reload and identification."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from routecar.errors import ConfigError, TenantConflict
from routecar.tenants.identify import DEFAULT_ORDER, Identification, identify, validate_order
from routecar.tenants.table import Tenant, TenantSource, TenantTable, hash_api_key, load_tenants

POLICIES = Path(__file__).resolve().parents[1] / "policies"
ACME_KEY_HASH = hashlib.sha256(b"demo-key-acme").hexdigest()
HASH_B = "b" * 64


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def attrs(t: Tenant | None) -> dict[str, Any]:
    assert t is not None
    return dict(t.attributes)


# --- YAML ---------------------------------------------------------------------

def test_shipped_yaml() -> None:
    table = load_tenants(POLICIES / "tenants.yaml")
    assert len(table) == 6
    acme = table.by_api_key("demo-key-acme")
    assert acme is not None and acme.id == "acme-free"
    assert table.by_key_hash(ACME_KEY_HASH.upper()) is acme
    assert table.by_api_key("demo-key-other") is None
    assert attrs(table.get("wayne-mixed")) == {
        "plan": "enterprise", "region": "eu", "approved_providers": ("mistral", "scaleway", "azure"),
        "quality_floor": 0.5}
    assert "api_key_sha256" not in attrs(acme)
    assert table.version.startswith("ten_") and len(table.version) == 16


def test_version_is_a_content_hash(tmp_path: Path) -> None:
    a = load_tenants(write(tmp_path / "a.yaml", "tenants:\n- {id: x, plan: free}\n- {id: y}\n"))
    b = load_tenants(write(tmp_path / "b.yaml", "tenants:\n- {id: y}\n- {plan: free, id: x}\n"))
    c = load_tenants(write(tmp_path / "c.yaml", "tenants:\n- {id: x, plan: pro}\n- {id: y}\n"))
    assert a.version == b.version != c.version


YAML_ERRORS = [
    ("tenants:\n- {plan: free}\n", "{f}: tenant #1: missing id"),
    ("tenants:\n- {id: a}\n- {id: b}\n- {id: a}\n",
     "{f}: tenant #3 (tenant 'a'): duplicate id, first defined at tenant #1"),
    ("tenants:\n- {id: a, api_key_sha256: [abc]}\n",
     "{f}: tenant #1 (tenant 'a'): bad api_key_sha256 'abc': expected 64 hex digits (sha256 of the key)"),
    ("tenants:\n- {id: a, limits: {rpm: 10}}\n",
     "{f}: tenant #1 (tenant 'a'): attribute 'limits': must be a string, number, boolean or a list of those, "
     "got {{\"rpm\": 10}}"),
    ("tenants:\n- just-a-name\n", "{f}: tenant #1: expected a mapping, got str"),
    ("- {id: a}\n", "{f}: expected a mapping with a 'tenants:' list"),
    (f"tenants:\n- {{id: a, api_key_sha256: [{HASH_B}]}}\n- {{id: b, api_key_sha256: [{HASH_B}]}}\n",
     "{f}: tenant 'b': api_key_sha256 bbbbbbbbbbbb… is already used by tenant 'a'"),
]


@pytest.mark.parametrize(("text", "message"), YAML_ERRORS)
def test_yaml_errors(tmp_path: Path, text: str, message: str) -> None:
    f = write(tmp_path / "tenants.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_tenants(f)
    assert str(info.value) == message.format(f=f)


def test_unknown_source_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tenants\.txt: unknown tenant source"):
        load_tenants(tmp_path / "tenants.txt")
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read: No such file or directory"):
        load_tenants(tmp_path / "nope.yaml")


# --- CSV ------------------------------------------------------------------------

CSV = f"""id,plan,approved_providers,quality_floor,dpa,seats,api_key_sha256,note
acme,free,,,,,{ACME_KEY_HASH},
globex,enterprise,openai|anthropic,0.55,true,120,,"a, quoted note"
initech,pro,"[""mistral""]",,false,,{HASH_B}|{"c" * 64},
"""


def test_csv(tmp_path: Path) -> None:
    table = load_tenants(write(tmp_path / "t.csv", CSV))
    assert table.ids() == ("acme", "globex", "initech")
    assert attrs(table.get("acme")) == {"plan": "free"}  # empty cells are absent attributes
    assert attrs(table.get("globex")) == {"plan": "enterprise", "approved_providers": ("openai", "anthropic"),
                                          "quality_floor": 0.55, "dpa": True, "seats": 120,
                                          "note": "a, quoted note"}
    assert attrs(table.get("initech")) == {"plan": "pro", "approved_providers": ("mistral",), "dpa": False}
    assert table.by_api_key("demo-key-acme") is table.get("acme")
    assert table.by_key_hash("c" * 64) is table.get("initech")


CSV_ERRORS = [
    ("plan\nfree\n", "{f}: no 'id' column (columns: plan)"),
    ("id,plan\na,free\n,pro\n", "{f}: row 3: missing id"),
    ("id,plan\na,free\nb,pro\na,vip\n", "{f}: row 4 (tenant 'a'): duplicate id, first defined at row 2"),
    ("id,api_key_sha256\na,xyz\n",
     "{f}: row 2 (tenant 'a'): bad api_key_sha256 'xyz': expected 64 hex digits (sha256 of the key)"),
    ("id,plan\na,free,extra\n", "{f}: row 2: more cells than columns"),
    ("id,tags\na,[oops\n", "{f}: row 2 (tenant 'a'): attribute 'tags': Expecting value: line 1 column 2 (char 1)"),
]


@pytest.mark.parametrize(("text", "message"), CSV_ERRORS)
def test_csv_errors(tmp_path: Path, text: str, message: str) -> None:
    f = write(tmp_path / "t.csv", text)
    with pytest.raises(ConfigError) as info:
        load_tenants(f)
    assert str(info.value) == message.format(f=f)


# --- SQLite -------------------------------------------------------------------------

def make_db(path: Path, rows: list[dict[str, Any]], table: str = "tenants") -> str:
    sqlite_utils.Database(path)[table].insert_all(rows, alter=True)
    return f"sqlite://{path}?table={table}"


def test_sqlite(tmp_path: Path) -> None:
    url = make_db(tmp_path / "t.db", [
        {"id": "acme", "plan": "free", "quality_floor": None, "api_key_sha256": ACME_KEY_HASH, "dpa": "true"},
        {"id": "globex", "plan": "enterprise", "quality_floor": 0.55, "api_key_sha256": None,
         "dpa": "false", "approved_providers": "openai|azure"},
    ])
    assert url.startswith("sqlite:///")
    table = load_tenants(url)
    assert attrs(table.get("acme")) == {"plan": "free", "dpa": True}
    assert attrs(table.get("globex")) == {"plan": "enterprise", "quality_floor": 0.55, "dpa": False,
                                          "approved_providers": ("openai", "azure")}
    assert table.by_api_key("demo-key-acme") is table.get("acme")


def test_sqlite_errors(tmp_path: Path) -> None:
    url = make_db(tmp_path / "t.db", [{"id": "a"}, {"id": "a"}])
    with pytest.raises(ConfigError) as info:
        load_tenants(url)
    assert str(info.value) == f"{url}: rowid 2 (tenant 'a'): duplicate id, first defined at rowid 1"
    with pytest.raises(ConfigError) as info:
        load_tenants(f"sqlite://{tmp_path / 't.db'}?table=customers")
    assert str(info.value) == f"sqlite://{tmp_path / 't.db'}?table=customers: no table 'customers'"
    missing = f"sqlite://{tmp_path / 'missing.db'}"
    with pytest.raises(ConfigError, match="cannot read: No such file or directory"):
        load_tenants(missing)
    assert not (tmp_path / "missing.db").exists()  # read-only: never creates the file


# --- hot reload ---------------------------------------------------------------------------

def bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_reload_after_ttl_and_keep_last_good(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    clock = FakeClock()
    source = TenantSource(write(path, "tenants:\n- {id: a, plan: free}\n"), clock=clock, ttl_s=2.0)
    first = source.current()
    assert first.ids() == ("a",) and source.last_error is None

    write(path, "tenants:\n- {id: a, plan: pro}\n- {id: b}\n")
    bump_mtime(path)
    clock.now += 1.0
    assert source.current() is first  # within the TTL: not even a stat
    clock.now += 1.5
    second = source.current()
    assert second.ids() == ("a", "b") and attrs(second.get("a")) == {"plan": "pro"}

    write(path, "tenants:\n- {id: a}\n- {id: a}\n")  # broken: duplicate id
    bump_mtime(path)
    clock.now += 3
    assert source.current() is second
    assert source.last_error == (f"{path}: tenant #2 (tenant 'a'): duplicate id, first defined at tenant #1; "
                                 f"keeping tenant table {second.version}")

    path.unlink()
    clock.now += 3
    assert source.current() is second
    assert source.last_error is not None and "No such file or directory" in source.last_error

    write(path, "tenants:\n- {id: c}\n")
    clock.now += 3
    assert source.current().ids() == ("c",)
    assert source.last_error is None


def test_unchanged_file_is_not_reparsed(tmp_path: Path) -> None:
    clock = FakeClock()
    source = TenantSource(write(tmp_path / "t.yaml", "tenants:\n- {id: a}\n"), clock=clock)
    first = source.current()
    clock.now += 10
    assert source.current() is first and source.reloads == 0


def test_first_load_failure_raises(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing id"):
        TenantSource(write(tmp_path / "t.yaml", "tenants:\n- {plan: free}\n"), clock=FakeClock())


def test_sqlite_reload_on_insert_and_update(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    url = make_db(path, [{"id": "a", "plan": "free"}])
    clock = FakeClock()
    source = TenantSource(url, clock=clock, ttl_s=2.0)
    assert source.current().ids() == ("a",)
    db = sqlite_utils.Database(path)
    db["tenants"].insert({"id": "b", "plan": "pro"})
    clock.now += 2
    assert source.current().ids() == ("a", "b")
    db["tenants"].update(1, {"plan": "vip"})
    bump_mtime(path)  # an in-place update is seen through the file's mtime
    clock.now += 2
    assert attrs(source.current().get("a")) == {"plan": "vip"}


# --- identification -----------------------------------------------------------------------

TABLE = TenantTable([Tenant("acme", {}, (ACME_KEY_HASH,)), Tenant("globex", {}), Tenant("initech", {})])


def ident(order: tuple[str, ...] = DEFAULT_ORDER, *, header: str | None = None, key: str | None = None,
          proxy_user: str | None = None, body_user: str | None = None,
          keys: tuple[str, ...] = ()) -> Identification | None:
    headers = {"x-tenant-id": header} if header is not None else {}
    return identify(order, headers=headers, proxy_user=proxy_user, body_user=body_user,
                    api_keys=(key,) + keys if key else keys, table=TABLE)


IDENT_CASES = [
    ({"header": "globex"}, ("globex", "globex", "header")),
    ({"key": "demo-key-acme"}, ("acme", "acme", "api_key")),
    ({"proxy_user": "initech"}, ("initech", "initech", "proxy_auth")),
    ({"body_user": "globex"}, ("globex", "globex", "body_user")),
    ({"header": " globex "}, ("globex", "globex", "header")),
    # methods that agree: the first in the order is the one reported
    ({"header": "acme", "key": "demo-key-acme", "proxy_user": "acme"}, ("acme", "acme", "header")),
    ({"key": "demo-key-acme", "body_user": "acme"}, ("acme", "acme", "api_key")),
    ({"proxy_user": "initech", "body_user": "initech"}, ("initech", "initech", "proxy_auth")),
    # an unknown API key is not a claim (it may be a real provider key): the next method decides
    ({"key": "sk-real-openai-key", "proxy_user": "initech"}, ("initech", "initech", "proxy_auth")),
    ({"keys": ("sk-real-openai-key", "demo-key-acme")}, ("acme", "acme", "api_key")),
    # an unknown id is a claim: the caller answers 403 unknown_tenant (or uses a default tenant)
    ({"header": "hooli"}, (None, "hooli", "header")),
    ({"body_user": "end-user-42"}, (None, "end-user-42", "body_user")),
    ({"header": "", "proxy_user": "globex"}, ("globex", "globex", "proxy_auth")),
]


@pytest.mark.parametrize(("kwargs", "expected"), IDENT_CASES)
def test_identify(kwargs: dict[str, Any], expected: tuple[str | None, str | None, str]) -> None:
    result = ident(**kwargs)
    assert result is not None
    assert (result.tenant.id if result.tenant else None, result.claimed_id, result.method) == expected


def test_identify_custom_order_and_nothing() -> None:
    result = ident(("body_user", "header"), header="initech", body_user="initech")
    assert result == Identification(TABLE.get("initech"), "initech", "body_user")
    # methods outside the order are not asked, so they cannot conflict either
    assert ident(("header",), body_user="initech", key="demo-key-acme") is None
    assert ident(("header",), header="globex", body_user="initech") == Identification(
        TABLE.get("globex"), "globex", "header")
    assert ident() is None


@pytest.mark.parametrize(("kwargs", "said"), [
    # the identity-swap attempts: a tenant's key plus another tenant's header / proxy user
    ({"header": "globex", "key": "demo-key-acme"}, "header says 'globex', api_key says a tenant's key"),
    ({"key": "demo-key-acme", "proxy_user": "initech"}, "api_key says a tenant's key, proxy_auth says 'initech'"),
    ({"header": "globex", "proxy_user": "initech"}, "header says 'globex', proxy_auth says 'initech'"),
    ({"header": "globex", "key": "demo-key-acme", "proxy_user": "initech"},
     "header says 'globex', api_key says a tenant's key, proxy_auth says 'initech'"),
    ({"proxy_user": "initech", "body_user": "globex"}, "proxy_auth says 'initech', body_user says 'globex'"),
    # an unknown id still disagrees with a known one (no falling back to either)
    ({"header": "hooli", "key": "demo-key-acme"}, "header says 'hooli', api_key says a tenant's key"),
    # ids are compared as written (after trimming): another case is another id
    ({"header": "ACME", "key": "demo-key-acme"}, "header says 'ACME', api_key says a tenant's key"),
])
def test_identification_methods_that_disagree_are_a_conflict(kwargs: dict[str, Any], said: str) -> None:
    with pytest.raises(TenantConflict) as info:
        ident(**kwargs)
    e = info.value
    assert (e.status, e.code) == (403, "tenant_conflict")
    assert e.message == f"tenant identification methods disagree: {said}; send one identity"
    assert "demo-key-acme" not in e.message and "'acme'" not in e.message  # the key's tenant is not revealed


def test_two_keys_of_two_tenants_conflict() -> None:
    table = TenantTable([Tenant("acme", {}, (ACME_KEY_HASH,)), Tenant("other", {}, (hash_api_key("k-other-1"),))])
    with pytest.raises(TenantConflict):
        identify(DEFAULT_ORDER, headers={}, proxy_user=None, body_user=None,
                 api_keys=("demo-key-acme", "k-other-1"), table=table)


def test_identification_order_is_validated() -> None:
    assert validate_order(["api_key", "header"]) == ("api_key", "header")
    with pytest.raises(ConfigError) as info:
        validate_order(["header", "cookie"])
    assert str(info.value) == ("unknown tenant identification method(s) 'cookie'; "
                               "expected some of: header, api_key, proxy_auth, body_user")
    with pytest.raises(ConfigError, match="repeats a method"):
        validate_order(["header", "header"])


def test_hash_api_key_is_sha256_hex() -> None:
    assert hash_api_key("demo-key-acme") == ACME_KEY_HASH
    # a header that was not UTF-8 (decoded with surrogateescape) hashes as its bytes, never raises
    assert hash_api_key(b"k\xff".decode("utf-8", "surrogateescape")) == hashlib.sha256(b"k\xff").hexdigest()


def test_tenant_is_frozen_and_hashable() -> None:
    t = Tenant("x", {"providers": ["openai"]})
    assert t.attributes["providers"] == ("openai",)
    with pytest.raises(TypeError):
        t.attributes["plan"] = "free"  # type: ignore[index]
    assert {t: 1}[Tenant("x", {"providers": ("openai",)})] == 1
