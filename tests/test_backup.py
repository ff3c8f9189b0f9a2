"""Backup and restore of a live database (issue 20, item 4): on SQLite `zapbilling backup`, on
PostgreSQL the pg_dump recipe that `zapbilling backup` answers with, each taken while a real
`zapbilling serve` process answers a storm of deposits and recordUsage calls, then restored as
the README says and served again.

What the copy must be: a database that opens and passes the invariants checker
(tests/invariants.py); holding every write acknowledged before the backup began; holding no
write sent after the backup ended (it is the database as of one moment within the backup, and
writes were acknowledged while it ran); and,
served again, answering each user's balance as the sum of exactly the writes it holds."""
from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import pytest
from aiohttp import ClientSession

import pg
from invariants import check_invariants
from procs import TIMEOUT, ServerProcess, child_env, create_key, zapbilling_cmd
from zapbilling.store.migrations import scripts

WORKERS = 8
BEFORE = 150  # writes acknowledged before the backup begins, at least
AFTER = 40  # writes sent after the backup ended, at least
STORM_LIMIT = 120  # seconds: a storm that has not reached its counts by then is a hang


@dataclass
class Write:
    kind: str  # deposit | usage
    user: str
    amount: int
    op_id: str
    sent_at: float
    acked_at: float | None = None
    tx: str | None = None

    @property
    def signed(self) -> int:
        return self.amount if self.kind == "deposit" else -self.amount


class Storm:
    """WORKERS concurrent clients, each with its own user, alternating a deposit (REST, with an
    Idempotency-Key) and a smaller recordUsage (REST, with a requestId), one after the other,
    so a user's balance never goes below 0. Every write is kept with when it was sent and when
    its 201 came; any other answer fails the test."""

    def __init__(self, base: str, key: str):
        self.base, self.auth = base, {"Authorization": f"Bearer {key}"}
        self.writes: list[Write] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(n)) for n in range(WORKERS)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def acked(self, after: float = 0.0) -> int:
        return sum(1 for w in self.writes if w.acked_at is not None and w.sent_at > after)

    async def until(self, what: Callable[[], bool]) -> None:
        deadline = time.monotonic() + STORM_LIMIT
        while not what():
            for t in self._tasks:
                if t.done():
                    t.result()  # a worker that failed: its error
            assert time.monotonic() < deadline, f"the storm stalled: {self.acked()} writes acknowledged"
            await asyncio.sleep(0.01)

    async def _worker(self, n: int) -> None:
        user = f"storm/{n}"
        async with ClientSession() as s:
            i = 0
            while not self._stop.is_set():
                i += 1
                op_id = f"w{n}-{i}"
                if i % 2:
                    w = Write("deposit", user, 100 + i % 7, op_id, time.monotonic())
                    path, body, headers = "/api/v1/billing/deposit", {"user": user, "amount": w.amount}, {"Idempotency-Key": op_id}
                else:
                    w = Write("usage", user, 1 + i % 50, op_id, time.monotonic())
                    path, body, headers = "/api/v1/billing/usage", {"user": user, "amount": w.amount, "requestId": op_id}, {}
                self.writes.append(w)
                async with s.post(self.base + path, json=body, headers={**self.auth, **headers}) as r:
                    answer = await r.json()
                    assert r.status == 201, (w, r.status, answer)
                assert answer["amount"] == w.amount and answer["user"] == user, answer
                w.tx, w.acked_at = answer["transactionId"], time.monotonic()


async def storm_backup_restore(db: str, tmp_path: Path, take: Callable[[str, Path], Awaitable[None]],
                               restore: Callable[[Path], str]) -> tuple[str, Storm, float, float]:
    """A server on `db` under the storm; `take(db, folder)` while it runs (between `begun` and
    `ended`); the storm and the server stopped; `restore(folder)` -> the restored --db."""
    key = create_key(db, "acme", "live")
    server = await ServerProcess(db, tmp_path).start_ready()
    try:
        storm = Storm(server.base, key)
        storm.start()
        await storm.until(lambda: storm.acked() >= BEFORE)
        begun = time.monotonic()
        await take(db, tmp_path)
        ended = time.monotonic()
        await storm.until(lambda: storm.acked(after=ended) >= AFTER)
        await storm.stop()
    finally:
        assert server.terminate() == 0, server.log()
    return restore(tmp_path), storm, begun, ended


