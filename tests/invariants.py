"""What must hold in the database after any sequence of acknowledged calls, checked straight on
the server's SQLite file (a read-only connection, plain SQL, no service code):

    check_invariants(db_path)   -> None, or AssertionError listing every violation found

- ledger: no amount <= 0; `type` is a known transaction type; ledger_tags (if it exists) holds
  exactly the split tags of the rows not tagged only '' or 'api-usage';
- running balances (store/ledger.py): for every (tenant, user, currency) the `balances` row equals
  the sum of its ledger rows, deposits + and withdrawals - (refunds are deposits, credit-expired
  forfeits are withdrawals; `hold` / `hold-removed` rows move no money). The store writes no
  `transfer` rows and nothing defines their sign, so one found is reported rather than guessed;
- expiring deposits: `remaining` is set only on a deposit with `expires_at`, and lies in
  0..amount; a `credit-expired` forfeit names an expiring deposit of the same account, which it
  left at remaining 0, at most one forfeit per deposit and never more than the deposit;
- refunds: each refund row names an original deposit/withdraw of the same tenant, user and
  currency; per original, the refunds sum to its `refunded` column and never exceed its amount;
- who wrote it (`key_id`, if the column exists): a ledger or credit journal row names a key of its
  own tenant, or `system` (only on what the sweep writes by itself: forfeits and expire rows), or
  nothing ('': rows written before keys were recorded);
- credit grants: amount > 0 and 0 <= remaining <= amount (the table's CHECKs, re-checked). Every
  change of `remaining` is a row of the grants' journal, `credit_transactions` (store/grants.py),
  written in the change's transaction, so when that table exists, per grant:
  its rows (in insertion order) start with one `grant` row of +amount; each row's
  `remaining_after` is the running sum of the amounts so far; the sum equals the grant's
  `remaining`; signs follow the type (grant > 0, burn and expire < 0, void <= 0); a voided grant
  keeps nothing and its journal ends with its one void row; an expire row is dated at or after the
  grant's expiry; every row has the grant's tenant, user and currency. A `burn_id` is set on burn
  rows only, and the rows of one burn (one burnCredits call) share its tenant, user, currency,
  time, key and meter, touching each grant at most once; `meter_id` appears on burn rows only;
- meter events: no idempotency key twice within a tenant;
- holds (only if a `holds` table exists): amount > 0, status known, captured_amount set exactly
  when captured and within 1..amount, a capture's transaction a withdraw of that amount;
- events (only if an `events` table exists; the outbox, billing/events.py): every change that
  must have an event has exactly one, about it (`subject`), of its type: a caller's deposit
  (deposit.created), a refund (refund.created), a forfeit (credit.expired), a hold captured,
  released or marked expired (hold.<status>), a grant's void and expire journal rows
  (grant.voided, grant.expired) and a burn row that left it at 0 (grant.depleted); a usage
  withdrawal has at most one usage.recorded (one only while an endpoint named it). And every event
  of those types is about such a change. Rows from before key ids were recorded (key_id '',
  migrated from before 0004, long before the outbox) and holds settled by no server of today
  (settled_at NULL) predate the outbox and are not asked for one; nor is a change older than
  the outbox's purge (events_purged: events past their retention are deleted). An event's
  user_id (migration 9) is the account its data names, but for a usage.recorded on SQLite
  (migration 12), found by account through its ledger row: NULL there, and its row is `evented`
  and of the account its data names; a row is `evented` only if it has its usage.recorded (or
  had, before the purge);
- every row's tenant exists; PRAGMA integrity_check is 'ok'; PRAGMA foreign_key_check is empty.

The queries deliberately do not rely on the schema's CHECK constraints or unique indexes: a
corruption that slipped past them (or a migration that dropped one) is still reported.
"""
from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any

try:
    from . import pg
except ImportError:  # run as a script, from tests/
    import pg  # type: ignore[no-redef]

LEDGER_TYPES = {"deposit", "withdraw", "hold", "hold-removed", "transfer"}
BALANCE_SIGN = {"deposit": 1, "withdraw": -1, "hold": 0, "hold-removed": 0}
HOLD_STATUSES = {"pending", "captured", "released", "expired"}
EXPIRED_TAG = "credit-expired"
USAGE_TAG = "api-usage"
GRANT_EVENTS = {"void": ("grant.voided", "voided"), "expire": ("grant.expired", "expired"), "burn": ("grant.depleted", "burned to 0")}
CHANGE_EVENTS = {
    "deposit.created", "refund.created", "credit.expired", "hold.captured", "hold.released", "hold.expired",
    "grant.depleted", "grant.voided", "grant.expired", "usage.recorded",
}
SYSTEM_KEY = "system"
JOURNAL_SIGN = {  # a credit journal row's type: (its amount's sign in words, the test)
    "grant": ("> 0", lambda a: a > 0),
    "burn": ("< 0", lambda a: a < 0),
    "expire": ("< 0", lambda a: a < 0),
    "void": ("<= 0", lambda a: a <= 0),  # a void of a grant with nothing left takes nothing
}


