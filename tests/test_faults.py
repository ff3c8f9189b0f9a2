"""Faults below the database (issue 16, item 3), each on the real `zapbilling serve` process
(tests/procs.py) with test_crash.py's storm and bookkeeping: WORKERS sequential clients, one
user each, every acknowledged write logged by the ids its answer gave.

- The disk fills up mid-storm (a tmpfs mounted by the test, a ballast file takes every free
  byte): writes answer the contract's internal error at once (REST 500, ZAP -32000 with HTTP
  200), nothing refused is in the file and everything acknowledged is, reads keep answering
  during the fault, and once space is freed writes succeed again without a restart. Twice on
  one process, then kill -9 and a restart: the file as WAL recovery reads it is exact.
- The database, its WAL and folder become immutable mid-storm (chattr +i, an ext4 image the
  test loop-mounts): the same checks.
- The database file alone becomes immutable: writes go on, durable in the WAL; checkpoints
  cannot copy, and catch up once it is writable again.
- The process is killed during a WAL checkpoint (a watcher process reads the checkpoint's
  progress in the -shm): every acknowledged write survives.
- The writer's connection recovers when a failed batch cannot even roll back (injected).

The mounts need root. CI runs as root, and there (CI set) the tests must run: they fail rather
than skip when they cannot mount. Elsewhere, without root, they are skipped. Figures are
printed: run with -s to see them.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import random
import re
import sqlite3
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import msgpack
import pytest
from aiohttp import ClientSession, ClientTimeout

from invariants import check_invariants
from procs import ServerProcess
from zapbilling.store.sqlite.connection import WAL_AUTOCHECKPOINT_PAGES as WAL_PAGES
from zapbilling.store.sqlite.writer import Writer
from test_crash import (
    REST_ROUTES, Account, Checker, Op, Storm, check_restarted, describe, failed_ops, master_seed, prepare, read_only,
)

pytestmark = pytest.mark.sqlite_only("faults below SQLite (disk full, read-only file, WAL checkpoints)")

FAULT_ANSWER_LIMIT = 2.0  # seconds: a write refused because of the fault must be answered within this
STORM_BEFORE_FAULT = 0.6  # seconds of storm before the fault begins
STORM_LIMIT = 30  # seconds: a storm not ended this long after the fault began is a hang
PAD = 3000  # characters of metadata on each deposit: more WAL pages per write, so checkpoints come sooner


# -- mounts ---------------------------------------------------------------------------------

def need_root() -> None:
    if os.geteuid() == 0:
        return
    if os.environ.get("CI"):
        pytest.fail("CI must run the fault tests as root: they mount small filesystems")
    pytest.skip("needs root to mount a small filesystem (CI runs it)")


def run(*cmd: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")


def unmount(where: Path) -> None:
    """umount, retried briefly (a process that just died may still hold it), then lazily."""
    for _ in range(50):
        if subprocess.run(["umount", str(where)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    need_root()
    where.mkdir()
    run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where))
    try:
        yield where
    finally:
        unmount(where)


def fill(path: Path, leave: int = 0) -> int:
    """Write `path` until the filesystem is full, then give back `leave` bytes; its size."""
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        while True:  # the last bytes, a page at a time
            try:
                f.write(chunk[:4096])
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        size = f.tell()
        if leave:
            f.truncate(max(0, size - leave))
            size = max(0, size - leave)
    return size


# -- the storm, as test_crash's, with the fault's answers --------------------------------------

def internal_error(status: int, body: Any, rest: bool) -> bool:
    """The contract's answer to an unexpected server fault, exactly: REST 500 with code
    internal_error, or ZAP code -32000 in-band with HTTP 200; a bare message, no traceback."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return False
    e = body["error"]
    if rest:
        ok = status == 500 and e.get("code") == "internal_error" and e.get("type") == "api-error"
    else:
        ok = status == 200 and e.get("code") == -32000 and (e.get("data") or {}).get("kind") == "internal_error"
    return ok and re.fullmatch(r"internal error \(error id [0-9a-f]{12}\)", str(e.get("message"))) is not None


