"""The invariants checker (tests/invariants.py) on the money history: the credit grants' journal,
burns, who wrote each row, and the ledger's running balances; and the schema's own CHECKs.

As in test_concurrency's checker tests: a copy of a database after real traffic of every kind
(grant, burn, void and expire journal rows, written by calls and by the sweep; deposits, usage,
a refund, a capture, forfeits by a call and by the sweep) passes, and each corruption, made
with one or two direct statements on the copy, must be reported by name. Then: the database
itself refuses what its CHECK constraints forbid (plain sqlite3 on a migrated file), and a
database written before the journal existed is migrated into one the checker accepts, whose
history the API then shows (keyId "" for the rows written before keys were recorded).
"""
from __future__ import annotations

import re
import sqlite3
from typing import Any

import pytest

import pg
from old_schema import sqlite_before
from conftest import Api, FakeClock, ok, make_app
from invariants import check_invariants, copy_db, corrupt, find_violations

from zapbilling.app import STORE, sweep_once
from zapbilling.config import Config, server_options
from zapbilling.store.migrations import migrate, scripts
from zapbilling.times import system_clock

ALICE, BOB, CAROL = "hanzo/alice", "hanzo/bob", "hanzo/carol"


@pytest.fixture
async def traffic(api, make_key, clock, server, db_path) -> dict[str, Any]:
    """A database after real traffic; returns ids in it."""
    ids: dict[str, Any] = {}
    meter = (await ok(api, "createMeter", {"name": "calls", "eventName": "calls"}))["id"]
    ids["usage_meter"] = (await ok(api, "createMeter", {"name": "usage", "eventName": "api-usage"}))["id"]
    # ledger
    await ok(api, "deposit", {"user": ALICE, "amount": 1000})
    usage = await ok(api, "recordUsage", {"user": ALICE, "amount": 120, "model": "m", "requestId": "r1"})
    ids["refund"] = (await ok(api, "refund", {"user": ALICE, "amount": 20, "originalTransactionId": usage["transactionId"]}))["transactionId"]
    ids["usage"] = usage["transactionId"]
    hold = await ok(api, "createHold", {"user": ALICE, "amount": 300})
    await ok(api, "captureHold", {"id": hold["holdId"], "amount": 200})
    await ok(api, "deposit", {"user": ALICE, "amount": 500, "expiresIn": 1, "currency": "eur"})
    await ok(api, "deposit", {"user": BOB, "amount": 400, "expiresIn": 1})
    # grants: a burn across two grants, a burn for a meter, voids with and without cents left
    g = ids["grants"] = [
        (await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 1000}))["id"],
        (await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 500, "priority": 1}))["id"],
        (await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 400, "eligibility": [meter]}))["id"],
        (await ok(api, "createCreditGrant", {"userId": ALICE, "amountCents": 700, "expiresIn": "1h", "priority": -1}))["id"],
        (await ok(api, "createCreditGrant", {"userId": BOB, "amountCents": 300, "expiresIn": "1h"}))["id"],
        (await ok(api, "createCreditGrant", {"userId": CAROL, "amountCents": 50}))["id"],
    ]
    clock.advance(seconds=1)
    ids["burn1"] = (await ok(api, "burnCredits", {"userId": ALICE, "amount": 1200}))["burnId"]  # g3: 700 -> 0, g0: 500 left
    clock.advance(seconds=1)
    ids["burn2"] = (await ok(api, "burnCredits", {"userId": ALICE, "amount": 900}))["burnId"]  # g0: 500 -> 0, g1: 500 -> 100
    ids["burn3"] = (await ok(api, "burnCredits", {"userId": ALICE, "amount": 100, "meterId": meter}))["burnId"]  # g2: 300 left
    await ok(api, "burnCredits", {"userId": BOB, "amount": 100})
    await ok(api, "voidCreditGrant", {"id": g[1]})  # 100 left
    await ok(api, "voidCreditGrant", {"id": g[0]})  # nothing left: a void of 0
    clock.advance(days=2)
    await ok(api, "recordUsage", {"user": ALICE, "amount": 5, "currency": "eur", "model": "m"})  # forfeits 500 eur
    await ok(api, "createCreditGrant", {"userId": BOB, "amountCents": 10})  # expires bob's 200 left
    await sweep_once(server.app[STORE], clock())  # forfeits bob's 400 usd, keyed system
    other = api.with_key(await make_key("globex", "test"))
    await ok(other, "deposit", {"user": ALICE, "amount": 50})
    ids["other_grant"] = (await ok(other, "createCreditGrant", {"userId": ALICE, "amountCents": 60}))["id"]
    con = pg.read_only(db_path)
    try:
        types = {t for (t,) in con.execute("SELECT DISTINCT type FROM credit_transactions")}
        keys = {k for (k,) in con.execute("SELECT DISTINCT key_id FROM ledger WHERE tags = 'credit-expired'")}
        ids["other_key"] = con.execute("SELECT k.id FROM api_keys k JOIN tenants t ON t.id = k.tenant WHERE t.org = 'globex'").fetchone()[0]
    finally:
        con.close()
    assert types == {"grant", "burn", "void", "expire"}, types
    assert "system" in keys and len(keys) == 2, keys
    return ids