def connect_ro(db_path: str | Path) -> sqlite3.Connection:
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    return con


def find_violations(db_path: str | Path) -> list[str]:
    """Every violation, one line each; empty when the database is sound. `db_path` may be a
    PostgreSQL URL: the same checks run there (but for SQLite's file-level PRAGMAs)."""
    if pg.is_url(db_path):
        con = pg.Connection(str(db_path))
        try:
            return _Checker(con).run()  # type: ignore[arg-type]
        finally:
            con.close()
    if not Path(db_path).is_file():
        return [f"{db_path}: no database file"]
    try:
        con = connect_ro(db_path)
    except sqlite3.Error as exc:
        return [f"{db_path}: cannot open read-only: {exc}"]
    try:
        return _Checker(con).run()
    except sqlite3.DatabaseError as exc:  # a malformed file can fail any query
        return [f"{db_path}: the database cannot be read: {exc}"]
    finally:
        con.close()


def check_invariants(db_path: str | Path) -> None:
    violations = find_violations(db_path)
    if violations:
        raise AssertionError(
            f"{len(violations)} invariant violation(s) in {db_path}:\n" + "\n".join(f"  - {v}" for v in violations)
        )


class _Checker:
    def __init__(self, con: sqlite3.Connection):
        self.con = con
        self.out: list[str] = []
        self.postgres = isinstance(con, pg.Connection)
        if self.postgres:
            self.tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
        else:
            self.tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def q(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        if self.postgres:  # the one SQLite-only function the checks use
            sql = sql.replace("GROUP_CONCAT(", "string_agg(")
        return self.con.execute(sql, params).fetchall()

    def bad(self, message: str) -> None:
        self.out.append(message)

    def columns(self, table: str) -> set[str]:
        if self.postgres:
            return {r[0] for r in self.q("SELECT column_name FROM information_schema.columns WHERE table_name = ?", (table,))}
        return {r[1] for r in self.q(f"PRAGMA table_info({table})")}

    def run(self) -> list[str]:
        self.integrity()
        if "ledger" in self.tables:
            self.ledger_rows()
            self.balances()
            self.expiring_deposits()
            self.forfeits()
            self.refunds()
            if "ledger_tags" in self.tables:
                self.ledger_tags()
        if "credit_grants" in self.tables:
            self.grants()
            if "credit_transactions" in self.tables:
                self.credit_journal()
                self.burns()
        self.writers()
        if "meter_events" in self.tables:
            self.meter_events()
        if "holds" in self.tables:
            self.holds()
        if "events" in self.tables:
            self.events()
        self.tenants_exist()
        return self.out

    # -- file level -------------------------------------------------------------------------
    def integrity(self) -> None:
        if self.postgres:  # PostgreSQL enforces foreign keys itself and has no quick whole-file check
            return
        result = [r[0] for r in self.q("PRAGMA integrity_check")]
        if result != ["ok"]:
            for line in result[:20]:
                self.bad(f"PRAGMA integrity_check: {line}")
        for table, rowid, parent, fkid in self.q("PRAGMA foreign_key_check"):
            self.bad(f"PRAGMA foreign_key_check: {table} rowid {rowid} refers to a missing row of {parent} (constraint {fkid})")

    def tenants_exist(self) -> None:
        if "tenants" not in self.tables:
            return
        for table in sorted(self.tables):
            if table == "tenants" or table.startswith("sqlite_") or "tenant" not in self.columns(table):
                continue
            for tenant, n in self.q(
                f"SELECT tenant, COUNT(*) FROM {table} WHERE tenant NOT IN (SELECT id FROM tenants) GROUP BY tenant"
            ):
                self.bad(f"{table}: {n} row(s) of tenant {tenant}, which is not in tenants")

    # -- ledger ----------------------------------------------------------------------------
    def ledger_rows(self) -> None:
        for r in self.q("SELECT id, tenant, user_id, currency, type, amount FROM ledger WHERE amount IS NULL OR amount <= 0 ORDER BY seq"):
            self.bad(f"ledger row {r['id']} (tenant {r['tenant']}, {r['user_id']}, {r['currency']}, {r['type']}): amount {r['amount']} <= 0")
        for r in self.q("SELECT id, type FROM ledger ORDER BY seq"):
            if r["type"] not in LEDGER_TYPES:
                self.bad(f"ledger row {r['id']}: unknown type {r['type']!r}")
            elif r["type"] == "transfer":
                self.bad(f"ledger row {r['id']}: a transfer row, but the store defines no sign for transfers"
                         f" (update tests/invariants.py when transfers are implemented)")
        for r in self.q(
            "SELECT tenant, user_id, dedupe_key, COUNT(*) n FROM ledger WHERE dedupe_key IS NOT NULL"
            " GROUP BY tenant, user_id, dedupe_key HAVING COUNT(*) > 1"
        ):
            self.bad(f"ledger: dedupe key {r['dedupe_key']!r} appears {r['n']} times for tenant {r['tenant']} user {r['user_id']!r}")

    def ledger_tags(self) -> None:
        """ledger_tags (migration 0008) holds one entry per distinct comma-separated tag of at most
        255 characters of every ledger row (nothing trimmed) but those tagged exactly '' or 'api-usage', with the row's
        tenant, user, time and seq, and nothing else."""
        want: set[tuple[Any, ...]] = set()
        rows: dict[int, sqlite3.Row] = {}
        for r in self.q(f"SELECT seq, id, tenant, user_id, tags, created_at FROM ledger WHERE tags NOT IN ('', '{USAGE_TAG}')"):
            rows[r["seq"]] = r
            want |= {(r["tenant"], r["user_id"], tag, r["created_at"], r["seq"]) for tag in r["tags"].split(",")
                     if len(tag) <= 255}  # a longer tag has none (migration 18): no filter can name it
        have = {tuple(r) for r in self.q("SELECT tenant, user_id, tag, created_at, seq FROM ledger_tags")}
        for tenant, user, tag, at, seq in sorted(want - have):
            r = rows[seq]
            self.bad(f"ledger_tags: ledger row {r['id']} (tags {r['tags']!r}) lacks its entry for tag {tag!r}")
        for tenant, user, tag, at, seq in sorted(have - want):
            found = self.q("SELECT id, tags FROM ledger WHERE seq = ?", (seq,))
            if found:
                self.bad(f"ledger_tags: ledger row {found[0]['id']} (tags {found[0]['tags']!r}) has an entry for tag {tag!r},"
                         " which it does not bear")
            else:
                self.bad(f"ledger_tags: an entry for tag {tag!r} (tenant {tenant}, {user!r}) names seq {seq}, no ledger row")

    def balances(self) -> None:
        sums: dict[tuple[int, str, str], int] = defaultdict(int)
        # summed here, not with SQL's SUM: a user's deposits alone may pass the int64 range while
        # the balance (deposits - withdrawals) stays inside it, and SQLite's SUM would overflow
        for r in self.q("SELECT tenant, user_id, currency, type, amount FROM ledger"):
            sums[(r["tenant"], r["user_id"], r["currency"])] += BALANCE_SIGN.get(r["type"], 0) * r["amount"]
        stored = {(r["tenant"], r["user_id"], r["currency"]): r["balance"] for r in self.q("SELECT tenant, user_id, currency, balance FROM balances")}
        for account in sorted(set(sums) | set(stored), key=repr):
            tenant, user, currency = account
            want, have = sums.get(account, 0), stored.get(account)
            if have is None:
                self.bad(f"balance of tenant {tenant} user {user!r} {currency}: no balances row, ledger rows sum to {want}")
            elif have != want:
                self.bad(f"balance of tenant {tenant} user {user!r} {currency}: stored {have} != ledger sum {want} (off by {have - want:+d})")

    def expiring_deposits(self) -> None:
        for r in self.q("SELECT id, type, amount, expires_at, remaining FROM ledger WHERE remaining IS NOT NULL ORDER BY seq"):
            if r["type"] != "deposit" or r["expires_at"] is None:
                self.bad(f"ledger row {r['id']}: remaining {r['remaining']} on a {r['type']} without expiry"
                         f" (only expiring deposits have a remainder)")
            if not 0 <= r["remaining"] <= r["amount"]:
                self.bad(f"expiring deposit {r['id']}: remaining {r['remaining']} outside 0..{r['amount']}")
        for r in self.q("SELECT id FROM ledger WHERE type = 'deposit' AND expires_at IS NOT NULL AND remaining IS NULL ORDER BY seq"):
            self.bad(f"expiring deposit {r['id']}: remaining is NULL")

    def forfeits(self) -> None:
        """A forfeit is a withdraw tagged credit-expired, as the service tells one (billing/ledger.py
        is_charge, the metrics): a caller's deposit may carry any tags, that one included (the
        fuzzer sends it), and stays a deposit."""
        per_deposit: dict[str, list[sqlite3.Row]] = defaultdict(list)
        for r in self.q(f"SELECT id, tenant, user_id, currency, type, amount, metadata FROM ledger"
                        f" WHERE tags = '{EXPIRED_TAG}' AND type = 'withdraw' ORDER BY seq"):
            try:
                lot = json.loads(r["metadata"] or "{}").get("expiredTransactionId")
            except (ValueError, AttributeError):
                lot = None
            if not lot:
                self.bad(f"forfeit {r['id']}: metadata names no expiredTransactionId")
                continue
            per_deposit[lot].append(r)
        for lot_id, forfeits in per_deposit.items():
            found = self.q("SELECT tenant, user_id, currency, type, amount, expires_at, remaining FROM ledger WHERE id = ?", (lot_id,))
            ids = ", ".join(f["id"] for f in forfeits)
            if not found:
                self.bad(f"forfeit(s) {ids}: expired deposit {lot_id} does not exist")
                continue
            d = found[0]
            if len(forfeits) > 1:
                self.bad(f"expired deposit {lot_id} forfeited {len(forfeits)} times ({ids})")
            for f in forfeits:
                if (f["tenant"], f["user_id"], f["currency"]) != (d["tenant"], d["user_id"], d["currency"]):
                    self.bad(f"forfeit {f['id']} (tenant {f['tenant']}, {f['user_id']!r}, {f['currency']}) names deposit {lot_id}"
                             f" of another account (tenant {d['tenant']}, {d['user_id']!r}, {d['currency']})")
            if d["type"] != "deposit" or d["expires_at"] is None:
                self.bad(f"forfeit(s) {ids}: {lot_id} is not an expiring deposit")
            if d["remaining"] not in (0, None):
                self.bad(f"expired deposit {lot_id}: forfeited but remaining is still {d['remaining']}")
            total = sum(f["amount"] for f in forfeits)
            if total > d["amount"]:
                self.bad(f"expired deposit {lot_id}: forfeits sum to {total}, more than its amount {d['amount']}")

    def refunds(self) -> None:
        per_original: dict[str, int] = defaultdict(int)
        for r in self.q("SELECT id, tenant, user_id, currency, type, amount, refund_of FROM ledger WHERE refund_of IS NOT NULL ORDER BY seq"):
            found = self.q("SELECT tenant, user_id, currency, type FROM ledger WHERE id = ?", (r["refund_of"],))
            if not found:
                self.bad(f"refund {r['id']}: original {r['refund_of']} does not exist")
                continue
            o = found[0]
            if (o["tenant"], o["user_id"], o["currency"]) != (r["tenant"], r["user_id"], r["currency"]):
                self.bad(f"refund {r['id']} (tenant {r['tenant']}, {r['user_id']!r}, {r['currency']}) refunds {r['refund_of']}"
                         f" of another account (tenant {o['tenant']}, {o['user_id']!r}, {o['currency']})")
            if o["type"] not in ("deposit", "withdraw"):
                self.bad(f"refund {r['id']}: original {r['refund_of']} is a {o['type']}, not a deposit or withdraw")
            if r["type"] != "deposit":
                self.bad(f"refund {r['id']}: a {r['type']}, not a deposit")
            per_original[r["refund_of"]] += r["amount"]
        for r in self.q("SELECT id, amount, refunded FROM ledger WHERE refunded != 0 OR refunded IS NULL ORDER BY seq"):
            if r["id"] not in per_original:
                self.bad(f"original {r['id']}: refunded column {r['refunded']} but no refund rows refer to it")
        for original, total in per_original.items():
            found = self.q("SELECT amount, refunded FROM ledger WHERE id = ?", (original,))
            if not found:
                continue
            amount, refunded = found[0]
            if total > amount:
                self.bad(f"original {original}: refunds sum to {total}, more than its amount {amount}")
            if total != refunded:
                self.bad(f"original {original}: refunds sum to {total} but its refunded column is {refunded}")

    # -- grants, events, holds ---------------------------------------------------------------
    def grants(self) -> None:
        for r in self.q("SELECT id, tenant, user_id, amount, remaining FROM credit_grants ORDER BY seq"):
            if r["amount"] is None or r["amount"] <= 0:
                self.bad(f"credit grant {r['id']}: amount {r['amount']} <= 0")
            if r["remaining"] is None or r["remaining"] < 0:
                self.bad(f"credit grant {r['id']} (tenant {r['tenant']}, {r['user_id']!r}): remaining {r['remaining']} is negative")
            elif r["amount"] is not None and r["remaining"] > r["amount"]:
                self.bad(f"credit grant {r['id']} (tenant {r['tenant']}, {r['user_id']!r}): remaining {r['remaining']} > amount {r['amount']}")

    def credit_journal(self) -> None:
        grants = {r["id"]: r for r in self.q(
            "SELECT id, tenant, user_id, currency, amount, remaining, expires_at, voided_at FROM credit_grants ORDER BY seq"
        )}
        rows: dict[str, list[sqlite3.Row]] = defaultdict(list)
        for r in self.q(
            "SELECT seq, id, tenant, grant_id, user_id, currency, type, amount, remaining_after, burn_id, meter_id,"
            " created_at FROM credit_transactions ORDER BY seq"
        ):
            what = f"credit transaction {r['id']} ({r['type']} of grant {r['grant_id']})"
            if r["type"] not in JOURNAL_SIGN:
                self.bad(f"{what}: unknown type {r['type']!r}")
            elif not isinstance(r["amount"], int) or not JOURNAL_SIGN[r["type"]][1](r["amount"]):
                self.bad(f"{what}: amount {r['amount']}, but the amount of a {r['type']} row is {JOURNAL_SIGN[r['type']][0]}")
            if not isinstance(r["remaining_after"], int) or r["remaining_after"] < 0:
                self.bad(f"{what}: remaining_after {r['remaining_after']} is negative")
            if (r["burn_id"] is not None) != (r["type"] == "burn"):
                self.bad(f"{what}: burn_id {r['burn_id']!r} (a burn row has one, no other row does)")
            if r["meter_id"] is not None and r["type"] != "burn":
                self.bad(f"{what}: meter_id {r['meter_id']!r} on a row that is not a burn")
            g = grants.get(r["grant_id"])
            if g is None:
                self.bad(f"{what}: grant {r['grant_id']} does not exist")
                continue
            if (r["tenant"], r["user_id"], r["currency"]) != (g["tenant"], g["user_id"], g["currency"]):
                self.bad(f"{what} (tenant {r['tenant']}, {r['user_id']!r}, {r['currency']}) is not of its grant's"
                         f" tenant, user and currency (tenant {g['tenant']}, {g['user_id']!r}, {g['currency']})")
            rows[r["grant_id"]].append(r)
        for grant_id, g in grants.items():
            self._grant_history(g, rows.get(grant_id, []))
        for r in self.q("SELECT id, COUNT(*) n FROM credit_transactions GROUP BY id HAVING COUNT(*) > 1"):
            self.bad(f"credit transaction id {r['id']} appears {r['n']} times")

    def _grant_history(self, g: sqlite3.Row, rows: list[sqlite3.Row]) -> None:
        name = f"credit grant {g['id']} (tenant {g['tenant']}, {g['user_id']!r})"
        if not rows:
            self.bad(f"{name}: no journal rows, but remaining {g['remaining']}")
            return
        first, creations = rows[0], [r for r in rows if r["type"] == "grant"]
        if first["type"] != "grant" or first["amount"] != g["amount"] or len(creations) != 1:
            self.bad(f"{name}: the journal does not open with one grant row of +{g['amount']}"
                     f" (first: {first['type']} {first['amount']}; {len(creations)} grant row(s))")
        running = 0
        for r in rows:
            running += r["amount"] if isinstance(r["amount"], int) else 0
            if r["remaining_after"] != running:
                self.bad(f"{name}: credit transaction {r['id']} ({r['type']}) says remaining_after {r['remaining_after']},"
                         f" but the rows up to it sum to {running}")
                break  # one break in the chain makes every later row disagree too
        total = sum(r["amount"] for r in rows if isinstance(r["amount"], int))
        if total != g["remaining"]:
            self.bad(f"{name}: journal sums to {total} but remaining is {g['remaining']} (off by {g['remaining'] - total:+d})")
        voids = [r for r in rows if r["type"] == "void"]
        if g["voided_at"] is None and voids:
            self.bad(f"{name}: not voided, but its journal has a void row ({voids[0]['id']})")
        if g["voided_at"] is not None:
            if g["remaining"] != 0:
                self.bad(f"{name}: voided but remaining is still {g['remaining']}")
            if len(voids) != 1 or rows[-1]["type"] != "void":
                self.bad(f"{name}: voided, but its journal does not end with its one void row"
                         f" ({len(voids)} void row(s); last: {rows[-1]['type']})")
        expires = [r for r in rows if r["type"] == "expire"]
        if len(expires) > 1:
            self.bad(f"{name}: expired {len(expires)} times")
        for r in expires:
            if g["expires_at"] is None or r["created_at"] < g["expires_at"]:
                self.bad(f"{name}: expire row {r['id']} at {r['created_at']}, but the grant expires at {g['expires_at']}")

    def burns(self) -> None:
        per_burn: dict[str, list[sqlite3.Row]] = defaultdict(list)
        for r in self.q("SELECT id, burn_id, tenant, user_id, currency, created_at, key_id, meter_id, grant_id"
                        " FROM credit_transactions WHERE burn_id IS NOT NULL AND type = 'burn' ORDER BY seq"):
            per_burn[r["burn_id"]].append(r)
        for burn_id, rows in per_burn.items():
            call = {(r["tenant"], r["user_id"], r["currency"], r["created_at"], r["key_id"], r["meter_id"]) for r in rows}
            if len(call) > 1:
                self.bad(f"burn {burn_id}: its rows ({', '.join(r['id'] for r in rows)}) are not of one call:"
                         f" (tenant, user, currency, time, key, meter) differ: {sorted(call, key=repr)}")
            grants = [r["grant_id"] for r in rows]
            for grant_id in sorted({g for g in grants if grants.count(g) > 1}):
                self.bad(f"burn {burn_id}: burns grant {grant_id} {grants.count(grant_id)} times")

    def writers(self) -> None:
        if "api_keys" not in self.tables:
            return
        keys = {r["id"]: r["tenant"] for r in self.q("SELECT id, tenant FROM api_keys")}
        for table, what, by_system in (("ledger", "ledger row", f"tags = '{EXPIRED_TAG}'"),
                                       ("credit_transactions", "credit transaction", "type = 'expire'")):
            if table not in self.tables or "key_id" not in self.columns(table):
                continue
            for r in self.q(f"SELECT id, tenant, key_id, {by_system} AS by_system FROM {table} ORDER BY seq"):
                key = r["key_id"]
                if key is None:
                    self.bad(f"{what} {r['id']}: key_id is NULL")
                elif key == SYSTEM_KEY:
                    if not r["by_system"]:
                        self.bad(f"{what} {r['id']}: written by {SYSTEM_KEY!r}, but the server writes only forfeits"
                                 f" and expire rows by itself")
                elif key != "" and keys.get(key) != r["tenant"]:
                    self.bad(f"{what} {r['id']} (tenant {r['tenant']}): key_id {key!r} is not a key of its tenant")

    def meter_events(self) -> None:
        for r in self.q(
            "SELECT tenant, idempotency_key, COUNT(*) n, GROUP_CONCAT(id, ', ') ids FROM meter_events"
            " WHERE idempotency_key IS NOT NULL GROUP BY tenant, idempotency_key HAVING COUNT(*) > 1"
        ):
            self.bad(f"meter events: idempotency key {r['idempotency_key']!r} appears {r['n']} times in tenant {r['tenant']} ({r['ids']})")
        if "ledger_id" in self.columns("meter_events"):
            self.usage_events()

    def usage_events(self) -> None:
        """The events the server writes for usage withdrawals: each records its own row (same
        tenant, user, amount and instant, on the tenant's api-usage meter), and every usage
        withdrawal made once that meter existed has exactly one."""
        for r in self.q(
            "SELECT e.id, e.tenant, e.ledger_id, l.id AS row_id, l.tenant = e.tenant AND l.user_id = e.user_id"
            " AND l.amount = e.value AND l.created_at = e.ts AND l.type = 'withdraw' AND l.tags = 'api-usage'"
            " AND m.event_name = 'api-usage' AS same"
            " FROM meter_events e LEFT JOIN ledger l ON l.id = e.ledger_id LEFT JOIN meters m ON m.seq = e.meter"
            " WHERE e.ledger_id IS NOT NULL"
        ):
            if r["row_id"] is None:
                self.bad(f"meter event {r['id']} (tenant {r['tenant']}) records ledger row {r['ledger_id']}, which does not exist")
            elif not r["same"]:
                self.bad(f"meter event {r['id']} (tenant {r['tenant']}) does not match the usage withdrawal {r['ledger_id']} it records")
        for r in self.q(
            "SELECT l.id, l.tenant, COUNT(e.id) AS n FROM ledger l"
            " JOIN meters m ON m.tenant = l.tenant AND m.event_name = 'api-usage' AND m.created_at <= l.created_at"
            " LEFT JOIN meter_events e ON e.ledger_id = l.id"
            " WHERE l.type = 'withdraw' AND l.tags = 'api-usage' GROUP BY l.id, l.tenant HAVING COUNT(e.id) != 1"
        ):
            self.bad(f"usage withdrawal {r['id']} (tenant {r['tenant']}) has {r['n']} meter events on the api-usage meter, not 1")

    def holds(self) -> None:
        cols = self.columns("holds")
        label = "id" if "id" in cols else "rowid"
        for r in self.q(f"SELECT *, {label} AS label FROM holds"):
            r = dict(r)
            hid = r["label"]
            amount = r.get("amount")
            if amount is None or amount <= 0:
                self.bad(f"hold {hid}: amount {amount} <= 0")
            status = r.get("status")
            if "status" in cols and status not in HOLD_STATUSES:
                self.bad(f"hold {hid}: unknown status {status!r}")
            if "captured_amount" not in cols:
                continue
            captured = r["captured_amount"]
            if captured is not None and (captured <= 0 or (amount is not None and captured > amount)):
                self.bad(f"hold {hid}: captured amount {captured} outside 1..{amount}")
            if status == "captured" and captured is None:
                self.bad(f"hold {hid}: captured but no captured amount")
            if status is not None and status != "captured" and captured is not None:
                self.bad(f"hold {hid}: {status} but captured amount {captured}")
            tx = r.get("transaction_id")
            if status == "captured" and "transaction_id" in cols:
                found = self.q("SELECT tenant, user_id, currency, type, amount FROM ledger WHERE id = ?", (tx,)) if tx else []
                if not found:
                    self.bad(f"hold {hid}: captured, but its transaction {tx} is not in the ledger")
                else:
                    t = found[0]
                    if t["type"] != "withdraw" or t["amount"] != captured:
                        self.bad(f"hold {hid}: captured {captured}, but its transaction {tx} is a {t['type']} of {t['amount']}")
                    if {"tenant", "user_id", "currency"} <= cols and (t["tenant"], t["user_id"], t["currency"]) != (r["tenant"], r["user_id"], r["currency"]):
                        self.bad(f"hold {hid}: its transaction {tx} belongs to another account")

    # -- events ----------------------------------------------------------------------------
    def events(self) -> None:
        """Each change's one event, and no event of a change's type without its change."""
        need: dict[tuple[int, str, str], tuple[str, int]] = {}  # (tenant, type, subject) -> the change in words, its time
        may: set[tuple[int, str, str]] = set()  # at most one
        if "ledger" in self.tables:
            for r in self.q("SELECT id, tenant, type, tags, refund_of, key_id, created_at FROM ledger ORDER BY seq"):
                if r["key_id"] == "":
                    continue
                if r["type"] == "deposit":
                    kind = ("refund.created", "a refund") if r["refund_of"] is not None else ("deposit.created", "a deposit")
                    need[(r["tenant"], kind[0], r["id"])] = (f"ledger row {r['id']} ({kind[1]})", r["created_at"])
                elif r["type"] == "withdraw" and r["tags"] == EXPIRED_TAG:
                    need[(r["tenant"], "credit.expired", r["id"])] = (f"ledger row {r['id']} (a forfeit)", r["created_at"])
                elif r["type"] == "withdraw" and r["tags"] == USAGE_TAG:
                    may.add((r["tenant"], "usage.recorded", r["id"]))
        if "holds" in self.tables:
            for r in self.q(
                "SELECT h.id, h.tenant, h.status, h.settled_at FROM holds h LEFT JOIN ledger l ON l.id = h.transaction_id"
                " WHERE h.status <> 'pending' AND h.settled_at IS NOT NULL AND COALESCE(l.key_id, 'x') <> '' ORDER BY h.seq"
            ):
                need[(r["tenant"], f"hold.{r['status']}", r["id"])] = (f"hold {r['id']} ({r['status']})", r["settled_at"])
        if "credit_transactions" in self.tables:
            for r in self.q(
                "SELECT grant_id, tenant, type, remaining_after, created_at FROM credit_transactions"
                " WHERE key_id <> '' AND (type IN ('void', 'expire') OR (type = 'burn' AND remaining_after = 0)) ORDER BY seq"
            ):
                type, words = GRANT_EVENTS[r["type"]]
                need[(r["tenant"], type, r["grant_id"])] = (f"credit grant {r['grant_id']} ({words})", r["created_at"])
        counts: dict[tuple[int, str, str], int] = defaultdict(int)
        for r in self.q("SELECT tenant, type, subject FROM events ORDER BY seq"):
            if r["type"] in CHANGE_EVENTS:
                counts[(r["tenant"], r["type"], r["subject"])] += 1
        # The outbox's purge (store/*/retention.py) deletes events past their retention and says
        # how far it went: a change older than that may have lost its event, never a younger one.
        purged_before = 0
        if "events_purged" in self.tables:
            purged_before = max([r["purged_before"] for r in self.q("SELECT purged_before FROM events_purged")], default=0)
        for key, (change, at) in need.items():
            if counts.get(key, 0) == 0 and at < purged_before:
                continue
            if counts.get(key, 0) != 1:
                self.bad(f"{change}: {counts.get(key, 0)} {key[1]} events, expected 1")
        for key, n in counts.items():
            if key in need:
                continue
            if key not in may:
                self.bad(f"event of type {key[1]} about {key[2]}: no such change")
            elif n > 1:
                self.bad(f"ledger row {key[2]} (a usage withdrawal): {n} usage.recorded events, expected at most 1")
        by_ledger = "ledger" in self.tables and "evented" in self.columns("ledger")
        if by_ledger:
            # a usage.recorded is found by account through its row's place in ledger_usage_evented
            evented = {(r["tenant"], r["id"]): (r["user_id"], r["created_at"])
                       for r in self.q("SELECT tenant, id, user_id, created_at FROM ledger WHERE evented = 1 ORDER BY seq")}
            for (tenant, row_id), (_, at) in evented.items():
                if counts.get((tenant, "usage.recorded", row_id), 0) == 0 and at >= purged_before:
                    self.bad(f"ledger row {row_id}: evented, but it has no usage.recorded event")
        if "user_id" in self.columns("events"):
            # listEvents' userId filter reads events.user_id: it must name the account the data does
            # (a transaction's, hold's or cap's `user`, a grant's or an alert's `userId`)
            for r in self.q("SELECT id, tenant, type, subject, user_id, data FROM events ORDER BY seq"):
                if r["data"] == "":  # on SQLite, a usage.recorded whose data is made from its ledger row when read
                    if (not by_ledger or r["type"] != "usage.recorded" or r["subject"] is None
                            or r["id"] != "evt_" + r["subject"][3:]):
                        self.bad(f"event {r['id']}: data left to its ledger row, but it is no ledger row's usage.recorded")
                        continue
                    data = {"user": evented.get((r["tenant"], r["subject"]), (None,))[0]}
                else:
                    data = json.loads(r["data"])
                user = data.get("user") if data.get("user") is not None else data.get("userId")
                if by_ledger and r["type"] == "usage.recorded":
                    row = evented.get((r["tenant"], r["subject"]))
                    if r["user_id"] is not None:
                        self.bad(f"event {r['id']}: a usage.recorded with user_id {r['user_id']!r}, expected none")
                    if row is None:
                        self.bad(f"event {r['id']}: its ledger row {r['subject']} is not evented")
                    elif row[0] != user:
                        self.bad(f"event {r['id']}: its ledger row is {row[0]!r}'s, but its data is about {user!r}")
                elif r["user_id"] != user:
                    self.bad(f"event {r['id']}: user_id {r['user_id']!r}, but its data is about {user!r}")


# -- for the checker's own tests: a copy of a live database to corrupt one way at a time ------

def copy_db(db_path: str, dest: Path) -> str:
    """A consistent copy of the live database (SQLite's backup API), in rollback-journal mode so
    the file alone is the whole database. On PostgreSQL, a database copied from it (whose
    server's connections are ended: the test is done with it)."""
    if pg.is_url(db_path):
        return pg.copy_database(db_path)
    src = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    dst = sqlite3.connect(dest)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode = DELETE")
    finally:
        src.close()
        dst.close()
    return str(dest)


def corrupt(path: str, *statements: str, params: tuple[Any, ...] = ()) -> None:
    if pg.is_url(path):
        pg.corrupt(path, statements, params)
        return
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("PRAGMA ignore_check_constraints = ON")  # corruption the schema's CHECKs would refuse
        for sql in statements:
            con.execute(sql, params if "?" in sql else ())
    finally:
        con.close()