class FaultStorm(Storm):
    """test_crash's storm, whose workers stop at their first write not acknowledged. A write
    answered with the contract's internal error is `refused` (the checker then requires it
    absent from the file); any other error answer stays `failed`. Every answer's latency is kept."""

    async def send(self, session: ClientSession, op: Op, a: Account) -> None:
        ok, status, body, result = await self.request(session, op)
        if ok:
            op.outcome, op.result = "acked", result
            self.apply(op, result, a)
        elif internal_error(status, body, rest=self.is_rest(op)):
            op.outcome, op.detail = "refused", f"{status} internal_error"
        else:
            op.outcome, op.detail = "failed", f"{status} {body!r}"[:500]

    @staticmethod
    def is_rest(op: Op) -> bool:
        return op.kind in REST_ROUTES and not (op.kind == "events" and int(op.id.rsplit("o", 1)[1]) % 2 == 0)


class PaddedStorm(Storm):
    """test_crash's storm with PAD characters of metadata on each deposit (the checker ignores metadata)."""

    def next_op(self, rng: random.Random, a: Account, op_id: str) -> Op:
        op = super().next_op(rng, a, op_id)
        if op.kind == "deposit":
            op.params["metadata"]["pad"] = "x" * PAD
        return op


def refusals(ops: list[Op]) -> list[Op]:
    return [op for op in ops if op.outcome == "refused"]


def others(ops: list[Op]) -> list[str]:
    """Writes that neither succeeded nor got the contract's internal error."""
    return [f"{op.id} {op.kind} {op.outcome}: {op.detail}" for op in ops if op.outcome not in ("acked", "refused")]


PROBE_USER = "crash/probe"  # not one of the storm's accounts, so the checker's model ignores its rows
PROBE_TRIES = 200


async def probe_writes(base: str, key: str, events_meter: str, tag: str) -> dict[str, list[tuple[str, bool, float]]]:
    """While the fault lasts, writes over each transport until one is refused:
    {what: [(probe id, acknowledged, seconds)]}. Each answer must be a success or the contract's
    internal error, within FAULT_ANSWER_LIMIT; the last one of each must be a refusal. (A write
    that needs no new space can succeed during a full disk: after a checkpoint SQLite reuses the
    WAL from its start. Such a write is durable, and is checked in the file like any other.)"""
    auth = {"Authorization": f"Bearer {key}"}
    out: dict[str, list[tuple[str, bool, float]]] = {"rest deposit": [], "zap recordUsage": [], "zap recordMeterEvents": []}
    async with ClientSession(timeout=ClientTimeout(total=30)) as s:
        for what, sent in out.items():
            for i in range(PROBE_TRIES):
                pid = f"{tag}-{what.split()[1]}-{i}"
                t = time.monotonic()
                if what == "rest deposit":
                    async with s.post(base + "/api/v1/billing/deposit", json={"user": PROBE_USER, "amount": 1, "notes": pid},
                                      headers=auth) as r:
                        status, body = r.status, await r.json()
                    ok = status == 201
                elif what == "zap recordUsage":
                    env = {"method": "billing.recordUsage", "id": 1,
                           "params": {"user": PROBE_USER, "amount": 1, "model": "m", "requestId": pid}}
                    async with s.post(base + "/api/v1/zap", data=msgpack.packb(env),
                                      headers={**auth, "Content-Type": "application/msgpack"}) as r:
                        status, body = r.status, msgpack.unpackb(await r.read())
                    ok = status == 200 and "result" in body
                else:
                    env = {"method": "billing.recordMeterEvents", "id": 2,
                           "params": {"events": [{"meterId": events_meter, "userId": PROBE_USER, "value": 1, "idempotency": pid}]}}
                    async with s.post(base + "/api/v1/zap", json=env, headers=auth) as r:
                        status, body = r.status, await r.json()
                    ok = status == 200 and "result" in body
                secs = time.monotonic() - t
                assert ok or internal_error(status, body, rest=what.startswith("rest")), (what, pid, status, body)
                assert secs < FAULT_ANSWER_LIMIT, (what, pid, secs)
                sent.append((pid, ok, secs))
                if not ok:
                    break
            assert not sent[-1][1], f"{what}: {PROBE_TRIES} writes during the fault, none refused"
    return out


