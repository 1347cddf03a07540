"""Test helper: a throwaway PostgreSQL 15 server for the tuning-database tests.

One server per test session, started on first use (``initdb`` into a temporary folder,
``pg_ctl start`` listening on 127.0.0.1 at a free port and on a unix socket in that
folder, trust authentication for the user ``tilefx``), stopped with ``pg_ctl stop -m
immediate`` and removed when the session ends. Each test gets a new database
(``CREATE DATABASE t_<n>``). Durability is off (``fsync``, ``synchronous_commit``): a test
server loses nothing it needs to keep, and starts and commits faster.

initdb refuses to run as root: as root the server's binaries run as the ``postgres`` user
(else ``nobody``) through ``runuser``, owning the folder. Without the binaries (or psycopg)
the tests that need a server are skipped with the reason, unless ``CI`` is set: there they
fail, because CI must test the server path.

Fixtures (import them into a test module): ``postgres_url`` (a fresh database's URL) and
``tuning_db_url`` (parametrized over both backends: a factory of fresh database URLs).
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pytest

def _newest_pg_bin() -> Path:
    """Debian puts each major version in /usr/lib/postgresql/<major>/bin; take the newest
    (15 on these machines, whatever ``apt-get install postgresql`` brought elsewhere)."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    found.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return found[-1] if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = Path(os.environ.get("TILEFX_TEST_PG_BIN") or _newest_pg_bin())
USER = "tilefx"


class Server:
    """A running throwaway server (``url(db)`` is a SQLAlchemy URL of one of its databases)."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="tilefx-pg-"))
        self.data = self.folder / "data"
        self.port = 0
        self.prefix = _unprivileged_prefix(self.folder)
        self._names = itertools.count()
        self._start()

    def _run(self, *args: str) -> None:
        out = subprocess.run([*self.prefix, *args], capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}):\n{out.stdout}{out.stderr}")

    def _start(self) -> None:
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", USER, "--auth=trust", "-N",
                  "-E", "UTF8", "--locale=C")
        for _ in range(5):  # a free port may be taken between finding and binding it
            self.port = _free_port()
            options = (f"-k {self.folder} -h 127.0.0.1 -p {self.port} -c fsync=off "
                       "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300")
            try:
                self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options,
                          "-l", str(self.folder / "log"), "-w", "-t", "60", "start")
                return
            except RuntimeError:
                log = self.folder / "log"
                if "could not bind" not in (log.read_text() if log.exists() else ""):
                    raise
        raise RuntimeError("no free port for the test PostgreSQL server")

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        secret = f":{password}" if password else ""
        return f"postgresql+psycopg://{USER}{secret}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """The URL of a new, empty database on this server."""
        import psycopg

        name = f"t_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        subprocess.run([*self.prefix, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "stop",
                        "-m", "immediate"], capture_output=True, timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unprivileged_prefix(folder: Path) -> list[str]:
    """The command prefix that runs the server's binaries (as a plain user when we are root)."""
    if os.geteuid() != 0:
        return []
    import pwd

    for name in ("postgres", "nobody"):
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            continue
        os.chown(folder, user.pw_uid, user.pw_gid)
        if shutil.which("runuser"):
            return ["runuser", "-u", name, "--"]
        return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
    raise RuntimeError("running as root and there is no 'postgres' or 'nobody' user to run "
                       "PostgreSQL as (initdb refuses root)")


_SERVER: list[Server] = []


def server(config: pytest.Config) -> Server:
    """The session's server, started on first use (or the test skipped, or failed on CI)."""
    if _SERVER:
        return _SERVER[0]
    missing = None
    if not (PG_BIN / "initdb").exists():
        missing = f"PostgreSQL server binaries not found in {PG_BIN} (apt install postgresql-15)"
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            missing = "psycopg is not installed (pip install 'tilefx[postgres]')"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must test the PostgreSQL tuning database: {missing}")
        pytest.skip(missing)
    started = Server()
    _SERVER.append(started)
    config.add_cleanup(_stop)
    return started


def _stop() -> None:
    while _SERVER:
        _SERVER.pop().stop()


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a new database on the session's server."""
    url = server(request.config).new_database()
    yield url
    from tilefx.storage.db_connect import dispose_engines

    dispose_engines()  # give the pooled connections back: a session opens many databases


@pytest.fixture(params=["sqlite", "postgresql"])
def tuning_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """``make(name)``: a new database of this backend (a file under tmp_path, or a server database)."""
    if request.param == "sqlite":
        yield lambda name: str(tmp_path / name)
        return
    pg = server(request.config)
    made: dict[str, str] = {}
    yield lambda name: made.setdefault(name, pg.new_database())
    from tilefx.storage.db_connect import dispose_engines

    dispose_engines()
