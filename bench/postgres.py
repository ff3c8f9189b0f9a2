"""PostgreSQL for the benchmark (issue 18): a throwaway cluster the bench starts itself, the
prepared databases moved into it, a fresh database per run, and the cluster's CPU time.

The cluster is tests/pg.py's (initdb and pg_ctl into a temporary folder on loopback, run as
the `postgres` user when we are root), with the settings a benchmark of durability `full`
needs: fsync and full_page_writes on (the test clusters turn them off), synchronous_commit
left as the server sets it per connection (on for `--durability full`, off for `normal`),
shared_buffers at PostgreSQL's default. It is stopped and its folder removed when the bench
ends.

The data is the SQLite runs' own: each prepared SQLite database (bench/scenarios.py
`Bench.template`, made by zapbilling itself) is moved into a template database with
`zapbilling copy` (every row, the API key included), then VACUUM (FREEZE, ANALYZE) so that no
run pays for hint bits or runs without statistics. Each run gets `CREATE DATABASE ... TEMPLATE`
(a file copy), dropped after the run.

CPU: the cluster's processes are the postmaster (its pid is the first line of
<data>/postmaster.pid) and its children (a backend per pooled connection, the WAL writer,
the checkpointer...). `cpu_seconds` sums their user + system time; a backend that ended
between two readings takes its time with it, but pooled connections live as long as a run.
"""
from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import asyncpg
import psutil

from .load import ROOT, child_env, cpu_seconds_of, zapbilling_cmd

SETTINGS = {
    "fsync": "on",
    "full_page_writes": "on",
    "shared_buffers": "128MB",  # PostgreSQL's own default (the test clusters use 64MB)
    "max_connections": "100",  # PostgreSQL's default: 3 servers x a pool of 10 leave room
}
"""The bench cluster's settings over tests/pg.py's test defaults (which turn fsync off)."""


def _test_pg() -> Any:
    """tests/pg.py as a module (tests/ is not a package): the one place that starts clusters."""
    spec = importlib.util.spec_from_file_location("zapbilling_bench_test_pg", ROOT / "tests" / "pg.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def is_url(db: str | Path) -> bool:
    return str(db).startswith(("postgresql://", "postgres://"))


def dollar_params(sql: str) -> str:
    """`?` placeholders as `$1, $2, ...` (the bench's check queries hold no `?` in literals)."""
    parts = sql.split("?")
    return "".join(p + (f"${i + 1}" if i < len(parts) - 1 else "") for i, p in enumerate(parts))


def one(url: str, sql: str, *params: Any) -> Any:
    """The first column of the first row of a query on a PostgreSQL database (a count)."""
    async def go() -> Any:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval(dollar_params(sql), *params)
        finally:
            await conn.close()

    return asyncio.run(go())


class PgCluster:
    """The bench's PostgreSQL: started on first use, stopped by `stop`."""

    def __init__(self, log: Callable[[str], None]):
        started = time.perf_counter()
        self._cluster = _test_pg().Cluster.own(SETTINGS)
        self.url: str = self._cluster.url
        self.data: Path = self._cluster.data
        self.templates: dict[str, str] = {}
        """Prepared database name -> its template database on the cluster."""
        version = self.fetchval("SHOW server_version")
        log(f"  started PostgreSQL {version} on {self.url} in {time.perf_counter() - started:.1f}s "
            f"({', '.join(f'{k}={v}' for k, v in SETTINGS.items())})")

    # -- admin -------------------------------------------------------------------------------
    def fetchval(self, sql: str, db: str = "postgres") -> Any:
        return one(self.database_url(db), sql)

    def execute(self, sql: str, db: str = "postgres") -> None:
        async def go() -> None:
            conn = await asyncpg.connect(self.database_url(db))
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        asyncio.run(go())

    def database_url(self, name: str) -> str:
        return str(self._cluster.database_url(name))

    # -- databases ---------------------------------------------------------------------------
    def template(self, name: str, sqlite_path: Path) -> str:
        """The template database holding `sqlite_path`'s rows (made on first use)."""
        if name not in self.templates:
            db = f"bench_tpl_{name}"
            self.execute(f"DROP DATABASE IF EXISTS {db}")
            self.execute(f"CREATE DATABASE {db}")
            r = subprocess.run([*zapbilling_cmd(), "copy", "--from", str(sqlite_path), "--to", self.database_url(db)],
                               capture_output=True, text=True, env=child_env(), timeout=3600)
            if r.returncode != 0:
                raise RuntimeError(f"zapbilling copy into {db} failed ({r.returncode}): {r.stderr.strip()[-800:]}")
            self.execute("VACUUM (FREEZE, ANALYZE)", db)
            self.templates[name] = db
        return self.templates[name]

    def fresh(self, template: str, tag: str) -> str:
        """A new database copied from a template database; its URL."""
        name = f"bench_{tag.replace('.', '_').replace('-', '_')}_{uuid.uuid4().hex[:6]}".lower()
        self.execute(f"CREATE DATABASE {name} TEMPLATE {template} STRATEGY FILE_COPY")
        return self.database_url(name)

    def drop(self, url: str) -> None:
        self.execute(f"DROP DATABASE IF EXISTS {url.rpartition('/')[2]} WITH (FORCE)")

    # -- CPU ---------------------------------------------------------------------------------
    def processes(self) -> list[psutil.Process]:
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]

    def cpu_seconds(self) -> float:
        """User + system CPU time of the postmaster and every process it runs, so far."""
        return cpu_seconds_of(self.processes())

    def stop(self) -> None:
        self._cluster.stop()