def check_probes(db: str, probes: dict[str, list[tuple[str, bool, float]]]) -> None:
    """Each acknowledged probe write is in the file once, each refused one is absent."""
    with read_only(db) as con:
        for what, sent in probes.items():
            for pid, ok, _ in sent:
                if what == "rest deposit":
                    n = con.execute("SELECT count(*) FROM ledger WHERE user_id = ? AND notes = ?", (PROBE_USER, pid)).fetchone()[0]
                elif what == "zap recordUsage":
                    n = con.execute("SELECT count(*) FROM ledger WHERE user_id = ? AND dedupe_key = ?",
                                    (PROBE_USER, f"usage:{pid}")).fetchone()[0]
                else:
                    n = con.execute("SELECT count(*) FROM meter_events WHERE idempotency_key = ?", (pid,)).fetchone()[0]
                assert n == (1 if ok else 0), f"{what} {pid} {'acknowledged' if ok else 'refused'}, {n} rows in the file"


# -- one fault, start to end, on one running server -------------------------------------------

async def fault_mid_storm(db: str, tmp_path: Path, name: str, begin, end) -> dict[str, Any]:
    """The shared course of a fault: a storm runs; `begin()` brings the fault on mid-storm; every
    worker ends at its first write not acknowledged, which must be the contract's internal error,
    answered within FAULT_ANSWER_LIMIT. While the fault lasts, one write per transport is refused
    at once, every acknowledged write is in the file, every refused one is absent, and the reads
    (getBalance, getUsage pages, the events summary, listCreditGrants) answer what was
    acknowledged. Then `end()` lifts it and, on the same process: every refused write, retried
    with its idempotency key or requestId, is written once; a second storm runs until the fault
    is brought on again, and is lifted again. At the end the server is killed (-9) and restarted:
    the file, as WAL recovery reads it, holds exactly the acknowledged writes, and the invariants
    hold. Returns the figures."""
    key, events_meter, usage_meter, accounts = await prepare(db, tmp_path)
    server = await ServerProcess(db, tmp_path).start_ready()
    figures: dict[str, Any] = {}
    rng = random.Random(name)
    try:
        checker = Checker(db, accounts, events_meter, usage_meter)
        for round_ in (1, 2):
            storm = FaultStorm(server.base, key, accounts, events_meter, name, round_)
            task = asyncio.create_task(storm.run())
            await asyncio.sleep(STORM_BEFORE_FAULT)
            assert not task.done(), f"the storm ended before the fault: {others(storm.ops) or storm.ops[-3:]}"
            begin()
            faulted = time.monotonic()
            await asyncio.wait_for(task, STORM_LIMIT)  # every worker ends at its first write not acknowledged
            ops = storm.ops
            assert not others(ops), f"round {round_}: answers other than success or internal_error: {others(ops)[:10]}"
            refused = refusals(ops)
            assert len(refused) == len(accounts), f"round {round_}: each worker should end refused: {len(refused)}"
            slow = [f"{op.id} {op.kind} {op.done_at - op.sent_at:.2f}s" for op in refused if op.done_at - op.sent_at > FAULT_ANSWER_LIMIT]
            assert not slow, f"round {round_}: refusals slower than {FAULT_ANSWER_LIMIT}s: {slow}"
            ended = max(op.done_at for op in refused) - faulted

            # while the fault lasts: further writes are refused at once, reads answer, the file is exact
            tag = f"{name}{round_}"
            probes = await probe_writes(server.base, key, events_meter, tag)
            checker.resolve(ops)  # refused -> must be absent, and nothing half there
            checked = checker.check_file()
            read_start = time.monotonic()
            await checker.check_api(server.base, key)
            reads = time.monotonic() - read_start
            assert not checker.problems, f"round {round_}, during the fault:\n" + "\n".join(checker.problems[:40])
            check_probes(db, probes)
            assert server.running(), server.log()[-3000:]

            # lifted: the refused writes, retried, are written once; no restart
            end()
            lifted = time.monotonic()
            retried = await checker.retry(FaultStorm(server.base, key, accounts, events_meter, name, round_), ops, rng)
            recovery = time.monotonic() - lifted
            assert retried["written"] == len(refused), retried
            assert not checker.problems, f"round {round_}, after the fault:\n" + "\n".join(checker.problems[:40])
            checked = checker.check_file()
            await checker.check_api(server.base, key)
            assert not checker.problems, f"round {round_}, after the fault:\n" + "\n".join(checker.problems[:40])
            figures[round_] = dict(
                acked=sum(op.outcome == "acked" for op in ops), kinds=describe(ops), refused=len(refused),
                slowest=max(op.done_at - op.sent_at for op in refused), ended=ended,
                probes=max(t for sent in probes.values() for _, _, t in sent),
                probes_acked=sum(ok for sent in probes.values() for _, ok, _ in sent), reads=reads, recovery=recovery,
                retried=retried["written"], checked=checked,
            )
        assert server.running(), server.log()[-3000:]
        server.kill9()
    finally:
        server.stop()
    # What the file itself holds, as WAL recovery reads it after a crash: no frame the faults
    # left behind may bring back a refused write.
    await check_restarted(db, tmp_path, checker, key)
    return figures