def ledger_ids(db: str) -> set[str]:
    con = pg.read_only(db)
    try:
        return {row[0] for row in con.execute("SELECT id FROM ledger").fetchall()}
    finally:
        con.close()


async def check_restored(restored: str, storm: Storm, begun: float, ended: float, tmp_path: Path) -> None:
    check_invariants(restored)  # raises AssertionError listing every violation
    held = ledger_ids(restored)
    by_tx = {w.tx: w for w in storm.writes if w.tx is not None}
    assert held <= set(by_tx), f"rows no write made: {sorted(held - set(by_tx))[:5]}"
    before = [w for w in storm.writes if w.acked_at is not None and w.acked_at < begun]
    assert len(before) >= BEFORE
    missing = [w for w in before if w.tx not in held]
    assert not missing, f"{len(missing)} writes acknowledged before the backup began are not in the copy: {missing[:3]}"
    later = [w for w in storm.writes if w.sent_at > ended]
    assert len(later) >= AFTER
    assert not [w for w in later if w.tx in held], "the copy holds writes sent after the backup ended"
    assert len(storm.writes) > len(held), "every write is in the copy: it was not taken while the storm ran"
    during = [w for w in storm.writes if w.acked_at is not None and begun < w.acked_at < ended]
    assert during, "no write was acknowledged while the backup ran: it did not run beside the storm"

    # Served again: up, ready, the same key works, each balance is the sum of the writes held.
    server = await ServerProcess(restored, tmp_path).start_ready()
    try:
        async with ClientSession() as s:
            async with s.get(server.base + "/readyz") as r:
                assert (r.status, await r.json()) == (200, {"ok": True})
            key = storm.auth["Authorization"]
            for n in range(WORKERS):
                user = f"storm/{n}"
                expected = sum(w.signed for w in storm.writes if w.user == user and w.tx in held)
                async with s.get(server.base + "/api/v1/billing/balance", params={"user": user, "currency": "usd"},
                                 headers={"Authorization": key}) as r:
                    body = await r.json()
                    assert r.status == 200 and body["balance"] == expected, (user, expected, body)
    finally:
        assert server.terminate() == 0, server.log()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*zapbilling_cmd(), *args], capture_output=True, text=True, timeout=TIMEOUT, env=child_env())


@pytest.mark.sqlite_only("zapbilling backup copies a SQLite file; PostgreSQL's recipe has its own test")
async def test_a_backup_taken_during_a_write_storm_restores_to_every_write_acknowledged_before_it(tmp_path):
    db = str(tmp_path / "billing.db")
    copy = tmp_path / "backups" / "billing-copy.db"
    copy.parent.mkdir()
    reports: list[str] = []

    async def take(db: str, folder: Path) -> None:
        # a child process, so that the storm goes on in this one while it runs
        proc = await asyncio.create_subprocess_exec(*zapbilling_cmd(), "backup", "--db", db, "--to", str(copy),
                                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env())
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
        assert (proc.returncode, out) == (0, b""), err
        reports.append(err.decode())

    def restore(folder: Path) -> str:
        # The README's steps: the server stopped, the live file and its -wal and -shm moved
        # aside, the copy put in its place, owner-only.
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(db + suffix):
                os.replace(db + suffix, f"{db}.before-restore{suffix}")
        shutil.copyfile(copy, db)
        os.chmod(db, 0o600)
        return db

    restored, storm, begun, ended = await storm_backup_restore(db, tmp_path, take, restore)
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    size = copy.stat().st_size
    (report,) = reports
    assert report.startswith(f"backed up {db} to {copy}: {size:,} bytes, schema version {len(scripts())}, integrity ok, in "), report
    assert sorted(os.listdir(copy.parent)) == ["billing-copy.db"]  # no partial file left beside it
    con = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # a file on its own, no WAL
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        con.close()
    await check_restored(restored, storm, begun, ended, tmp_path)


