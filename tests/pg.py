"""PostgreSQL for the tests: a throwaway cluster on loopback, and a fresh database per test.

`ZAPBILLING_TEST_BACKEND=postgres` runs the suite against PostgreSQL. The server to use is
`ZAPBILLING_TEST_PG` (a superuser URL such as postgresql://postgres@127.0.0.1:5432/postgres) or,
when that is unset, a cluster this module makes itself: `initdb` into a temporary folder and
`pg_ctl start` on a free loopback port, stopped and deleted when the tests end. It finds the
binaries on PATH or in Debian's /usr/lib/postgresql/<version>/bin, and fails loudly (never
skips) when there are none or they cannot start. As root, initdb refuses to run, so the cluster
runs as the `postgres` user that Debian's package creates (`runuser`).

Each test gets its own database, copied from a template migrated once (CREATE DATABASE ...
TEMPLATE: ~25 ms), and dropped WITH (FORCE) after the test, its servers' connections included.
The throwaway cluster runs with fsync off: it holds only test data, and a test of what survives
a power cut cannot be made on one machine anyway (the crash tests kill servers, not the OS).
"""
from __future__ import annotations

import asyncio
import atexit
import glob
import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any, Coroutine, TypeVar

import asyncpg

T = TypeVar("T")
TEMPLATE = f"zb_template_{os.getpid()}"  # per test process: several may share one cluster