def report(name: str, figures: dict[str, Any]) -> str:
    return "; ".join(
        f"round {r}: acknowledged {f['acked']} ({f['kinds']}), refused {f['refused']} (the last refusal"
        f" {f['ended']:.2f}s after the fault began, slowest answer {f['slowest'] * 1000:.0f} ms, probes"
        f" <= {f['probes'] * 1000:.0f} ms, {f['probes_acked']} probe writes acknowledged first), reads during the fault {f['reads']:.2f}s, after lifting:"
        f" {f['retried']} refused writes retried and written in {f['recovery']:.2f}s, {f['checked']} rows checked"
        for r, f in figures.items())


# -- the disk fills up ------------------------------------------------------------------------

async def test_disk_full_mid_storm_refuses_writes_at_once_keeps_reads_and_recovers_without_restart(tmp_path):
    """A tmpfs of 64 MB holds the database; mid-storm a ballast file takes every free byte, so
    the next commit cannot append to the WAL (SQLITE_FULL). Deleting the ballast lifts it."""
    with tmpfs(tmp_path / "fs", "64m") as fs:
        ballast = fs / "ballast"
        figures = await fault_mid_storm(str(fs / "billing.db"), tmp_path, "full",
                                        begin=lambda: fill(ballast), end=ballast.unlink)
    print(f"\n[disk full] {report('full', figures)}")


# -- the database becomes read-only -----------------------------------------------------------

@contextlib.contextmanager
def ext4(image: Path, where: Path, size_mb: int = 64) -> Iterator[Path]:
    """An ext4 filesystem in a sparse image file, loop-mounted at `where`."""
    need_root()
    with open(image, "wb") as f:
        f.truncate(size_mb << 20)
    run("mkfs.ext4", "-q", "-F", str(image))
    where.mkdir()
    run("mount", "-o", "loop", str(image), str(where))
    try:
        yield where
    finally:
        unmount(where)


def immutable(on: bool, *paths: Path) -> None:
    """chattr +i / -i: no process, root's included, may change an immutable file, and ext4
    refuses writes through descriptors opened before (EPERM), which chmod does not."""
    run("chattr", "+i" if on else "-i", *map(str, paths))


async def test_read_only_database_mid_storm_refuses_writes_at_once_keeps_reads_and_recovers_without_restart(tmp_path):
    """The database, its WAL and their folder (on an ext4 image) become immutable mid-storm:
    the next commit cannot append to the WAL (EPERM: SQLITE_IOERR_WRITE). Not the -shm: SQLite
    maps it and writes to it through the mapping, and a write to a mapped page of an immutable
    file is a SIGBUS, which kills the process (a crash, the kill tests' territory). chattr -i
    lifts it."""
    with ext4(tmp_path / "fs.img", tmp_path / "fs") as fs:
        folder = fs / "data"
        folder.mkdir()
        db = folder / "billing.db"
        files = (db, Path(f"{db}-wal"), folder)
        try:
            figures = await fault_mid_storm(str(db), tmp_path, "readonly",
                                            begin=lambda: immutable(True, *files), end=lambda: immutable(False, *files))
        finally:
            subprocess.run(["chattr", "-i", *map(str, files)], capture_output=True)
    print(f"\n[read-only] {report('readonly', figures)}")


def wal_index(db: str | Path) -> tuple[int, int, int]:
    """(mxFrame, nBackfill, nBackfillAttempted) from the -shm: see WATCHER below."""
    with open(f"{db}-shm", "rb") as f:
        head = f.read(136)
    return struct.unpack_from("=I", head, 16)[0], struct.unpack_from("=I", head, 96)[0], struct.unpack_from("=I", head, 128)[0]


