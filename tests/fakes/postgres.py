"""A throwaway PostgreSQL server on loopback, for tests and benchmarks.

    server = PgServer.find()          # None when the server binaries are absent
    server.start()                    # initdb (once) + pg_ctl start, waits until it accepts
    server.url("tenants")             # postgresql://postgres@127.0.0.1:PORT/postgres?table=tenants
    server.stop(); server.start()     # an outage and a recovery, same port, same data
    server.destroy()                  # stop and delete the data directory

initdb refuses to run as root: as root, every server command runs as the
`postgres` user (`runuser -u postgres --`) in a temporary directory owned by
it; as any other user, they run as that user. The server listens on
127.0.0.1 only, on a free port, with its unix socket inside the temporary
directory, and trusts local connections (a test database, never a real one).
Kept free of pytest so that benchmark scripts can use it as well.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PG_BIN_DIRS = ("/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/17/bin")
PG_USER = "postgres"


class PgNotReady(RuntimeError):
    """initdb or pg_ctl failed, or the server did not accept connections in time."""


def find_bin_dir() -> Path | None:
    env = os.environ.get("ROUTECAR_PG_BIN")
    for d in ([env] if env else []) + list(PG_BIN_DIRS):
        if d and (Path(d) / "initdb").is_file() and (Path(d) / "pg_ctl").is_file():
            return Path(d)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    bin_dir: Path
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="routecar-pg-")))
    port: int = field(default_factory=free_port)
    running: bool = False

    @classmethod
    def find(cls) -> PgServer | None:
        """A server using the installed binaries, or None when there are none (or, as root,
        no `postgres` user to run them as)."""
        bin_dir = find_bin_dir()
        if bin_dir is None:
            return None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(PG_USER)
            except KeyError:
                return None
        return cls(bin_dir)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def url(self, table: str = "tenants", *, user: str = "postgres", db: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{db}?table={table}"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str, timeout: float = 120) -> None:
        cmd = [str(self.bin_dir / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", PG_USER, "--", *cmd]
        # cwd: the postgres user may not be allowed into the caller's working directory.
        done = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            log = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
            raise PgNotReady(f"{' '.join(argv[:2])} failed ({done.returncode}): "
                             f"{done.stderr.strip() or done.stdout.strip()}\n{log}")

    def _init(self) -> None:
        if os.geteuid() == 0:
            pg = pwd.getpwnam(PG_USER)
            os.chown(self.root, pg.pw_uid, pg.pw_gid)
        os.chmod(self.root, 0o700)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--no-sync", "--locale=C")

    def start(self, timeout_s: float = 60.0) -> PgServer:
        if self.running:
            return self
        if not (self.data / "PG_VERSION").exists():
            self._init()
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=50")
        # -w: pg_ctl itself polls until the server accepts connections (bounded by -t).
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_file), "-o", opts,
                  "-w", "-t", str(int(timeout_s)), "start", timeout=timeout_s + 10)
        self.running = True
        self._wait_accepting(timeout_s)
        return self

    def _wait_accepting(self, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        for _ in range(10_000):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > end:
                    break
                time.sleep(0.05)  # polling a condition with a deadline
        raise PgNotReady(f"PostgreSQL did not accept connections on port {self.port} in {timeout_s}s")

    def stop(self, timeout_s: float = 60.0) -> None:
        if not self.running:
            return
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", str(int(timeout_s)), "stop",
                  timeout=timeout_s + 10)
        self.running = False

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