def query(path: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    con = pg.read_only(path) if pg.is_url(path) else sqlite3.connect(path)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def violations_of(path: str) -> str:
    with pytest.raises(AssertionError) as caught:
        check_invariants(path)
    return str(caught.value)


@pytest.fixture
def copy(traffic, db_path, tmp_path) -> str:
    return copy_db(db_path, tmp_path / "copy.db")


async def test_the_checker_passes_on_real_traffic(traffic, db_path, copy):
    assert find_violations(db_path) == []
    assert find_violations(copy) == []


# -- the credit journal ---------------------------------------------------------------------------

async def test_a_callers_deposit_tagged_like_a_forfeit_is_a_deposit(api, db_path):
    """Deposits carry the caller's tags, whatever they are (the fuzzer found this one): a deposit
    tagged credit-expired is no forfeit, for the service and for the checker alike."""
    dep = await ok(api, "deposit", {"user": "tagged", "amount": 300, "tags": "credit-expired"})
    refund = await api.call("refund", {"user": "tagged", "amount": 1, "originalTransactionId": dep["transactionId"]})
    assert refund.error and "is a deposit" in refund.error["message"], refund
    check_invariants(db_path)


async def test_a_grant_remainder_off_its_journal(traffic, copy):
    g = traffic["grants"][2]  # 400, burned 100 for the meter: 300 left
    corrupt(copy, "UPDATE credit_grants SET remaining = remaining - 1 WHERE id = ?", params=(g,))
    message = violations_of(copy)
    assert "1 invariant violation(s)" in message, message
    assert f"credit grant {g} (tenant 1, 'hanzo/alice'): journal sums to 300 but remaining is 299 (off by -1)" in message, message


async def test_a_lost_burn_row(traffic, copy):
    g = traffic["grants"][3]  # 700 burned to 0 by burn1
    corrupt(copy, "DELETE FROM credit_transactions WHERE grant_id = ? AND type = 'burn'", params=(g,))
    message = violations_of(copy)
    assert f"credit grant {g} (tenant 1, 'hanzo/alice'): journal sums to 700 but remaining is 0 (off by -700)" in message, message


async def test_a_broken_remaining_after_chain(traffic, copy):
    g = traffic["grants"][0]  # grant 1000, burn -500 (500), burn -500 (0), void 0 (0)
    (row,), = query(copy, "SELECT id FROM credit_transactions WHERE grant_id = ? AND burn_id = ?", (g, traffic["burn1"]))
    corrupt(copy, "UPDATE credit_transactions SET remaining_after = remaining_after + 1 WHERE id = ?", params=(row,))
    message = violations_of(copy)
    assert "1 invariant violation(s)" in message, message
    assert f"credit transaction {row} (burn) says remaining_after 501, but the rows up to it sum to 500" in message, message


async def test_a_negative_remaining_after(traffic, copy):
    g = traffic["grants"][5]
    corrupt(copy, "UPDATE credit_transactions SET remaining_after = -1 WHERE grant_id = ?", params=(g,))
    assert "remaining_after -1 is negative" in violations_of(copy)


@pytest.mark.parametrize("type, amount, says", [
    ("burn", "-amount", "but the amount of a burn row is < 0"),
    ("grant", "-amount", "but the amount of a grant row is > 0"),
    ("expire", "-amount", "but the amount of a expire row is < 0"),
    ("void", "1", "but the amount of a void row is <= 0"),
])
async def test_a_wrongly_signed_journal_row(traffic, copy, type, amount, says):
    (row,), = query(copy, "SELECT id FROM credit_transactions WHERE type = ? ORDER BY amount != 0 DESC, seq LIMIT 1", (type,))
    corrupt(copy, f"UPDATE credit_transactions SET amount = {amount} WHERE id = ?", params=(row,))
    message = violations_of(copy)
    assert f"credit transaction {row} ({type} of grant" in message and says in message, message


async def test_a_journal_row_of_another_user_or_currency(traffic, copy):
    g = traffic["grants"][2]
    corrupt(copy, "UPDATE credit_transactions SET user_id = 'hanzo/bob' WHERE grant_id = ? AND type = 'burn'", params=(g,))
    message = violations_of(copy)
    assert "(tenant 1, 'hanzo/bob', usd) is not of its grant's tenant, user and currency (tenant 1, 'hanzo/alice', usd)" in message, message
    corrupt(copy, "UPDATE credit_transactions SET user_id = 'hanzo/alice', currency = 'eur' WHERE grant_id = ?", params=(g,))
    assert "(tenant 1, 'hanzo/alice', eur) is not of its grant's" in violations_of(copy)


async def test_a_journal_row_of_a_missing_grant(traffic, copy):
    corrupt(copy, "PRAGMA foreign_keys = OFF", "UPDATE credit_transactions SET grant_id = 'cg_gone' WHERE type = 'void'")
    message = violations_of(copy)
    assert "grant cg_gone does not exist" in message, message


async def test_a_grant_without_journal_rows(traffic, copy):
    g = traffic["grants"][5]
    corrupt(copy, "DELETE FROM credit_transactions WHERE grant_id = ?", params=(g,))
    assert f"credit grant {g} (tenant 1, 'hanzo/carol'): no journal rows, but remaining 50" in violations_of(copy)


async def test_a_second_grant_row(traffic, copy):
    g = traffic["grants"][5]
    corrupt(copy, "INSERT INTO credit_transactions (id, tenant, grant_id, user_id, currency, type, amount, remaining_after,"
                  " created_at, key_id) SELECT id || '-again', tenant, grant_id, user_id, currency, type, amount, 100,"
                  " created_at, key_id FROM credit_transactions WHERE grant_id = ?", params=(g,))
    message = violations_of(copy)
    assert f"credit grant {g} (tenant 1, 'hanzo/carol'): the journal does not open with one grant row of +50" in message, message
    assert "journal sums to 100 but remaining is 50" in message, message


async def test_a_voided_grant_that_kept_its_cents_or_lost_its_void_row(traffic, copy):
    g = traffic["grants"][1]  # 500, 400 burned, voided with 100 left
    corrupt(copy, "UPDATE credit_grants SET remaining = 100 WHERE id = ?", params=(g,))
    message = violations_of(copy)
    assert f"credit grant {g} (tenant 1, 'hanzo/alice'): voided but remaining is still 100" in message, message
    corrupt(copy, "UPDATE credit_grants SET remaining = 0 WHERE id = ?", "DELETE FROM credit_transactions WHERE grant_id = ? AND type = 'void'",
            params=(g,))
    message = violations_of(copy)
    assert "voided, but its journal does not end with its one void row (0 void row(s); last: burn)" in message, message
    corrupt(copy, "UPDATE credit_grants SET voided_at = NULL WHERE id = ?", params=(traffic["grants"][0],))
    assert f"credit grant {traffic['grants'][0]} (tenant 1, 'hanzo/alice'): not voided, but its journal has a void row" in violations_of(copy)


async def test_an_expire_row_before_the_expiry(traffic, copy):
    g = traffic["grants"][4]  # bob's, expired by a createCreditGrant
    corrupt(copy, "UPDATE credit_transactions SET created_at = created_at - 172800000000 WHERE grant_id = ? AND type = 'expire'", params=(g,))
    assert f"credit grant {g} (tenant 1, 'hanzo/bob'): expire row" in violations_of(copy)
    corrupt(copy, "UPDATE credit_grants SET expires_at = NULL WHERE id = ?", params=(g,))
    assert "but the grant expires at None" in violations_of(copy)


# -- burns ----------------------------------------------------------------------------------------

async def test_burn_rows_of_two_calls_under_one_burn_id(traffic, copy):
    corrupt(copy, "UPDATE credit_transactions SET burn_id = ? WHERE burn_id = ?", params=(traffic["burn1"], traffic["burn3"]))
    message = violations_of(copy)
    assert "1 invariant violation(s)" in message, message
    assert f"burn {traffic['burn1']}: its rows (" in message and "are not of one call" in message, message


async def test_a_burn_touching_a_grant_twice(traffic, copy):
    g = traffic["grants"][2]  # 400, burned 100 by burn3: 300 left
    corrupt(copy, "UPDATE credit_transactions SET amount = -50, remaining_after = 350 WHERE grant_id = ? AND type = 'burn'",
            "INSERT INTO credit_transactions (id, tenant, grant_id, user_id, currency, type, amount, remaining_after, burn_id,"
            " meter_id, created_at, key_id) SELECT id || '-2', tenant, grant_id, user_id, currency, type, -50, 300, burn_id,"
            " meter_id, created_at, key_id FROM credit_transactions WHERE grant_id = ? AND type = 'burn'", params=(g,))
    message = violations_of(copy)
    assert "1 invariant violation(s)" in message, message
    assert f"burn {traffic['burn3']}: burns grant {g} 2 times" in message, message


async def test_a_burn_row_without_burn_id_or_another_row_with_one(traffic, copy):
    corrupt(copy, "UPDATE credit_transactions SET burn_id = NULL WHERE burn_id = ?", params=(traffic["burn3"],))
    assert "burn_id None (a burn row has one, no other row does)" in violations_of(copy)
    corrupt(copy, "UPDATE credit_transactions SET burn_id = 'burn_x' WHERE type = 'void'")
    assert "burn_id 'burn_x' (a burn row has one, no other row does)" in violations_of(copy)


async def test_a_meter_on_a_row_that_is_not_a_burn(traffic, copy):
    corrupt(copy, "UPDATE credit_transactions SET meter_id = 'mtr_x' WHERE type = 'grant'")
    assert "meter_id 'mtr_x' on a row that is not a burn" in violations_of(copy)


# -- who wrote it ---------------------------------------------------------------------------------

async def test_a_row_written_by_a_key_of_another_tenant(traffic, copy):
    corrupt(copy, "UPDATE ledger SET key_id = ? WHERE id = ?", params=(traffic["other_key"], traffic["usage"]))
    message = violations_of(copy)
    assert f"ledger row {traffic['usage']} (tenant 1): key_id {traffic['other_key']!r} is not a key of its tenant" in message, message
    corrupt(copy, "UPDATE credit_transactions SET key_id = 'key_nope' WHERE type = 'burn'")
    assert "key_id 'key_nope' is not a key of its tenant" in violations_of(copy)


async def test_a_usage_withdrawal_without_its_meter_event_or_with_a_wrong_one(traffic, copy):
    corrupt(copy, "UPDATE meter_events SET value = value + 1 WHERE ledger_id = ?", params=(traffic["usage"],))
    assert f"does not match the usage withdrawal {traffic['usage']}" in violations_of(copy)
    corrupt(copy, "DELETE FROM meter_events WHERE ledger_id = ?", params=(traffic["usage"],))
    assert f"usage withdrawal {traffic['usage']} (tenant 1) has 0 meter events on the api-usage meter, not 1" in violations_of(copy)
    corrupt(copy, "UPDATE meter_events SET ledger_id = 'tx_gone' WHERE ledger_id IS NOT NULL AND value = 200")  # the capture's
    assert "records ledger row tx_gone, which does not exist" in violations_of(copy)


async def test_system_writes_only_forfeits_and_expire_rows(traffic, copy):
    corrupt(copy, "UPDATE ledger SET key_id = 'system' WHERE id = ?", params=(traffic["refund"],))
    message = violations_of(copy)
    assert f"ledger row {traffic['refund']}: written by 'system', but the server writes only forfeits" in message, message
    corrupt(copy, "UPDATE credit_transactions SET key_id = 'system' WHERE type = 'void'")
    assert re.search(r"credit transaction ct_\S+: written by 'system', but the server writes only forfeits", violations_of(copy))


# -- grants and the ledger (kept from before the journal) -----------------------------------------

@pytest.mark.parametrize("sql, says", [
    ("UPDATE credit_grants SET remaining = -1 WHERE id = ?", "remaining -1 is negative"),
    ("UPDATE credit_grants SET remaining = amount + 5 WHERE id = ?", "remaining 55 > amount 50"),
    ("UPDATE credit_grants SET amount = 0 WHERE id = ?", "amount 0 <= 0"),
])
async def test_grant_rows_outside_their_checks(traffic, copy, sql, says):
    g = traffic["grants"][5]
    corrupt(copy, sql, params=(g,))
    message = violations_of(copy)
    assert f"credit grant {g}" in message and says in message, message


async def test_a_ledger_balance_off_by_one(traffic, copy):
    corrupt(copy, "UPDATE balances SET balance = balance + 1 WHERE tenant = 1 AND user_id = 'hanzo/alice' AND currency = 'usd'")
    message = violations_of(copy)
    assert "1 invariant violation(s)" in message
    assert "balance of tenant 1 user 'hanzo/alice' usd: stored 701 != ledger sum 700 (off by +1)" in message, message


# -- the schema refuses what its CHECKs forbid ----------------------------------------------------

LEDGER_ROW = ("INSERT INTO ledger (id, tenant, user_id, currency, type, amount, created_at, expires_at, remaining, refund_of, key_id)"
              " VALUES (:id, 1, 'hanzo/x', 'usd', :type, :amount, 0, :expires, :remaining, :refund_of, 'k')")
JOURNAL_ROW = ("INSERT INTO credit_transactions (id, tenant, grant_id, user_id, currency, type, amount, remaining_after, burn_id,"
               " created_at, key_id) VALUES (:id, 1, :grant, 'hanzo/alice', 'usd', :type, :amount, :after, :burn, 0, 'k')")
GRANT_ROW = ("INSERT INTO credit_grants (id, tenant, user_id, name, amount, remaining, currency, priority, effective_at,"
             " eligibility, tags, created_at) VALUES (:id, 1, 'hanzo/x', '', :amount, :remaining, 'usd', 0, 0, '[]', '', 0)")


def refused(path: str, sql: str, **values: Any) -> None:
    con = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
            con.execute(sql, values)
    finally:
        con.rollback()
        con.close()


def accepted(path: str, sql: str, **values: Any) -> None:
    con = sqlite3.connect(path)
    try:
        con.execute(sql, values)
    finally:
        con.rollback()  # the copy stays as it was
        con.close()


@pytest.mark.sqlite_only("plain sqlite3 on a migrated file")
async def test_the_schema_refuses_what_its_checks_forbid(traffic, copy):
    g = traffic["grants"][5]
    row = dict(type="deposit", amount=10, expires=None, remaining=None, refund_of=None)
    accepted(copy, LEDGER_ROW, **row, id="tx_ok")
    accepted(copy, LEDGER_ROW, **(row | dict(type="withdraw")), id="tx_ok")
    accepted(copy, LEDGER_ROW, **(row | dict(expires=1, remaining=0)), id="tx_ok")
    accepted(copy, LEDGER_ROW, **(row | dict(expires=1, remaining=10)), id="tx_ok")
    for amount in (0, -1, -10):
        refused(copy, LEDGER_ROW, **(row | dict(amount=amount)), id="tx_bad")
    for type in ("hold", "hold-removed", "transfer", "refund", ""):
        refused(copy, LEDGER_ROW, **(row | dict(type=type)), id="tx_bad")
    for remaining in (-1, 11):
        refused(copy, LEDGER_ROW, **(row | dict(expires=1, remaining=remaining)), id="tx_bad")
    refused(copy, LEDGER_ROW, **(row | dict(remaining=5)), id="tx_bad")  # a remainder without an expiry
    refused(copy, LEDGER_ROW, **(row | dict(type="withdraw", expires=1, remaining=5)), id="tx_bad")  # on a withdraw
    refused(copy, LEDGER_ROW, **(row | dict(type="withdraw", refund_of=traffic["usage"])), id="tx_bad")  # a refund is a deposit

    entry = dict(grant=g, burn=None, after=0)
    for type, amount in (("grant", 5), ("burn", -5), ("expire", -5), ("void", -5), ("void", 0)):
        accepted(copy, JOURNAL_ROW, **(entry | dict(burn="burn_x" if type == "burn" else None)), id="ct_ok", type=type, amount=amount)
    for type, amount in (("grant", 0), ("grant", -5), ("burn", 0), ("burn", 5), ("expire", 0), ("expire", 5), ("void", 5)):
        refused(copy, JOURNAL_ROW, **(entry | dict(burn="burn_x" if type == "burn" else None)), id="ct_bad", type=type, amount=amount)
    refused(copy, JOURNAL_ROW, **(entry | dict(after=-1)), id="ct_bad", type="grant", amount=5)
    refused(copy, JOURNAL_ROW, **entry, id="ct_bad", type="burn", amount=-5)  # a burn row without its burn
    refused(copy, JOURNAL_ROW, **(entry | dict(burn="burn_x")), id="ct_bad", type="void", amount=0)
    refused(copy, JOURNAL_ROW, **entry, id="ct_bad", type="refund", amount=5)

    accepted(copy, GRANT_ROW, id="cg_ok", amount=5, remaining=5)
    accepted(copy, GRANT_ROW, id="cg_ok", amount=5, remaining=0)
    for amount, remaining in ((0, 0), (-5, 0), (5, -1), (5, 6)):
        refused(copy, GRANT_ROW, id="cg_bad", amount=amount, remaining=remaining)
    assert find_violations(copy) == []


# -- a database from before the journal, migrated ------------------------------------------------

def old_database(path: str) -> str:
    """A database at migration 0003 (before the journal and key_id), with a little of everything."""
    con = sqlite_before(path, 4)
    con.executescript("""
        INSERT INTO tenants (id, org, mode) VALUES (1, 'acme', 'live');
        INSERT INTO ledger (id, tenant, user_id, currency, type, amount, tags, created_at, dedupe_key)
          VALUES ('tx_1', 1, 'u', 'usd', 'deposit', 1000, '', 10, NULL),
                 ('tx_2', 1, 'u', 'usd', 'withdraw', 200, 'api-usage', 20, 'hold:hold_1');
        INSERT INTO balances (tenant, user_id, currency, balance) VALUES (1, 'u', 'usd', 800);
        INSERT INTO holds (id, tenant, user_id, currency, amount, status, expires_at, created_at, captured_amount, transaction_id)
          VALUES ('hold_1', 1, 'u', 'usd', 300, 'captured', 100, 15, 200, 'tx_2');
        INSERT INTO credit_grants (id, tenant, user_id, name, amount, remaining, currency, priority, effective_at, expires_at,
                                   eligibility, tags, voided_at, created_at)
          VALUES ('cg_new', 1, 'u', '', 100, 100, 'usd', 0, 5, NULL, '[]', '', NULL, 5),
                 ('cg_burned', 1, 'u', '', 100, 40, 'usd', 0, 5, NULL, '[]', '', NULL, 5),
                 ('cg_voided', 1, 'u', '', 100, 30, 'usd', 0, 5, NULL, '[]', '', 50, 5),
                 ('cg_spent', 1, 'u', '', 100, 0, 'usd', 0, 5, NULL, '[]', '', 60, 5),
                 ('cg_expired', 1, 'u', '', 100, 70, 'usd', 0, 5, 6, '[]', '', NULL, 5);
    """)
    con.close()
    return path


def test_a_database_from_before_the_journal_migrates_into_one_the_checker_accepts(tmp_path):
    path = old_database(str(tmp_path / "old.db"))
    assert find_violations(path) == [], "no journal and no key_id yet: nothing of theirs to check"
    con = sqlite3.connect(path)
    assert migrate(con) == [v for v, _, _ in scripts()[3:]]
    journal = con.execute("SELECT grant_id, type, amount, remaining_after, key_id FROM credit_transactions ORDER BY seq").fetchall()
    ledger = con.execute("SELECT id, key_id, hold_id FROM ledger ORDER BY seq").fetchall()
    grants = dict(con.execute("SELECT id, remaining FROM credit_grants").fetchall())
    con.close()
    assert find_violations(path) == []
    assert ledger == [("tx_1", "", None), ("tx_2", "", "hold_1")]
    assert sorted(journal) == sorted([
        ("cg_new", "grant", 100, 100, ""), ("cg_burned", "grant", 100, 100, ""), ("cg_voided", "grant", 100, 100, ""),
        ("cg_spent", "grant", 100, 100, ""), ("cg_expired", "grant", 100, 100, ""),
        ("cg_burned", "burn", -60, 40, ""), ("cg_voided", "burn", -70, 30, ""), ("cg_spent", "burn", -100, 0, ""),
        ("cg_expired", "burn", -30, 70, ""),
        ("cg_voided", "void", -30, 0, ""), ("cg_spent", "void", 0, 0, ""),
    ])
    # the expired grant keeps its 70 until a write or the sweep journals its expiry
    assert grants == {"cg_new": 100, "cg_burned": 40, "cg_voided": 0, "cg_spent": 0, "cg_expired": 70}


async def test_a_migrated_database_shows_its_history_through_the_api(tmp_path, aiohttp_server, session):
    path = old_database(str(tmp_path / "old.db"))
    clock = FakeClock()
    config = Config(db=path, clock=clock, sweep_seconds=3600)
    server = await aiohttp_server(make_app(config), **server_options(config))
    key_id, secret = await server.app[STORE].create_key("acme", "live", "admin", system_clock())
    api = Api(session, str(server.make_url("")).rstrip("/"), secret)
    rows = (await ok(api, "listTransactions", {"user": "u"}))["transactions"]
    assert [(r["transactionId"], r["keyId"], r.get("holdId")) for r in rows] == [("tx_2", "", "hold_1"), ("tx_1", "", None)]
    journal = (await ok(api, "listCreditTransactions", {"userId": "u", "grantId": "cg_voided"}))["transactions"]
    assert [(r["type"], r["amount"], r["remainingAfter"], r["keyId"]) for r in journal] == [
        ("void", -30, 0, ""), ("burn", -70, 30, ""), ("grant", 100, 100, "")]
    assert journal[1]["burnId"]
    burn = await ok(api, "burnCredits", {"userId": "u", "amount": 10})  # journals cg_expired's expiry first
    journal = (await ok(api, "listCreditTransactions", {"userId": "u", "grantId": "cg_expired"}))["transactions"]
    assert [(r["type"], r["amount"], r["remainingAfter"], r["keyId"]) for r in journal] == [
        ("expire", -70, 0, key_id), ("burn", -30, 70, ""), ("grant", 100, 100, "")]
    assert [(g["id"], g["burned"]) for g in burn["grants"]] == [("cg_new", 10)]
    accounts = (await ok(api, "listAccounts", {}))["accounts"]
    assert accounts == [{"user": "u", "balance": 800, "holds": 0, "available": 800}]
    check_invariants(path)