def backend() -> str:
    value = os.environ.get("ZAPBILLING_TEST_BACKEND", "sqlite")
    if value not in ("sqlite", "postgres"):
        raise RuntimeError(f"ZAPBILLING_TEST_BACKEND must be sqlite or postgres, not {value!r}")
    return value


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    if candidates:
        return candidates[0]
    raise RuntimeError(f"PostgreSQL's {name} was not found (install Debian's postgresql package)")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A PostgreSQL cluster started here, or the one ZAPBILLING_TEST_PG names."""

    FAST = {"fsync": "off", "full_page_writes": "off", "max_connections": "300", "shared_buffers": "64MB"}
    """The test clusters' settings: fsync off (test data only); `settings` overrides them (the
    benchmark's cluster turns fsync and full_page_writes back on)."""

    def __init__(self, url: str = "", settings: dict[str, str] | None = None) -> None:
        self.url = url
        self.settings = {**self.FAST, **(settings or {})}
        self.folder: Path | None = None
        self._as: list[str] = []
        if not self.url:
            self._start()

    @classmethod
    def own(cls, settings: dict[str, str] | None = None) -> "Cluster":
        """A new cluster started here, whatever ZAPBILLING_TEST_PG says: for a test that stops
        or restarts PostgreSQL (or the benchmark, with settings of its own)."""
        return cls(settings=settings)

    def _options(self) -> str:
        return (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                + " ".join(f"-c {k}={v}" for k, v in self.settings.items()))

    def _start(self) -> None:
        initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
        self.folder = Path(tempfile.mkdtemp(prefix="zapbilling-pg-"))
        if os.geteuid() == 0:
            if subprocess.run(["id", "-u", "postgres"], capture_output=True).returncode != 0:
                raise RuntimeError("running as root, and there is no postgres user to run the test cluster as")
            shutil.chown(self.folder, "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        self.port = _free_port()
        data = self.folder / "data"
        self._run([initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"])
        self._run([pg_ctl, "-D", str(data), "-l", str(self.folder / "log"), "-o", self._options(), "-w", "-t", "60", "start"])
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        atexit.register(self.stop)

    def _run(self, argv: list[str]) -> None:
        r = subprocess.run([*self._as, *argv], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            log = ""
            if self.folder is not None and (self.folder / "log").exists():
                log = (self.folder / "log").read_text()[-2000:]
            raise RuntimeError(f"{' '.join(argv[:2])} failed ({r.returncode}): {r.stderr.strip()} {log}")

    @property
    def data(self) -> Path:
        assert self.folder is not None, "not a cluster of ours"
        return self.folder / "data"

    def pg_ctl(self, *args: str) -> None:
        """Run pg_ctl on our cluster (restart it mid-test, say)."""
        self._run([_binary("pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "log"), "-o", self._options(), "-w", "-t", "60", *args])

    def stop(self) -> None:
        if self.folder is None:
            return
        subprocess.run([*self._as, _binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None

    def database_url(self, name: str) -> str:
        base, _, _ = self.url.rpartition("/")
        return f"{base}/{name}"


class Admin:
    """One superuser connection on a thread of its own, usable from sync fixtures whether or
    not the calling thread runs an event loop."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="zapbilling-test-pg", daemon=True).start()
        self._conn: asyncpg.Connection = self.run(asyncpg.connect(cluster.url))
        self._template_ready = False

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=120)

    def execute(self, sql: str) -> None:
        async def go() -> None:
            if self._conn.is_closed():
                self._conn = await asyncpg.connect(self.cluster.url)
            await self._conn.execute(sql)

        self.run(go())

    def _template(self) -> None:
        if self._template_ready:
            return
        from zapbilling.store.postgres.connection import migrate

        self.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
        self.execute(f"CREATE DATABASE {TEMPLATE}")

        async def migrate_template() -> None:
            conn = await asyncpg.connect(self.cluster.database_url(TEMPLATE))
            try:
                await migrate(conn)
            finally:
                await conn.close()

        self.run(migrate_template())
        self._template_ready = True
        atexit.register(self.execute, f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")

    def new_database(self, migrated: bool = True) -> str:
        """A fresh database's URL; `migrated`: copied from the migrated template, else empty."""
        name = f"zb_{uuid.uuid4().hex[:12]}"
        if migrated:
            self._template()
            self.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE} STRATEGY FILE_COPY")
        else:
            self.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.cluster.database_url(name)

    def drop(self, url: str) -> None:
        name = url.rpartition("/")[2]
        self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


_admin: Admin | None = None


def admin() -> Admin:
    """The session's PostgreSQL (started on first use)."""
    global _admin
    if _admin is None:
        _admin = Admin(Cluster(os.environ.get("ZAPBILLING_TEST_PG") or ""))
    return _admin


def dollar_params(sql: str) -> str:
    """SQLite's `?` placeholders as PostgreSQL's `$1, $2, ...` (the tests' queries hold no `?`
    inside string literals)."""
    parts = sql.split("?")
    return "".join(p + (f"${i + 1}" if i < len(parts) - 1 else "") for i, p in enumerate(parts))


class _Rows(list):  # type: ignore[type-arg]
    def fetchall(self) -> list[Any]:
        return list(self)

    def fetchone(self) -> Any:
        return self[0] if self else None


class Connection:
    """The little of sqlite3.Connection the tests' read-only checks use, on PostgreSQL: rows
    answer by index and by column name, as sqlite3.Row does."""

    def __init__(self, url: str):
        self._admin = admin()
        self._conn: asyncpg.Connection = self._admin.run(asyncpg.connect(url))

    def execute(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> _Rows:
        return _Rows(self._admin.run(self._conn.fetch(dollar_params(sql), *params)))

    def close(self) -> None:
        self._admin.run(self._conn.close())

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


def is_url(db: str | Path) -> bool:
    return str(db).startswith(("postgresql://", "postgres://"))


def read_only(db: str | Path) -> Any:
    """A read-only connection to a test's database, whichever backend: sqlite3's on a file,
    Connection on a PostgreSQL URL (rows unpack and index alike)."""
    if is_url(db):
        return Connection(str(db))
    import sqlite3

    return sqlite3.connect(f"file:{db}?mode=ro", uri=True)


def table_names(con: Any) -> list[str]:
    """The tables of a read_only() connection, by name."""
    if isinstance(con, Connection):
        return [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name")]
    return [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]


def column_names(con: Any, table: str) -> set[str]:
    if isinstance(con, Connection):
        return {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns WHERE table_name = ?", (table,))}
    return {r[1] for r in con.execute(f"PRAGMA table_info({table})")}


def corrupt(url: str, statements: tuple[str, ...], params: tuple[Any, ...] = ()) -> None:
    """Run `statements` on a test's database as a corruption would leave it: with the CHECK and
    UNIQUE constraints and unique indexes dropped first (the checker must not rely on them)
    and foreign keys not enforced (session_replication_role = replica)."""
    async def go() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("SET session_replication_role = replica")
            for table, name in await conn.fetch(
                "SELECT conrelid::regclass::text, conname FROM pg_constraint"
                " WHERE contype IN ('c', 'u') AND connamespace = 'public'::regnamespace"
            ):
                await conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT IF EXISTS "{name}" CASCADE')
            for (index,) in await conn.fetch(
                "SELECT i.indexrelid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
                " WHERE i.indisunique AND NOT i.indisprimary AND c.relnamespace = 'public'::regnamespace"
            ):
                await conn.execute(f"DROP INDEX IF EXISTS {index} CASCADE")
            for sql in statements:
                if sql.lstrip().upper().startswith("PRAGMA"):
                    continue  # SQLite's switches (foreign_keys = OFF): replica mode does it here
                sql = sql.replace("DROP INDEX ", "DROP INDEX IF EXISTS ")  # dropped above already
                await conn.execute(dollar_params(sql), *(params if "?" in sql else ()))
        finally:
            await conn.close()

    admin().run(go())


def copy_database(url: str) -> str:
    """A copy of a test's database (CREATE DATABASE ... TEMPLATE), for corrupting: the
    connections to it (the test's server) are ended first, since PostgreSQL copies only a
    database nobody is connected to. Dropped when the tests end."""
    a = admin()
    name = url.rpartition("/")[2]
    copy = f"{name}_copy_{uuid.uuid4().hex[:6]}"
    a.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()")
    a.execute(f"CREATE DATABASE {copy} TEMPLATE {name} STRATEGY FILE_COPY")
    copied = a.cluster.database_url(copy)
    atexit.register(a.drop, copied)
    return copied


def copy_rows(url: str, table: str, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    """Rows written straight into a test's database (COPY), beside its running server."""
    async def go() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.copy_records_to_table(table, records=rows, columns=columns)
        finally:
            await conn.close()

    admin().run(go())