class StoppableStorm(PaddedStorm):
    """test_crash's storm (deposits padded as PaddedStorm's) that ends when told: each worker's
    next write is then not sent (and dropped from `ops`)."""

    stopping = False

    async def send(self, session: ClientSession, op: Op, a: Account) -> None:
        if self.stopping:
            op.outcome = "stopped"
            return
        await super().send(session, op, a)

    async def until(self, done, limit: float) -> list[Op]:
        """Runs until done() (polled every 10 ms) or `limit` seconds; returns the ops sent."""
        task = asyncio.create_task(self.run())
        deadline = time.monotonic() + limit
        while not done() and time.monotonic() < deadline and not task.done():
            await asyncio.sleep(0.01)
        self.stopping = True
        await asyncio.wait_for(task, STORM_LIMIT)
        self.ops = [op for op in self.ops if op.outcome != "stopped"]
        return self.ops


async def test_read_only_database_file_alone_keeps_writes_durable_in_the_wal(tmp_path):
    """Only the database file becomes immutable (its WAL and folder stay writable): commits only
    append to the WAL, so writes go on being acknowledged, durably. What cannot happen is the
    checkpoint: past 4000 WAL pages SQLite tries one after each commit and fails, so the WAL
    grows. Reads answer throughout. Once the file is writable again the next checkpoint copies
    the whole WAL into it and the WAL starts over, with no restart; after a kill -9 and a
    restart every acknowledged write is there."""
    with ext4(tmp_path / "fs.img", tmp_path / "fs", size_mb=128) as fs:
        db = fs / "billing.db"
        key, events_meter, usage_meter, accounts = await prepare(str(db), tmp_path)
        server = await ServerProcess(str(db), tmp_path).start_ready()
        checker = Checker(str(db), accounts, events_meter, usage_meter)
        try:
            immutable(True, db)
            try:
                started = time.monotonic()
                storm = StoppableStorm(server.base, key, accounts, events_meter, "dbfile", 1)
                ops = await storm.until(lambda: wal_index(db)[0] > WAL_PAGES + 1000, CHECKPOINT_WAIT)
                during = time.monotonic() - started
                mx, backfill, attempted = wal_index(db)
                assert mx > WAL_PAGES + 1000, f"the WAL reached only {mx} frames in {CHECKPOINT_WAIT}s"
                assert not others(ops), others(ops)[:10]
                assert backfill == 0 < attempted, f"checkpoints tried to copy {attempted} frames and copied {backfill}"
                checker.check_file()
                await checker.check_api(server.base, key)
                assert not checker.problems, "while the file is read-only:\n" + "\n".join(checker.problems[:40])
            finally:
                immutable(False, db)
            lifted = time.monotonic()
            storm2 = StoppableStorm(server.base, key, accounts, events_meter, "dbfile", 2)
            restarted_wal = lambda: wal_index(db)[0] < mx  # noqa: E731 (a checkpoint copied it all and the WAL began again)
            ops2 = await storm2.until(restarted_wal, CHECKPOINT_WAIT)
            caught_up = time.monotonic() - lifted
            assert restarted_wal(), f"no checkpoint within {CHECKPOINT_WAIT}s of the file becoming writable: {wal_index(db)}"
            assert not others(ops2), others(ops2)[:10]
            checker.check_file()
            await checker.check_api(server.base, key)
            assert not checker.problems, "\n".join(checker.problems[:40])
            server.kill9()
        finally:
            server.stop()
        await check_restarted(str(db), tmp_path, checker, key)
    print(f"\n[read-only database file] {len(ops)} writes acknowledged in {during:.1f}s while the file was immutable,"
          f" none refused; the WAL grew to {mx} frames ({mx * 4120 >> 20} MiB), checkpoints tried {attempted} and copied none; writable again: the"
          f" first checkpoint copied it all within {caught_up:.2f}s ({len(ops2)} more writes acknowledged meanwhile)")


# -- killed during a WAL checkpoint -------------------------------------------------------------

CHECKPOINT_KILLS = 4
CHECKPOINT_WAIT = 20  # seconds: a storm that brings no checkpoint within this fails the test
KILL_MODES = ("at once", "copying", "after", "copying")  # when each cycle's kill comes: as soon as a checkpoint
# is seen to begin (it syncs the WAL first), once it has written into the database file but not finished, or
# right after it finished (before the WAL starts over)

