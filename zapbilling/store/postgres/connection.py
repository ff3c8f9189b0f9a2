"""The PostgreSQL connections: one pool per server process (pool.py), each write one
transaction, reads on the same pool, and the schema migrated once however many servers start
together.

Commits: the usual ledger write (recordUsage, a deposit: ledger.py `_append_at_once`) is one
statement that commits by itself, and the usual writes that arrive during one round trip share
one statement and one commit (`ledger_append_rows`, turns.py), their accounts locked in key
order (rule 4 below). Other writes are a transaction each; PostgreSQL shares the flush itself:
concurrent transactions committing together are written to disk by one WAL flush (its group
commit), so `--durability full` costs one fsync per flush, not per write.

How concurrent writes stay correct (many servers, one database). Every transaction runs at READ
COMMITTED and takes row locks in one fixed order before it reads what it decides on:

1. the account's `balances` row (tenant, user, currency), created if missing, `FOR UPDATE`:
   every ledger write, hold placed or captured, refund and forfeit of one account queues here,
   so a funds check, a lot walk or a refund's remainder is read after the previous writer's
   commit (READ COMMITTED gives each statement a fresh snapshot) and cannot be overtaken;
2. then rows that belong to that account: its hold (`FOR UPDATE`), its lots, a refund's
   original (a conditional `UPDATE ... WHERE refunded + n <= amount`);
3. a user's credit grants, locked `FOR UPDATE` in creation order (`seq`) by every write that
   changes a remainder (burn, void, expiry), so two burns never take the same cents;
4. a batch of usual ledger writes (`ledger_append_rows`) locks several accounts' `balances`
   rows, in key order (tenant, user, currency), and nothing else.

Only such batches lock two accounts, always in one order, and a transaction that locks one
account then wants only that account's rows or its user's grants, which no batch locks; the
sweeps (which walk many) take one account per statement group in key order. So lock cycles
cannot form between accounts (two requests repeating one requestId in two currencies of one
user can still meet at the requestId's unique index: PostgreSQL breaks that rare cycle and
the retry below takes it). A deadlock or serialisation failure all the same (PostgreSQL
detects it and aborts one side) is retried here, a few times with a random pause, and never
reaches a caller as an error of its own. Idempotency keys, dedupe keys
and meter-event keys are unique constraints (`INSERT ... ON CONFLICT DO NOTHING`): a concurrent
duplicate waits for the first insert's commit, then sees its row.

Why row locks rather than SERIALIZABLE with retries: the hot writes (recordUsage on one busy
user) all conflict by design, and under SERIALIZABLE each conflict costs a whole failed
transaction and a retry, where a lock costs a wait; `SELECT ... FOR UPDATE` and READ COMMITTED
are supported by the PostgreSQL-compatible distributed databases too (CockroachDB, YugabyteDB),
and advisory locks, which they lack, are not used.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from contextvars import ContextVar
from typing import Any, AsyncIterator, Awaitable, Callable, Hashable, TypeVar

import asyncpg

from ..answers import PurgeHorizon, replayed_answer, stored_answer
from ..base import DURABILITY, NOTES, Idempotency, KeyRevoked, Load, Note, Principal, StoreStats, Unavailable
from ...loop_turn import away
from ..fairness import FairSlots
from ..locator import describe
from ..migrations import record, scripts
from ..refusals import KeyReused
from .pool import Lease, Pool

T = TypeVar("T")
log = logging.getLogger("zapbilling.store")

POOL_SIZE = 10
"""Connections per server process. A request holds one for a single statement or transaction
(a few hundred microseconds), so ten keep a loop busy; PostgreSQL's default max_connections of
100 then serves ten server processes."""
LONG_READS = POOL_SIZE // 2
"""Long reads (aggregates, snapshots) busy at once per process, handed out fairly by tenant: the
other half of the pool is always left to short reads and writes, so one key's expensive reads
cannot take every pooled connection."""
ACQUIRE_TIMEOUT = 10.0
"""Seconds a call waits for a pooled connection under load before it answers the internal error."""
STATEMENT_TIMEOUT_MS = 30_000
"""PostgreSQL cancels a statement that runs longer: no query holds a connection without bound."""
CONNECT_TIMEOUT = 5.0
RETRIES = 8
"""Attempts of a transaction aborted by a deadlock or a serialisation failure."""
RETRYABLE = (asyncpg.exceptions.SerializationError, asyncpg.exceptions.DeadlockDetectedError)

Job = Callable[..., Awaitable[Any]]
_SNAPSHOT: ContextVar["asyncpg.Connection[Any] | None"] = ContextVar("zapbilling_pg_snapshot", default=None)
UNCHECKED_KEY: ContextVar[str | None] = ContextVar("zapbilling_pg_unchecked_key", default=None)
"""The digest of this request's API key while it has been taken from the cache (keys.py) and
not yet checked against the database. Set by every `authenticate` (a keep-alive connection's
requests share one task, and so one context), cleared by the first check."""
KEY_VALID = "SELECT EXISTS (SELECT 1 FROM api_keys WHERE hash = $1 AND revoked_at IS NULL)"
BEGIN_CHECKING_KEY = "BEGIN; SELECT 1 / (SELECT COUNT(*)::int FROM api_keys WHERE hash = '{digest}' AND revoked_at IS NULL)"
"""A transaction begun, and the key of that digest checked in the same message: division by
zero when it is revoked or gone (digests are unique: the count is 0 or 1)."""
_HEX64 = re.compile(r"[0-9a-f]{64}")
MAX_CACHED_KEYS = 10_000
"""Keys remembered per process; past it the cache starts again (a process serves few keys)."""


def unavailable(url: str, exc: BaseException) -> Unavailable:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return Unavailable(f"cannot use the database {describe(url)}: {reason}")


class PgBase:
    """The pool and the ways to use it: `_tx` runs one job as one transaction (retried on a
    deadlock or serialisation failure), `_write` adds the call's idempotency key to that
    transaction, `_read` and `_aggregate` read (inside `snapshot()`, from its transaction)."""

    def __init__(self, url: str, durability: str = "full", pool_size: int = POOL_SIZE):
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {', '.join(DURABILITY)}")
        self.url = url
        self.path = describe(url)
        self.durability = durability
        self._pool_size = pool_size
        self._pool: Pool | None = None
        self._long = FairSlots(max(1, pool_size // 2))
        self._purge_horizon = PurgeHorizon()
        self._events_horizon = PurgeHorizon()  # the outbox's purge (retention.py) has a clock of its own
        self.retries = 0
        """Transactions retried after a deadlock or serialisation failure (reported by the bench)."""
        self._alerting: dict[int, int] = {}
        """Each tenant's alert count as its last meter-event write in a transaction read it
        (metering.py): a tenant with alerts skips _INSERT_ALONE, which would write nothing for
        it and cost a round trip; its next transaction's read puts it back once they are gone."""
        self._keys: dict[str, tuple[Principal, str]] = {}
        """Keys found valid, by their text: (principal, digest). Never trusted alone: see keys.py."""
        self.stats = StoreStats()
        """Read by the metrics: each committed transaction's seconds (one write each), its rows
        written (rows moving money, meter events); the pool's waits (pool.py)."""

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        settings = {
            # full: a commit is acknowledged once PostgreSQL has flushed it (a power cut keeps
            # it); normal: once written to the server, which a crash of this process cannot lose.
            "synchronous_commit": "on" if self.durability == "full" else "off",
            "statement_timeout": str(STATEMENT_TIMEOUT_MS),
            "application_name": "zapbilling",
            # No JIT: the 1,000-meter invoicePreview's plan is estimated above the JIT
            # threshold, and its first runs on each connection compiled for 460 of 497 ms where
            # the query takes 35-65 ms (bench scenario 4). Our queries are short; JIT never pays.
            "jit": "off",
        }
        def connect() -> Awaitable[asyncpg.Connection]:
            return asyncpg.connect(self.url, server_settings=settings, timeout=CONNECT_TIMEOUT)  # type: ignore[no-any-return]

        try:
            self._pool = Pool(connect, self._pool_size, ACQUIRE_TIMEOUT, self.stats)
            async with Lease(self._pool) as conn:
                await migrate(conn)
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
            if self._pool is not None:
                self._pool.terminate()
                self._pool = None
            raise unavailable(self.url, exc) from None

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            # one line at shutdown, nothing on the hot path: the bench sums these over its servers
            log.info("closing the database pool; %d transactions retried after a deadlock or serialisation failure",
                     self.retries)
            await pool.close()

    def load(self) -> Load:
        pool = self._pool
        if pool is None:
            return Load(0, self._pool_size, 0, 0)
        return Load(0, pool.size, pool.opened, pool.in_use)

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise RuntimeError("the store is closed")
        return self._pool

    # -- writes ------------------------------------------------------------------------------
    async def _tx(self, job: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `await job(conn, *args)` as one transaction; return once it is committed. The
        job's notes (base.NOTES: rows moving money, meter events) reach `stats` only once it committed."""
        async def attempt(notes: list[Note]) -> T:
            async with Lease(self.pool) as conn:
                started = time.perf_counter()
                await self._begin(conn)
                try:
                    result = await job(conn, *args)
                    await conn.execute("COMMIT")
                except BaseException:
                    if conn.is_in_transaction():
                        with contextlib.suppress(Exception):  # a connection left in a transaction is dropped by the pool
                            await conn.execute("ROLLBACK")
                    raise
            self._committed(started, notes, 1)
            return result
        return await self._retried(attempt)

    async def _statement(self, sql: str, *params: Any) -> Any:
        """One statement that commits by itself, with no BEGIN or COMMIT around it (two round
        trips fewer than `_tx`), retried as `_tx` is; answers its first column. The caller
        counts what it committed (`_committed`): only the statement's answer says what it wrote."""
        async def attempt(notes: list[Note]) -> Any:
            async with Lease(self.pool) as conn:
                return await conn.fetchval(sql, *params)
        return await self._retried(attempt)

    def _committed(self, started: float, notes: list[Note], writes: int) -> None:
        """A commit of `writes` writes, begun at `started` (time.perf_counter()), and the notes
        of what they wrote, for `stats`."""
        stats = self.stats
        stats.commits.append((time.perf_counter() - started, writes))
        if notes:
            stats.written.extend(notes)

    async def _retried(self, attempt: Callable[[list[Note]], Awaitable[T]]) -> T:
        """`await attempt(notes)` (a transaction, or a statement committing itself) until it is
        not aborted by a deadlock or serialisation failure, RETRIES times at most. `notes`:
        base.NOTES for this attempt, a fresh list each time, so an aborted attempt's are dropped."""
        for n in range(RETRIES):
            notes: list[Note] = []
            token = NOTES.set(notes)
            try:
                return await attempt(notes)
            except RETRYABLE:
                if n == RETRIES - 1:
                    raise
                self.retries += 1
                await asyncio.sleep(random.uniform(0, 0.002 * 2**n))
            finally:
                NOTES.reset(token)
        raise AssertionError("unreachable")

    async def _begin(self, conn: asyncpg.Connection) -> None:
        """BEGIN, and with it, in the same round trip, the check of a key let in from the cache
        (keys.py) before anything is written: a revoked key's request writes nothing. One
        message of two statements (the simple-query protocol, which takes no parameters: the
        digest is our own SHA-256 hex, checked as such) instead of two trips: recordUsage on
        PostgreSQL makes four round trips instead of five."""
        digest = UNCHECKED_KEY.get()
        if digest is None:
            await conn.execute("BEGIN")
            return
        if not _HEX64.fullmatch(digest):
            raise ValueError("a key digest is 64 hex digits")
        try:
            await conn.execute(BEGIN_CHECKING_KEY.format(digest=digest))
        except asyncpg.DivisionByZeroError:  # no valid key of that digest
            await conn.execute("ROLLBACK")
            self._key_checked(digest, False)
        self._key_checked(digest, True)

    async def _write(self, tenant: int, idempotency: Idempotency | None, now: int, job: Job, *args: Any) -> Any:
        return await self._tx(_idempotent, tenant, idempotency, now, job, *args)

    # -- the request's key (keys.py) ---------------------------------------------------------
    def known_key(self, secret: str) -> Principal | None:
        """Never: a cached key is answered by `authenticate`, which marks it unchecked."""
        return None

    def key_unchecked(self) -> bool:
        return UNCHECKED_KEY.get() is not None

    async def check_key(self) -> None:
        digest = UNCHECKED_KEY.get()
        if digest is not None:
            self._key_checked(digest, (await self._read(KEY_VALID, digest))[0][0])

    def _key_checked(self, digest: str, valid: bool) -> None:
        """What a statement that carried the key's check found. A revoked key empties the cache
        (revocations are rare) and stays unchecked, so `check_key` refuses the answer too."""
        if not valid:
            self._keys.clear()
            raise KeyRevoked()
        UNCHECKED_KEY.set(None)

    # -- reads -------------------------------------------------------------------------------
    async def _read(self, sql: str, *params: Any) -> list[asyncpg.Record]:
        conn = _SNAPSHOT.get()
        async with away():  # long work's turn is not held while PostgreSQL works
            if conn is not None:
                return await conn.fetch(sql, *params)  # type: ignore[no-any-return]
            async with Lease(self.pool) as conn:
                return await conn.fetch(sql, *params)  # type: ignore[no-any-return]

    async def _aggregate(self, tenant: Hashable, sql: str, *params: Any) -> list[asyncpg.Record]:
        """A read whose cost grows with the data: as `_read`, once one of the long-read slots
        is free for `tenant` (fairly by tenant), so that such reads never hold more than half
        the pool."""
        if _SNAPSHOT.get() is not None:
            return await self._read(sql, *params)
        async with away(), self._long.slot(tenant):
            return await self._read(sql, *params)

    @contextlib.asynccontextmanager
    async def snapshot(self, tenant: Hashable = None) -> AsyncIterator[None]:
        """Inside this block, this task's reads see one moment: one REPEATABLE READ, read-only
        transaction on a connection of its own, holding a long-read slot of `tenant`'s."""
        assert _SNAPSHOT.get() is None, "snapshot() inside snapshot()"
        async with contextlib.AsyncExitStack() as held:
            async with away():  # long work's turn is not held while waiting for a slot
                await held.enter_async_context(self._long.slot(tenant))
                conn = await held.enter_async_context(Lease(self.pool))
                await held.enter_async_context(conn.transaction(isolation="repeatable_read", readonly=True))
            token = _SNAPSHOT.set(conn)
            try:
                yield
            finally:
                _SNAPSHOT.reset(token)

    async def schema_version(self) -> int:
        rows = await self._read("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        return int(rows[0][0])

    # -- idempotency -------------------------------------------------------------------------
    async def idempotency_fingerprint(self, tenant: int, key: str) -> str | None:
        rows = await self._read("SELECT fingerprint FROM idempotency WHERE tenant = $1 AND key = $2", tenant, key)
        return rows[0][0] if rows else None

    async def claim_idempotency(self, tenant: int, idempotency: Idempotency, now: int, answer: dict[str, Any]) -> dict[str, Any]:
        return await self._write(tenant, idempotency, now, _answer, answer)  # type: ignore[no-any-return]

    async def purge_idempotency(self, older_than: int) -> int:
        """Drop the keys created before `older_than`, as far as PurgeHorizon (answers.py) allows."""
        return await self._tx(_purge_idempotency, self._purge_horizon.clamp(older_than))


async def _idempotent(conn: asyncpg.Connection, tenant: int, idem: Idempotency | None, now: int, job: Job, *args: Any) -> Any:
    """Claim the idempotency key in the write's own transaction: the primary key makes a
    concurrent duplicate wait for the first call's commit and then answer what it stored."""
    if idem is None:
        return await job(conn, *args)
    claimed = await conn.fetchval(
        "INSERT INTO idempotency (tenant, key, fingerprint, response, created_at) VALUES ($1, $2, $3, ''::bytea, $4)"
        " ON CONFLICT (tenant, key) DO NOTHING RETURNING 1",
        tenant, idem.key, idem.fingerprint, now,
    )
    if claimed is None:
        found = await conn.fetchrow(
            "SELECT fingerprint, response, compressed FROM idempotency WHERE tenant = $1 AND key = $2", tenant, idem.key
        )
        if found["fingerprint"] != idem.fingerprint:
            raise KeyReused()
        response = bytes(found["response"])
        return replayed_answer(response if found["compressed"] else response.decode("utf-8", "surrogatepass"))
    result = await job(conn, *args)
    stored = stored_answer(result)
    compressed = isinstance(stored, bytes)
    await conn.execute(
        "UPDATE idempotency SET response = $3, compressed = $4 WHERE tenant = $1 AND key = $2",
        tenant, idem.key, stored if isinstance(stored, bytes) else stored.encode("utf-8"), compressed,
    )
    return result


async def _purge_idempotency(conn: asyncpg.Connection, older_than: int) -> int:
    status = await conn.execute("DELETE FROM idempotency WHERE created_at < $1", older_than)
    return int(status.split()[-1])


async def _answer(conn: asyncpg.Connection, answer: dict[str, Any]) -> dict[str, Any]:
    return answer


def affected(status: str) -> int:
    """The row count of a command status such as `UPDATE 3`."""
    return int(status.rsplit(" ", 1)[-1])


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply what is missing; return the versions applied now. Servers starting together each
    try every missing version; a version's first statement inserts its row into
    schema_migrations, so the second server's insert waits on the first's (a row lock) and,
    once the first commits, fails and skips the version."""
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)"
        )
    except asyncpg.UniqueViolationError:  # another server created it at the same instant
        pass
    done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    applied = []
    for version, name, sql in scripts("postgres"):
        if version in done:
            continue
        try:
            async with conn.transaction():
                await conn.execute(record(version, name))
                await conn.execute(sql)
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name != "schema_migrations_pkey":
                raise
            continue  # another server applied this version first
        applied.append(version)
    return applied


async def lock_account(conn: asyncpg.Connection, tenant: int, user: str, currency: str) -> int:
    """Take the account's lock (rule 1 of this module): its balances row, created at 0 if
    missing, locked FOR UPDATE until the transaction ends; returns the balance row's value.
    Every write that reads or changes an account's money calls this first.

    The lock is tried first, since the account usually exists: one statement, where an insert
    first took two (its conflict, then the lock). Only when no row is there is it created; a
    concurrent creator's insert makes ours wait for its commit and do nothing, and the lock is
    then tried again (balances rows are never deleted, so the loop ends at the second turn).
    Nothing else is read in the locking statement on purpose: its snapshot is taken before it
    waits for the lock, so anything but the locked row itself (which FOR UPDATE re-reads at its
    newest version) may predate the previous holder's commit (a lot it added, say)."""
    while True:
        balance = await conn.fetchval(
            "SELECT balance FROM balances WHERE tenant = $1 AND user_id = $2 AND currency = $3 FOR UPDATE",
            tenant, user, currency,
        )
        if balance is not None:
            return balance  # type: ignore[no-any-return]
        created = await conn.fetchval(
            "INSERT INTO balances (tenant, user_id, currency, balance) VALUES ($1, $2, $3, 0)"
            " ON CONFLICT (tenant, user_id, currency) DO NOTHING RETURNING balance",
            tenant, user, currency,
        )
        if created is not None:  # created now: the insert holds its row lock already
            return 0
