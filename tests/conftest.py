"""Shared fixtures: loopback fake providers and real proxy subprocesses.

- ``fake_fleet`` (session): a ``FakeFleet`` serving ``FAKE_PROVIDERS``.
- ``fake``: the same fleet, with records and scripts cleared around each test.
- ``mitm_confdir`` (session): a mitmproxy confdir whose CA is generated once.
- ``start_proxy(argv, env=None, ready_timeout=20, name="proxy", confdir=None)``:
  start any proxy command that honours ``$ROUTECAR_READY_FILE``; stopped on
  teardown.
- ``postgres`` (session): a PostgreSQL server started on loopback for the tests
  (``tests.fakes.postgres.PgServer``); skipped only when its binaries are absent.
- ``mitmdump_cmd(*extra, scripts=())``: argv for stock mitmdump with the ready
  addon, a free port, ``mitm_confdir`` and lazy upstream connections.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from mitmproxy.certs import CertStore

from tests.fakes import FakeFleet, ProxyProcess, mitmdump_argv
from tests.fakes.postgres import PG_BIN_DIRS, PgServer

FAKE_PROVIDERS = (
    "openai",
    "anthropic",
    "mistral",
    "google",
    "azure",
    "groq",
    "deepseek",
    "scaleway",
)


@pytest.fixture(scope="session")
def fake_fleet() -> Iterator[FakeFleet]:
    fleet = FakeFleet(FAKE_PROVIDERS).start()
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
def fake(fake_fleet: FakeFleet) -> Iterator[FakeFleet]:
    fake_fleet.reset()
    yield fake_fleet
    fake_fleet.reset()


@pytest.fixture(scope="session")
def mitm_confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    confdir = tmp_path_factory.mktemp("mitm-confdir")
    # Same basename and key size mitmproxy uses, so it reuses this CA as is.
    CertStore.from_store(confdir, "mitmproxy", 2048)
    return confdir


StartProxy = Callable[..., ProxyProcess]


@pytest.fixture
def start_proxy(tmp_path: Path, mitm_confdir: Path) -> Iterator[StartProxy]:
    started: list[ProxyProcess] = []

    def start(
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        ready_timeout: float = 20.0,
        name: str | None = None,
        confdir: Path | None = None,
    ) -> ProxyProcess:
        proc = ProxyProcess.start(
            argv,
            tmp_path,
            env=env,
            ready_timeout=ready_timeout,
            confdir=confdir or mitm_confdir,
            name=name or f"proxy{len(started)}",
        )
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        proc.stop()


@pytest.fixture
def mitmdump_cmd(mitm_confdir: Path) -> Callable[..., list[str]]:
    def build(*extra: str, scripts: Sequence[str | Path] = ()) -> list[str]:
        return mitmdump_argv(mitm_confdir, *extra, scripts=scripts)

    return build


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    server = PgServer.find()
    if server is None:
        pytest.skip(f"no PostgreSQL server binaries (initdb, pg_ctl) in {', '.join(PG_BIN_DIRS)} or "
                    "$ROUTECAR_PG_BIN (or, as root, no 'postgres' user to run them as)")
    try:
        yield server.start()
    finally:
        server.destroy()