# The watcher runs as a process of its own, so that the storm's client (this process) does not
# delay it: it maps the server's -shm read-only and polls the WAL index's checkpoint record,
# then SIGKILLs the server and the processes it started (children first). In the WAL index (native byte order, sqlite.org/walformat.html)
# the header's mxFrame (the last valid frame) is at byte 16, the checkpoint record's nBackfill
# (frames copied into the database) at 96 and nBackfillAttempted at 128. A checkpoint sets
# nBackfillAttempted to the frame it means to reach before it copies anything, and nBackfill once
# the copy is synced: between the two, a checkpoint is under way. The first look is ignored (WAL
# recovery at start-up sets nBackfillAttempted to mxFrame without any checkpoint). Whether the
# checkpoint had written into the database file when the process died: the file's mtime and size
# after the kill against the last look at them while no checkpoint was under way (only a
# checkpoint writes that file).
WATCHER = r"""
import json, mmap, os, signal, struct, sys, time
import psutil
shm, pid, mode, limit = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
db = shm[:-len("-shm")]
with open(shm, "rb") as f:
    m = mmap.mmap(f.fileno(), 136, access=mmap.ACCESS_READ)
def look():
    return struct.unpack_from("=I", m, 16)[0], struct.unpack_from("=I", m, 96)[0], struct.unpack_from("=I", m, 128)[0]
def written():
    st = os.stat(db)
    return st.st_mtime_ns, st.st_size
first = look()
end = time.monotonic() + limit
start = None
db_idle = written()
while time.monotonic() < end:
    mx, backfill, attempted = look()
    busy = attempted > backfill
    if start is not None and not busy:  # the checkpoint seen to begin has finished (or the WAL started over)
        if mode == "after":
            break
        start = None  # its moment was missed: wait for the next one
    if start is None:
        if busy and attempted != first[2]:
            start, started, db_then = (mx, backfill, attempted), time.monotonic(), db_idle
            if mode == "at once":
                break
        else:
            db_idle = written()  # the database file as no checkpoint was under way
    if start is not None and mode == "copying" and written() != db_then:
        break
    time.sleep(0.0002)
else:
    print(json.dumps({"killed": False, "first": first}))
    sys.exit(0)
for child in psutil.Process(pid).children(recursive=True):
    child.kill()  # the webhook sender first: left alive, it would close its connection cleanly, finish the checkpoint and delete the WAL
os.kill(pid, signal.SIGKILL)
killed = time.monotonic()
time.sleep(0.05)
print(json.dumps({"killed": True, "start": start, "at_kill": look(), "after": killed - started,
                  "db_written": written() != db_then}))
"""


