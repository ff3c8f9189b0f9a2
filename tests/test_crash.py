"""Crash safety of the real `zapbilling serve` process (issue 7): every acknowledged write
survives a kill -9 or a SIGTERM, and nothing is ever half-applied.

The server runs as a child process (tests/procs.py) on a real port and a real SQLite file with
`--durability full`. A storm of WORKERS concurrent clients writes to it: deposits over REST,
recordUsage with a unique requestId over ZAP/msgpack (with an `api-usage` meter, so each one is
a ledger row *and* a meter event in one transaction), meter-event batches (REST and ZAP/JSON),
createCreditGrant over REST and burnCredits over ZAP/msgpack, and refunds of earlier charges
(recordUsage withdrawals: only a charge can be refunded).
Each worker owns one user and writes sequentially, so when the server dies a worker has at most
one write whose answer it never got ("in flight"), and the exact state of its user follows from
its acknowledged writes plus, for that one write, "applied" or "not applied".

After each kill the server is restarted on the same file and the test checks, from the SQLite
file (read-only) and through the API:
- every acknowledged write is there, by the id its answer gave (ledger rows, meter events,
  grants, burns in the grants' remaining cents, refunds in the original's refunded cents);
- nothing else is there: the user's ledger rows, events and grants are exactly those expected;
- each in-flight write is wholly present or wholly absent (a recordUsage's ledger row and its
  meter event both or neither; a batch of events all or none; a burn all of its grants or none;
  a refund's row and the original's refunded total both or neither);
- balances equal acknowledged deposits and refunds minus acknowledged usage (plus the in-flight
  writes found present), via the balances table and getBalance; getUsage pages, meter summaries
  and listCreditGrants agree;
- a retry of a write (same Idempotency-Key / idempotencyKey, or same requestId for recordUsage),
  acknowledged or not, gets the first answer or the write found in the file, never a second
  write; an unanswered write found absent is written by its retry, once;
- check_invariants (tests/invariants.py) holds.
The cycle repeats KILLS times on the same file, accumulating.

The moment of each kill is random.uniform within KILL_WINDOW after the storm starts, from a
seed printed at the start (`CRASH_SEED=<n> pytest -s tests/test_crash.py` replays the same
delays and the same sequence of writes per worker; thread timing still varies). Figures (kills
survived, acknowledged writes checked, in-flight writes found present/absent) are printed:
run with -s to see them.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgpack
from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector

import pg
from invariants import check_invariants
from procs import SHUTDOWN_TIMEOUT, ServerProcess, create_key

KILLS = 4  # kill -9 / restart cycles on one file
WORKERS = 10  # concurrent clients, one user each
KILL_WINDOW = (0.4, 1.6)  # seconds after the storm starts
STORM_LIMIT = 30  # seconds: a storm that has not ended this long after the kill is a hang
RETRIES_PER_KIND = 3  # acknowledged writes of each kind retried after each restart
KINDS = ("deposit", "usage", "events", "grant", "burn", "refund")
ORG = "crash"
EVENTS_METER = "crash-events"
USAGE_METER = "api-usage"  # the event name recordUsage records a meter event for

REST_ROUTES = {  # writes sent over REST (meter events: every other one over ZAP/JSON)
    "deposit": "/api/v1/billing/deposit",
    "events": "/api/v1/billing/meter-events",
    "grant": "/api/v1/billing/credit-grants",
    "refund": "/api/v1/billing/refund",
}
CONNECTION_ERRORS = (ClientError, asyncio.TimeoutError, ConnectionError, OSError, ValueError, msgpack.UnpackException)


def master_seed() -> int:
    seed = os.environ.get("CRASH_SEED")
    return int(seed) if seed else random.SystemRandom().randrange(2**32)


# -- the model: what each user must hold, from acknowledged writes ------------------------

@dataclass
class Op:
    """One write a worker sent. outcome: acked (a 2xx / result answer with its ids), unknown
    (no answer: connection error), refused (503), failed (any other error answer)."""

    id: str
    kind: str
    user: str
    params: dict[str, Any]
    outcome: str = "sent"
    result: Any = None
    detail: str = ""
    found: str = ""  # for an unanswered write after the restart: present | absent
    found_as: Any = None  # what the file shows of it when present (tx id, grant id, event ids, cents taken per grant)
    sent_at: float = 0.0  # time.monotonic() when sent and when its answer (or error) came
    done_at: float = 0.0


@dataclass
class Grant:
    priority: int
    amount: int
    remaining: int


@dataclass
class Account:
    """One user's expected state: only writes that were acknowledged, or in flight and then
    found present, are in it."""

    user: str
    balance: int = 0
    ledger: dict[str, tuple[str, int]] = field(default_factory=dict)  # tx id -> (type, amount)
    charges: dict[str, int] = field(default_factory=dict)  # refundable charges (usage): id -> amount
    refunded: dict[str, int] = field(default_factory=dict)  # original id -> refunded total
    usage: dict[str, tuple[str, int]] = field(default_factory=dict)  # requestId -> (tx id, amount)
    events: dict[str, int] = field(default_factory=dict)  # crash-events event id -> value
    grants: dict[str, Grant] = field(default_factory=dict)

    def credit(self) -> int:
        return sum(g.remaining for g in self.grants.values())

    # each apply_* takes what the server said (or what the file holds, for a write found present)
    def apply_deposit(self, tx: str, amount: int) -> None:
        self.ledger[tx] = ("deposit", amount)
        self.balance += amount

    def apply_usage(self, request_id: str, tx: str, amount: int) -> None:
        self.ledger[tx] = ("withdraw", amount)
        self.usage[request_id] = (tx, amount)
        self.charges[tx] = amount
        self.balance -= amount

    def apply_refund(self, tx: str, original: str, amount: int) -> None:
        self.ledger[tx] = ("deposit", amount)
        self.refunded[original] = self.refunded.get(original, 0) + amount
        self.balance += amount


# -- the storm ------------------------------------------------------------------------------

class Storm:
    """WORKERS sequential writers, one user each, until the server stops answering."""

    def __init__(self, base: str, key: str, accounts: list[Account], events_meter: str, seed: int, cycle: int):
        self.base, self.key, self.accounts, self.events_meter = base, key, accounts, events_meter
        self.seed, self.cycle = seed, cycle
        self.ops: list[Op] = []
        self.auth = {"Authorization": f"Bearer {key}"}

    async def run(self) -> None:
        timeout = ClientTimeout(total=20)
        async with ClientSession(connector=TCPConnector(limit=0), timeout=timeout) as session:
            await asyncio.gather(*(self.worker(session, i, a) for i, a in enumerate(self.accounts)))

    async def worker(self, session: ClientSession, index: int, account: Account) -> None:
        rng = random.Random(f"{self.seed}:{self.cycle}:{index}")
        n = 0
        while True:
            n += 1
            op = self.next_op(rng, account, f"c{self.cycle}w{index}o{n}")
            self.ops.append(op)
            op.sent_at = time.monotonic()
            try:
                await self.send(session, op, account)
            except CONNECTION_ERRORS as exc:
                op.outcome, op.detail = "unknown", repr(exc)
            op.done_at = time.monotonic()
            if op.outcome != "acked":
                return  # the server is gone (or misbehaved): at most one unanswered write per worker

    def next_op(self, rng: random.Random, a: Account, op_id: str) -> Op:
        kinds = ["deposit"] * 25 + ["usage"] * 30 + ["events"] * 15 + ["grant"] * 10
        if a.credit() > 0:
            kinds += ["burn"] * 12
        refundable = [tx for tx, amount in a.charges.items() if amount > a.refunded.get(tx, 0)]
        if refundable:
            kinds += ["refund"] * 8
        kind = rng.choice(kinds)
        if kind == "deposit":
            params = {"user": a.user, "amount": rng.randint(1, 5000), "notes": op_id, "metadata": {"op": op_id}}
        elif kind == "usage":
            params = {"user": a.user, "amount": rng.randint(1, 3000), "model": "m-crash", "provider": "p",
                      "totalTokens": rng.randint(0, 999), "requestId": op_id}
        elif kind == "events":
            params = {"events": [
                {"meterId": self.events_meter, "userId": a.user, "value": rng.randint(-50, 1000),
                 "idempotency": f"{op_id}:{j}", "dimensions": {"op": op_id}}
                for j in range(rng.randint(1, 20))
            ]}
        elif kind == "grant":
            params = {"userId": a.user, "name": op_id, "amountCents": rng.randint(1, 4000), "priority": rng.randint(0, 3)}
        elif kind == "burn":
            params = {"userId": a.user, "amount": rng.randint(1, a.credit() + 500)}
        else:
            original = rng.choice(refundable)
            left = a.charges[original] - a.refunded.get(original, 0)
            params = {"user": a.user, "amount": rng.randint(1, left), "originalTransactionId": original, "notes": op_id}
        return Op(op_id, kind, a.user, params)

    async def send(self, session: ClientSession, op: Op, a: Account) -> None:
        ok, status, body, result = await self.request(session, op)
        if ok:
            op.outcome, op.result = "acked", result
            self.apply(op, result, a)
        elif status == 503:
            op.outcome, op.detail = "refused", f"503 {body!r}"
        else:
            op.outcome, op.detail = "failed", f"{status} {body!r}"

    async def request(self, session: ClientSession, op: Op) -> tuple[bool, int, Any, Any]:
        """Send op as it was first sent (same idempotency key or requestId): (succeeded, HTTP
        status, body, result). Every write but recordUsage (deduplicated by its requestId)
        carries the op id as its idempotency key, as a retrying client does."""
        p = op.params
        if op.kind in REST_ROUTES:
            if op.kind == "events" and int(op.id.rsplit("o", 1)[1]) % 2 == 0:
                status, body = await self.zap(session, "recordMeterEvents", p, op.id, codec="json", idempotency_key=op.id)
                return status == 200 and "result" in body, status, body, body.get("result")
            status, body = await self.rest(session, REST_ROUTES[op.kind], p, idempotency_key=op.id)
            return status == 201, status, body, body
        if op.kind == "usage":
            status, body = await self.zap(session, "recordUsage", p, op.id, codec="msgpack")
        else:
            status, body = await self.zap(session, "burnCredits", p, op.id, codec="msgpack", idempotency_key=op.id)
        return status == 200 and "result" in body, status, body, body.get("result")

    @staticmethod
    def apply(op: Op, r: Any, a: Account) -> None:
        """A successful answer to op, first of its kind for the account: check it, add it."""
        p = op.params
        if op.kind == "deposit":
            assert r["amount"] == p["amount"] and r["user"] == a.user and r["type"] == "deposit", r
            a.apply_deposit(r["transactionId"], p["amount"])
        elif op.kind == "usage":
            assert r["amount"] == p["amount"] and r["type"] == "withdraw" and r["transactionId"], r
            a.apply_usage(op.id, r["transactionId"], p["amount"])
        elif op.kind == "events":
            events = r["events"]
            assert len(events) == len(p["events"]) and all(e["status"] == "created" for e in events), r
            for e, sent in zip(events, p["events"]):
                a.events[e["id"]] = sent["value"]
        elif op.kind == "grant":
            assert r["amountCents"] == r["remainingCents"] == p["amountCents"], r
            a.grants[r["id"]] = Grant(p["priority"], p["amountCents"], p["amountCents"])
        elif op.kind == "burn":
            expected = min(p["amount"], a.credit())  # the worker is sequential: nothing else burns meanwhile
            assert r["burned"] == expected and r["burned"] + r["overage"] == p["amount"], (r, expected)
            assert ("burnId" in r) == bool(r["grants"]), r  # a burn that took something names its journal rows
            for g in r["grants"]:
                a.grants[g["id"]].remaining -= g["burned"]
                assert a.grants[g["id"]].remaining == g["remainingCents"], (g, a.grants[g["id"]])
        else:
            assert r["amount"] == p["amount"] and r["originalTransactionId"] == p["originalTransactionId"], r
            a.apply_refund(r["transactionId"], p["originalTransactionId"], p["amount"])

    async def rest(self, session: ClientSession, path: str, body: dict[str, Any], idempotency_key: str) -> tuple[int, Any]:
        async with session.post(self.base + path, json=body, headers={**self.auth, "Idempotency-Key": idempotency_key}) as r:
            raw = await r.read()
            return r.status, json.loads(raw) if raw else None

    async def zap(self, session: ClientSession, method: str, params: dict[str, Any], id: str, codec: str,
                  idempotency_key: str | None = None) -> tuple[int, Any]:
        envelope = {"method": f"billing.{method}", "id": id, "params": params}
        if idempotency_key:
            envelope["idempotencyKey"] = idempotency_key
        if codec == "msgpack":
            data, ctype = msgpack.packb(envelope, use_bin_type=True), "application/msgpack"
        else:
            data, ctype = json.dumps(envelope).encode(), "application/json"
        async with session.post(self.base + "/api/v1/zap", data=data, headers={**self.auth, "Content-Type": ctype}) as r:
            raw = await r.read()
            if "msgpack" in r.headers.get("Content-Type", ""):
                return r.status, msgpack.unpackb(raw, raw=False)
            return r.status, json.loads(raw)


# -- checking the file and the API after a restart -----------------------------------------

def read_only(db: str) -> sqlite3.Connection:
    if pg.is_url(db):
        return pg.Connection(db)  # type: ignore[return-value]
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True)


class Checker:
    """Resolves in-flight writes against the file, then compares every account with the file
    and the API. Collects problems instead of stopping at the first, so a failure shows all."""

    def __init__(self, db: str, accounts: list[Account], events_meter: str, usage_meter: str):
        self.db, self.accounts, self.events_meter, self.usage_meter = db, accounts, events_meter, usage_meter
        self.by_user = {a.user: a for a in accounts}
        self.problems: list[str] = []
        self.found = Counter()  # present / absent of unanswered writes

    def problem(self, text: str) -> None:
        self.problems.append(text)

    # 1. every write without an acknowledgement: wholly present or wholly absent
    def resolve(self, ops: list[Op], *, refused_must_be_absent: bool = True) -> None:
        with read_only(self.db) as con:
            for op in ops:
                if op.outcome == "acked":
                    continue
                present = self.resolve_one(con, op, self.by_user[op.user])
                if present is None:
                    continue  # a problem was recorded
                op.found = "present" if present else "absent"
                self.found[op.found] += 1
                if present and op.outcome == "refused" and refused_must_be_absent:
                    self.problem(f"{op.id} {op.kind} was refused ({op.detail}) but is in the file")

    def resolve_one(self, con: sqlite3.Connection, op: Op, a: Account) -> bool | None:
        p = op.params
        if op.kind in ("deposit", "refund"):
            rows = con.execute("SELECT id, type, amount, refund_of FROM ledger WHERE user_id = ? AND notes = ?",
                               (a.user, op.id)).fetchall()
            if len(rows) > 1:
                return self.problem(f"{op.id} {op.kind} written {len(rows)} times: {rows}")
            if op.kind == "refund":
                original = p["originalTransactionId"]
                (refunded,), = con.execute("SELECT refunded FROM ledger WHERE id = ?", (original,)).fetchall()
                before = a.refunded.get(original, 0)
                if (refunded - before) != (p["amount"] if rows else 0):
                    return self.problem(f"{op.id} refund half-applied: refund row {'present' if rows else 'absent'},"
                                        f" original's refunded went {before} -> {refunded} (amount {p['amount']})")
            if not rows:
                return False
            tx, type_, amount, refund_of = rows[0]
            if (type_, amount) != ("deposit", p["amount"]) or refund_of != p.get("originalTransactionId"):
                return self.problem(f"{op.id} {op.kind} present with other values: {rows[0]}")
            if op.kind == "deposit":
                a.apply_deposit(tx, amount)
            else:
                a.apply_refund(tx, p["originalTransactionId"], amount)
            op.found_as = tx
            return True
        if op.kind == "usage":
            rows = con.execute("SELECT id, type, amount FROM ledger WHERE user_id = ? AND dedupe_key = ?",
                               (a.user, f"usage:{op.id}")).fetchall()
            events = con.execute("SELECT e.value FROM meter_events e JOIN ledger l ON l.id = e.ledger_id"
                                 " WHERE l.user_id = ? AND l.dedupe_key = ?", (a.user, f"usage:{op.id}")).fetchall()
            if len(rows) != len(events) or len(rows) > 1:
                return self.problem(f"{op.id} recordUsage half-applied: {len(rows)} ledger rows, {len(events)} meter events")
            if not rows:
                return False
            if rows[0][1:] != ("withdraw", p["amount"]) or events[0][0] != p["amount"]:
                return self.problem(f"{op.id} recordUsage present with other values: {rows[0]}, event {events[0]}")
            a.apply_usage(op.id, rows[0][0], p["amount"])
            op.found_as = rows[0][0]
            return True
        if op.kind == "events":
            keys = [e["idempotency"] for e in p["events"]]
            found = dict(con.execute(
                f"SELECT idempotency_key, id FROM meter_events WHERE idempotency_key IN ({','.join('?' * len(keys))})", keys
            ).fetchall())
            if found and len(found) != len(keys):
                return self.problem(f"{op.id} meter-event batch half-applied: {len(found)} of {len(keys)} events")
            if not found:
                return False
            for e in p["events"]:
                event_id = found[e["idempotency"]]
                (value, user, meter), = con.execute("SELECT e.value, e.user_id, m.id FROM meter_events e JOIN meters m ON m.seq = e.meter WHERE e.id = ?", (event_id,))
                if (value, user, meter) != (e["value"], a.user, self.events_meter):
                    return self.problem(f"{op.id} event {event_id} present with other values: {(value, user, meter)}")
                a.events[event_id] = value
            op.found_as = [found[e["idempotency"]] for e in p["events"]]
            return True
        if op.kind == "grant":
            rows = con.execute("SELECT id, amount, remaining, priority FROM credit_grants WHERE user_id = ? AND name = ?",
                               (a.user, op.id)).fetchall()
            if len(rows) > 1:
                return self.problem(f"{op.id} grant written {len(rows)} times")
            if not rows:
                return False
            gid, amount, remaining, priority = rows[0]
            if (amount, remaining, priority) != (p["amountCents"], p["amountCents"], p["priority"]):
                return self.problem(f"{op.id} grant present with other values: {rows[0]}")
            a.grants[gid] = Grant(priority, amount, remaining)
            op.found_as = gid
            return True
        if op.kind == "burn":
            actual = dict(con.execute("SELECT id, remaining FROM credit_grants WHERE user_id = ?", (a.user,)).fetchall())
            if set(actual) != set(a.grants):
                return self.problem(f"{op.id} burn: grants in the file {sorted(actual)} != expected {sorted(a.grants)}")
            taken = {gid: g.remaining - actual[gid] for gid, g in a.grants.items()}
            expected = min(p["amount"], a.credit())
            if all(t == 0 for t in taken.values()):
                return False
            if any(t < 0 for t in taken.values()) or sum(taken.values()) != expected:
                return self.problem(f"{op.id} burn half-applied or wrong: took {taken} from the grants, expected {expected} in all")
            for gid, t in taken.items():
                a.grants[gid].remaining -= t
            op.found_as = {gid: t for gid, t in taken.items() if t}
            return True
        raise AssertionError(op.kind)

    # 2. the file holds exactly what the accounts say
    def check_file(self) -> int:
        """Returns the number of acknowledged/present items compared."""
        checked = 0
        with read_only(self.db) as con:
            for a in self.accounts:
                ledger = {r[0]: (r[1], r[2]) for r in con.execute(
                    "SELECT id, type, amount FROM ledger WHERE user_id = ?", (a.user,))}
                if ledger != a.ledger:
                    missing = {k: v for k, v in a.ledger.items() if ledger.get(k) != v}
                    extra = {k: v for k, v in ledger.items() if k not in a.ledger}
                    self.problem(f"{a.user}: ledger differs: missing/wrong {dict(list(missing.items())[:5])} ({len(missing)}),"
                                 f" unexpected {dict(list(extra.items())[:5])} ({len(extra)})")
                checked += len(a.ledger)
                rows = con.execute("SELECT currency, balance, holds FROM balances WHERE user_id = ?", (a.user,)).fetchall()
                stored = {c: (b, h) for c, b, h in rows}
                if stored.get("usd", (0, 0)) != (a.balance, 0) or set(stored) - {"usd"}:
                    self.problem(f"{a.user}: balances row {stored} != expected usd {a.balance}")
                for original, amount in a.charges.items():
                    (refunded,), = con.execute("SELECT refunded FROM ledger WHERE id = ?", (original,)).fetchall() or [(None,)]
                    if refunded != a.refunded.get(original, 0):
                        self.problem(f"{a.user}: charge {original} refunded {refunded} != expected {a.refunded.get(original, 0)}")
                for request_id, (tx, _) in a.usage.items():
                    row = con.execute("SELECT id FROM ledger WHERE user_id = ? AND dedupe_key = ?",
                                      (a.user, f"usage:{request_id}")).fetchone()
                    if row is None or row[0] != tx:
                        self.problem(f"{a.user}: usage {request_id} should be {tx}, file has {row}")
                events = dict(con.execute(
                    "SELECT e.id, e.value FROM meter_events e JOIN meters m ON m.seq = e.meter WHERE e.user_id = ? AND m.id = ?",
                    (a.user, self.events_meter)))
                if events != a.events:
                    self.problem(f"{a.user}: {len(events)} events in the file, {len(a.events)} expected;"
                                 f" missing {len(set(a.events) - set(events))}, unexpected {len(set(events) - set(a.events))}")
                checked += len(a.events)
                usage_events = dict(con.execute(
                    "SELECT e.ledger_id, e.value FROM meter_events e JOIN meters m ON m.seq = e.meter WHERE e.user_id = ? AND m.id = ?",
                    (a.user, self.usage_meter)))
                want = {tx: amount for tx, amount in a.usage.values()}
                if usage_events != want:
                    self.problem(f"{a.user}: usage meter events {len(usage_events)} != expected {len(want)}"
                                 f" (missing {len(set(want) - set(usage_events))}, unexpected {len(set(usage_events) - set(want))})")
                grants = {r[0]: (r[1], r[2]) for r in con.execute(
                    "SELECT id, amount, remaining FROM credit_grants WHERE user_id = ?", (a.user,))}
                want_grants = {gid: (g.amount, g.remaining) for gid, g in a.grants.items()}
                if grants != want_grants:
                    self.problem(f"{a.user}: grants differ: file {grants}, expected {want_grants}")
                checked += len(a.grants)
        return checked

    # 3. the API of the restarted server agrees
    async def check_api(self, base: str, key: str) -> None:
        auth = {"Authorization": f"Bearer {key}"}
        async with ClientSession(timeout=ClientTimeout(total=30)) as s:
            for i, a in enumerate(self.accounts):
                if i % 2:
                    async with s.get(base + "/api/v1/billing/balance", params={"user": a.user}, headers=auth) as r:
                        body = await r.json()
                        got = body.get("balance") if r.status == 200 else (r.status, body)
                else:
                    env = msgpack.packb({"method": "billing.getBalance", "id": 1, "params": {"user": a.user}})
                    async with s.post(base + "/api/v1/zap", data=env, headers={**auth, "Content-Type": "application/msgpack"}) as r:
                        body = msgpack.unpackb(await r.read())
                        got = body["result"]["balance"] if "result" in body else body
                if got != a.balance:
                    self.problem(f"{a.user}: getBalance says {got}, expected {a.balance}")
                seen: list[str] = []
                after = None
                while True:
                    q = {"user": a.user, "limit": "150", **({"startingAfter": after} if after else {})}
                    async with s.get(base + "/api/v1/billing/usage", params=q, headers=auth) as r:
                        page = await r.json()
                    if r.status != 200:
                        self.problem(f"{a.user}: getUsage answered {r.status} {page}")
                        break
                    seen += [u["transactionId"] for u in page["usage"]]
                    if not page["hasMore"]:
                        break
                    after = page["usage"][-1]["transactionId"]
                want = {tx for tx, _ in a.usage.values()}
                if len(seen) != len(set(seen)) or set(seen) != want:
                    self.problem(f"{a.user}: getUsage pages list {len(seen)} rows ({len(set(seen))} distinct), expected {len(want)}")
                q = {"meterId": self.events_meter, "userId": a.user}
                async with s.get(base + "/api/v1/billing/meter-events/summary", params=q, headers=auth) as r:
                    summary = await r.json()
                if (summary.get("value"), summary.get("eventCount")) != (sum(a.events.values()), len(a.events)):
                    self.problem(f"{a.user}: events summary {summary}, expected value {sum(a.events.values())} count {len(a.events)}")
                async with s.get(base + "/api/v1/billing/credit-grants", params={"userId": a.user}, headers=auth) as r:
                    grants = await r.json()
                got_grants = {g["id"]: g["remainingCents"] for g in grants.get("grants", [])}
                if got_grants != {gid: g.remaining for gid, g in a.grants.items()}:
                    self.problem(f"{a.user}: listCreditGrants {got_grants} != expected")

    # 4. a retry (same idempotency key, or same requestId for recordUsage) is answered with the first answer
    async def retry(self, storm: "Storm", ops: list[Op], rng: random.Random) -> Counter:
        """Retries, on the restarted server, every unanswered write of the storm (as a client
        does after losing an answer) and RETRIES_PER_KIND acknowledged writes of each kind. An
        acknowledged one must get its first answer back unchanged; an unanswered one found
        present must get the write that is in the file (never a second one); one found absent
        is written now, once (and then counts as acknowledged). The next check of the file
        shows that no retry wrote anything twice."""
        counts = Counter()
        sample = [op for op in ops if op.outcome != "acked" and op.found]
        for kind in KINDS:
            acked = [op for op in ops if op.kind == kind and op.outcome == "acked"]
            sample += rng.sample(acked, min(RETRIES_PER_KIND, len(acked)))
        async with ClientSession(timeout=ClientTimeout(total=30)) as session:
            for op in sample:
                ok, status, body, r = await storm.request(session, op)
                if not ok:
                    self.problem(f"retry of {op.id} {op.kind} answered {status} {body}")
                    continue
                if op.outcome == "acked":
                    counts["replayed"] += 1
                    if r != op.result:
                        self.problem(f"retry of acknowledged {op.id} {op.kind} answered {r}, the first answer was {op.result}")
                elif op.found == "present":
                    counts["replayed"] += 1
                    got = {"events": lambda: [e["id"] for e in r["events"]],
                           "burn": lambda: {g["id"]: g["burned"] for g in r["grants"]},
                           "grant": lambda: r["id"]}.get(op.kind, lambda: r["transactionId"])()
                    if got != op.found_as:
                        self.problem(f"retry of unanswered {op.id} {op.kind} answered {got}, the file holds {op.found_as}")
                else:
                    counts["written"] += 1
                    try:
                        Storm.apply(op, r, self.by_user[op.user])
                    except AssertionError as exc:
                        self.problem(f"retry of absent {op.id} {op.kind}: {exc}")
        return counts


# -- setup shared by both tests -------------------------------------------------------------

async def prepare(db: str, tmp_path) -> tuple[str, str, str, list[Account]]:
    """A key (by the CLI), the two meters, WORKERS fresh accounts: (key, events meter id, usage meter id, accounts)."""
    key = create_key(db, ORG, "test")
    server = await ServerProcess(db, tmp_path).start_ready()
    try:
        async with ClientSession() as s:
            auth = {"Authorization": f"Bearer {key}"}
            meters = {}
            for event_name in (EVENTS_METER, USAGE_METER):
                async with s.post(server.base + "/api/v1/billing/meters", headers=auth,
                                  json={"name": event_name, "eventName": event_name}) as r:
                    assert r.status == 201, await r.text()
                    meters[event_name] = (await r.json())["id"]
    finally:
        assert server.terminate() == 0, server.log()
    accounts = [Account(f"{ORG}/w{i}") for i in range(WORKERS)]
    return key, meters[EVENTS_METER], meters[USAGE_METER], accounts


def describe(ops: list[Op]) -> str:
    acked = Counter(op.kind for op in ops if op.outcome == "acked")
    return ", ".join(f"{k} {n}" for k, n in sorted(acked.items()))


def failed_ops(ops: list[Op]) -> list[str]:
    return [f"{op.id} {op.kind}: {op.detail}" for op in ops if op.outcome == "failed"]


# -- the tests -------------------------------------------------------------------------------


async def check_restarted(db: str, tmp_path: Any, checker: "Checker", key: str, **server: Any) -> int:
    """Start the server on `db` again and check the file and the API against what was
    acknowledged, then the invariants. Returns how many rows were checked in the file."""
    restarted = await ServerProcess(db, tmp_path, **server).start_ready()
    try:
        checked = checker.check_file()
        await checker.check_api(restarted.base, key)
    finally:
        assert restarted.terminate() == 0, restarted.log()[-3000:]
    assert not checker.problems, "after a restart:\n" + "\n".join(checker.problems[:40])
    check_invariants(db)  # raises AssertionError listing every violation
    return checked


async def test_kill_9_mid_storm_loses_no_acknowledged_write_and_half_applies_nothing(tmp_path, db_path):
    seed = master_seed()
    rng = random.Random(seed)
    print(f"\n[crash] seed {seed} (replay: CRASH_SEED={seed} pytest -s tests/test_crash.py)")
    db = db_path
    key, events_meter, usage_meter, accounts = await prepare(db, tmp_path)
    totals = Counter()
    for cycle in range(1, KILLS + 1):
        server = await ServerProcess(db, tmp_path, durability="full").start_ready()
        try:
            storm = Storm(server.base, key, accounts, events_meter, seed, cycle)
            delay = rng.uniform(*KILL_WINDOW)
            task = asyncio.create_task(storm.run())
            await asyncio.sleep(delay)
            assert not task.done(), f"the storm ended before the kill: {failed_ops(storm.ops) or storm.ops[-3:]}"
            server.crash()  # the sender process too: alive, it would close its connection cleanly and checkpoint
            await asyncio.wait_for(task, STORM_LIMIT)
        finally:
            server.stop()
        ops = storm.ops
        acked = sum(op.outcome == "acked" for op in ops)
        assert acked > 0, "nothing was acknowledged before the kill: the storm did not run"
        assert not failed_ops(ops), f"error answers during the storm (before the kill): {failed_ops(ops)}"

        restarted = await ServerProcess(db, tmp_path, durability="full").start_ready()
        try:
            checker = Checker(db, accounts, events_meter, usage_meter)
            checker.resolve(ops)
            checked = checker.check_file()
            await checker.check_api(restarted.base, key)
            assert not checker.problems, f"cycle {cycle} (seed {seed}):\n" + "\n".join(checker.problems[:40])
            check_invariants(db)  # raises AssertionError listing every violation
            retried = await checker.retry(Storm(restarted.base, key, accounts, events_meter, seed, cycle), ops, rng)
            assert not checker.problems, f"cycle {cycle} (seed {seed}):\n" + "\n".join(checker.problems[:40])
        finally:
            restarted.stop()
        totals.update(kills=1, acked=acked, present=checker.found["present"], absent=checker.found["absent"],
                      replayed=retried["replayed"], written=retried["written"])
        print(f"[crash] cycle {cycle}: kill -9 at {delay:.2f}s; acknowledged {acked} ({describe(ops)});"
              f" in flight {checker.found['present'] + checker.found['absent']}: present {checker.found['present']},"
              f" absent {checker.found['absent']}; {checked} rows/events/grants checked in the file;"
              f" retries: {retried['replayed']} answered with the first answer / the write in the file,"
              f" {retried['written']} written now")

    # the final state once more, after a clean stop, with nothing running
    checked = await check_restarted(db, tmp_path, Checker(db, accounts, events_meter, usage_meter), key, durability="full")
    assert totals["kills"] == KILLS
    print(f"[crash] kills survived {totals['kills']}; acknowledged writes checked {totals['acked']}"
          f" (all re-checked after every restart; {checked} rows/events/grants in the final file);"
          f" in-flight writes present {totals['present']}, absent {totals['absent']};"
          f" retries after restart answered with the original {totals['replayed']}, written then {totals['written']}")


async def test_sigterm_mid_storm_finishes_or_refuses_in_flight_writes_and_exits_zero(tmp_path, db_path):
    """SIGTERM during the storm: each request is answered (and then kept) or refused (a
    connection error or a 503, and then not written); the process exits 0 within the shutdown
    timeout; after a restart every acknowledged write is there and the invariants hold."""
    seed = master_seed()
    rng = random.Random(seed)
    print(f"\n[sigterm] seed {seed} (replay: CRASH_SEED={seed} pytest -s tests/test_crash.py)")
    db = db_path
    key, events_meter, usage_meter, accounts = await prepare(db, tmp_path)
    server = await ServerProcess(db, tmp_path, durability="full").start_ready()
    try:
        storm = Storm(server.base, key, accounts, events_meter, seed, 1)
        delay = rng.uniform(*KILL_WINDOW)
        task = asyncio.create_task(storm.run())
        await asyncio.sleep(delay)
        assert not task.done(), f"the storm ended before SIGTERM: {failed_ops(storm.ops) or storm.ops[-3:]}"
        sent = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(task, STORM_LIMIT)
        try:
            code = await asyncio.to_thread(server.proc.wait, SHUTDOWN_TIMEOUT + 5)
        except Exception:
            code = None
        took = time.monotonic() - sent
        log = server.log()
    finally:
        server.stop()
    ops = storm.ops
    acked = sum(op.outcome == "acked" for op in ops)
    assert acked > 0
    assert code == 0, f"exit status {code} {took:.1f}s after SIGTERM:\n{log[-3000:]}"
    assert not failed_ops(ops), f"requests answered with an error during the stop (not a refusal): {failed_ops(ops)}"
    assert "Traceback" not in log, log[-3000:]

    restarted = await ServerProcess(db, tmp_path, durability="full").start_ready()
    try:
        checker = Checker(db, accounts, events_meter, usage_meter)
        checker.resolve(ops)
        checked = checker.check_file()
        await checker.check_api(restarted.base, key)
    finally:
        assert restarted.terminate() == 0, restarted.log()
    assert not checker.problems, f"seed {seed}:\n" + "\n".join(checker.problems[:40])
    # a graceful stop finishes what it started: a write whose answer never came was refused, not kept
    kept = [f"{op.id} {op.kind} ({op.detail})" for op in ops if op.outcome != "acked" and op.found == "present"]
    assert not kept, f"written although the client got no answer (a graceful stop must answer it): {kept}"
    check_invariants(db)  # raises AssertionError listing every violation
    finished = sum(op.outcome == "acked" and op.sent_at < sent < op.done_at for op in ops)
    print(f"[sigterm] SIGTERM at {delay:.2f}s, exit 0 after {took:.2f}s; {finished} requests in flight at the signal"
          f" were answered after it; acknowledged {acked} ({describe(ops)}),"
          f" all present; refused {checker.found['present'] + checker.found['absent']}:"
          f" present {checker.found['present']}, absent {checker.found['absent']}; {checked} rows/events/grants checked")