@pytest.mark.postgres_only("the pg_dump recipe that `zapbilling backup` gives for PostgreSQL")
async def test_the_pg_dump_recipe_taken_during_a_write_storm_restores_to_every_write_acknowledged_before_it(db_path, tmp_path):
    dump = tmp_path / "zapbilling.dump"
    target = pg.admin().new_database(migrated=False)
    try:
        async def take(db: str, folder: Path) -> None:
            proc = await asyncio.create_subprocess_exec("pg_dump", "--format=custom", f"--file={dump}", db,
                                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
            assert proc.returncode == 0, err

        def restore(folder: Path) -> str:
            r = subprocess.run(["pg_restore", "--no-owner", "--exit-on-error", f"--dbname={target}", str(dump)],
                               capture_output=True, text=True, timeout=TIMEOUT)
            assert r.returncode == 0, r.stderr
            return target

        restored, storm, begun, ended = await storm_backup_restore(db_path, tmp_path, take, restore)
        await check_restored(restored, storm, begun, ended, tmp_path)
    finally:
        pg.admin().drop(target)


def test_postgresql_is_refused_with_the_pg_dump_recipe_and_without_the_password(tmp_path):
    target = tmp_path / "copy.db"
    r = run_cli("backup", "--db", "postgresql://bob:s3cret@db.example:5433/billing", "--to", str(target))
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr.startswith("zapbilling: error: backup copies SQLite files; for PostgreSQL use its own tool: "
                               "pg_dump --format=custom --file=zapbilling.dump 'postgresql://bob@db.example:5433/billing' "), r.stderr
    assert "pg_restore --no-owner --exit-on-error --dbname=" in r.stderr
    assert "s3cret" not in r.stderr and r.stderr.count("\n") == 1
    assert not target.exists()


@pytest.mark.sqlite_only("a SQLite file as the source")
def test_an_existing_target_is_refused_and_kept_unless_force(tmp_path):
    db = str(tmp_path / "billing.db")
    create_key(db, "acme", "live")
    target = tmp_path / "copy.db"
    target.write_text("keep me")
    r = run_cli("backup", "--db", db, "--to", str(target))
    assert (r.returncode, r.stdout, r.stderr) == (
        2, "", f"zapbilling: error: {target} exists: choose another file, or pass --force to replace it\n")
    assert target.read_text() == "keep me"

    r = run_cli("backup", "--db", db, "--to", str(target), "--force")
    assert r.returncode == 0, r.stderr
    con = sqlite3.connect(f"file:{target}?mode=ro", uri=True)
    try:
        assert con.execute("SELECT org, mode FROM tenants").fetchall() == [("acme", "live")]
    finally:
        con.close()
    assert [f for f in sorted(os.listdir(tmp_path)) if not f.startswith("billing.db")] == ["copy.db"]  # no partial file


@pytest.mark.sqlite_only("SQLite files as the source")
def test_no_copy_is_left_of_a_source_that_is_missing_or_not_a_database(tmp_path):
    target = tmp_path / "copy.db"
    missing = tmp_path / "nothing.db"
    r = run_cli("backup", "--db", str(missing), "--to", str(target))
    assert (r.returncode, r.stderr) == (2, f"zapbilling: error: cannot back up {missing}: no such database file\n")
    assert not missing.exists()  # never created

    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    r = run_cli("backup", "--db", str(junk), "--to", str(target))
    assert (r.returncode, r.stderr) == (2, f"zapbilling: error: cannot back up {junk} to {target}: file is not a database\n")
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.close()
    r = run_cli("backup", "--db", str(other), "--to", str(target))
    assert (r.returncode, r.stderr) == (
        2, f"zapbilling: error: cannot back up {other} to {target}: it is not a zapbilling database (no schema_migrations table)\n")
    assert sorted(os.listdir(tmp_path)) == ["junk.db", "other.db"]