async def test_kill_9_during_wal_checkpoints_loses_no_acknowledged_write(tmp_path):
    """CHECKPOINT_KILLS cycles on one file: a storm until SQLite's automatic checkpoint (past
    4000 WAL pages) begins, SIGKILL at one of KILL_MODES' moments (as it begins, while it
    copies pages into the database file, right after it finished), restart, and test_crash's
    checks: every acknowledged write present, each unanswered one wholly present or absent,
    retries answered once, the invariants."""
    seed = master_seed()
    rng = random.Random(seed)  # the storm's writes and the retries' sample; the kills' moments are the watcher's
    print(f"\n[checkpoint] seed {seed} (replay: CRASH_SEED={seed} pytest -s tests/test_faults.py -k checkpoint)")
    db = str(tmp_path / "checkpoint.db")
    key, events_meter, usage_meter, accounts = await prepare(db, tmp_path)
    totals: Counter[str] = Counter()
    for cycle in range(1, CHECKPOINT_KILLS + 1):
        mode = KILL_MODES[(cycle - 1) % len(KILL_MODES)]
        server = await ServerProcess(db, tmp_path).start_ready()
        try:
            watcher = subprocess.Popen([sys.executable, "-c", WATCHER, f"{db}-shm", str(server.pid), mode,
                                        str(CHECKPOINT_WAIT)], stdout=subprocess.PIPE, text=True)
            storm = PaddedStorm(server.base, key, accounts, events_meter, seed, cycle)
            task = asyncio.create_task(storm.run())
            out, _ = await asyncio.to_thread(watcher.communicate, timeout=CHECKPOINT_WAIT + 10)
            seen = json.loads(out)
            if not seen["killed"]:
                server.crash()
            await asyncio.wait_for(task, STORM_LIMIT)
            wal = os.path.getsize(f"{db}-wal")
        finally:
            server.stop()
        assert seen["killed"], f"cycle {cycle}: no checkpoint began within {CHECKPOINT_WAIT}s of storm: {seen}"
        ops = storm.ops
        acked = sum(op.outcome == "acked" for op in ops)
        assert not failed_ops(ops), f"error answers before the kill: {failed_ops(ops)}"
        _, backfill, attempted = seen["at_kill"]
        mid = attempted > backfill  # the checkpoint had not finished when the process died (a WAL restart zeroes both)
        frames = seen["start"][2]

        restarted = await ServerProcess(db, tmp_path).start_ready()
        try:
            checker = Checker(db, accounts, events_meter, usage_meter)
            checker.resolve(ops)
            checked = checker.check_file()
            await checker.check_api(restarted.base, key)
            assert not checker.problems, f"cycle {cycle} (seed {seed}):\n" + "\n".join(checker.problems[:40])
            check_invariants(db)
            retried = await checker.retry(Storm(restarted.base, key, accounts, events_meter, seed, cycle), ops, rng)
            assert not checker.problems, f"cycle {cycle} (seed {seed}):\n" + "\n".join(checker.problems[:40])
        finally:
            restarted.stop()
        totals.update(kills=1, mid=mid, written=mid and seen["db_written"], acked=acked, present=checker.found["present"], absent=checker.found["absent"])
        print(f"[checkpoint] cycle {cycle}: kill -9 ({mode}) {seen['after'] * 1000:.1f} ms after a checkpoint of {frames}"
              f" WAL frames began ({wal >> 10} KiB of WAL): {'unfinished' if mid else 'finished'},"
              f" database file {'written' if seen['db_written'] else 'not yet written'} before the kill; acknowledged {acked} ({describe(ops)}); in flight: present"
              f" {checker.found['present']}, absent {checker.found['absent']}; {checked} rows checked;"
              f" retries {retried['replayed']} replayed, {retried['written']} written")
    checked = await check_restarted(db, tmp_path, Checker(db, accounts, events_meter, usage_meter), key)
    assert totals["written"] >= 1, "no kill landed while a checkpoint was copying pages into the database file"
    print(f"[checkpoint] kills survived {totals['kills']} ({totals['mid']} mid-checkpoint, {totals['written']} of them"
          f" after it had begun writing the database file); acknowledged writes"
          f" {totals['acked']} all present ({checked} rows in the final file); in flight present {totals['present']},"
          f" absent {totals['absent']}")


# -- the writer's connection after a failed ROLLBACK (in-process, no mount) ---------------------

class Flaky(sqlite3.Connection):
    """A connection whose next statements listed in `failing` fail once each, in order, as
    after a disk error: the statement does not run."""

    failing: list[str] = []

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        if Flaky.failing and Flaky.failing[0] == sql:
            Flaky.failing.pop(0)
            raise sqlite3.OperationalError(f"disk I/O error (injected on {sql})")
        return super().execute(sql, *args)


@pytest.mark.parametrize("failing", [["COMMIT", "ROLLBACK"], ["COMMIT", "ROLLBACK", "ROLLBACK"]],
                         ids=["rolled-back-next-batch", "reopened"])
async def test_writer_recovers_when_a_failed_batch_cannot_roll_back(tmp_path, failing):
    """A batch's COMMIT fails and so does its ROLLBACK, leaving the transaction open: its job
    fails, and the next batch still commits (rolling the leftover back first, or, when that
    ROLLBACK fails too, on a reopened connection), without the first batch's row."""
    db = str(tmp_path / "w.db")
    opened = []

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False, factory=Flaky)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS t (v TEXT)")
        opened.append(conn)
        return conn

    def insert(conn: sqlite3.Connection, v: str) -> str:
        conn.execute("INSERT INTO t (v) VALUES (?)", (v,))
        return v

    writer = Writer(connect)
    await writer.start()
    try:
        Flaky.failing = list(failing)
        with pytest.raises(sqlite3.OperationalError, match="injected on COMMIT"):
            await writer.run(insert, "lost")
        assert await writer.run(insert, "kept") == "kept"
        assert await writer.run(insert, "kept too") == "kept too"
        assert not Flaky.failing
    finally:
        Flaky.failing = []
        await writer.close()
    with sqlite3.connect(db) as con:
        assert [v for v, in con.execute("SELECT v FROM t ORDER BY rowid")] == ["kept", "kept too"]
    assert len(opened) == (2 if len(failing) == 3 else 1)
