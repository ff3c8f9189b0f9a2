"""Several `zapbilling serve` processes on one PostgreSQL database, as behind a load balancer:
requests for the same user reach different servers at the same instant, and every guarantee
holds as with one server (PostgreSQL only: SQLite's `--workers` share a file on one machine,
and test_workers.py covers them).

- 3 servers and 60+ concurrent clients making burns, holds, captures and releases of the same
  holds, refunds of the same charge and recordUsage with repeated requestIds: the totals equal
  what was acknowledged, and the invariants checker passes;
- a key made or revoked by the CLI works or stops working on every server from the next request;
- PostgreSQL restarted (`pg_ctl restart -m fast`) in the middle of a write storm: every call is
  answered (a success or the contract's internal error, never a hang), every acknowledged
  write survives, and the servers serve again without a restart of their own.
"""
from __future__ import annotations

import asyncio
import subprocess
import time
from collections import Counter

import pytest
from aiohttp import ClientSession, ClientTimeout

import pg
from conftest import TRANSPORTS, Api, ok
from invariants import check_invariants
from procs import ServerProcess, child_env, create_key, zapbilling_cmd

pytestmark = pytest.mark.postgres_only("several servers on one database")

SERVERS = 3
USER = "acme/shared"


@pytest.fixture
async def servers(db_path, tmp_path):
    started = [ServerProcess(db_path, tmp_path) for _ in range(SERVERS)]
    for s in started:
        s.start()  # all at once: they migrate the (already migrated) database together
    try:
        for s in started:
            await s.wait_ready()
        yield started
    finally:
        for s in started:
            s.stop()


def clients(session: ClientSession, servers: list[ServerProcess], key: str) -> list[Api]:
    """One client per (server, transport): requests spread over every server and transport."""
    return [Api(session, s.base, key, t) for s in servers for t in TRANSPORTS]


async def test_servers_started_together_on_an_empty_database_migrate_it_once(tmp_path):
    url = pg.admin().new_database(migrated=False)
    started = [ServerProcess(url, tmp_path) for _ in range(SERVERS)]
    try:
        for s in started:
            s.start()
        for s in started:
            await s.wait_ready()
        with pg.Connection(url) as con:
            versions = [r[0] for r in con.execute("SELECT version FROM schema_migrations ORDER BY version")]
        from zapbilling.store.migrations import scripts

        assert versions == [v for v, _, _ in scripts("postgres")]
    finally:
        for s in started:
            s.stop()
        pg.admin().drop(url)


async def test_concurrent_money_moves_across_three_servers_keep_every_invariant(servers, db_path):
    key = create_key(db_path, "acme", "live")
    async with ClientSession(timeout=ClientTimeout(total=60)) as session:
        apis = clients(session, servers, key)
        first = apis[0]
        await ok(first, "deposit", {"user": USER, "amount": 100_000, "currency": "usd"})
        grant_ids = [(await ok(first, "createCreditGrant", {"userId": USER, "name": f"g{i}", "amountCents": 1_000,
                                                            "currency": "usd"}))["id"] for i in range(3)]
        charge = await ok(first, "recordUsage", {"user": USER, "amount": 5_000, "currency": "usd", "requestId": "the-charge"})

        def api(i: int) -> Api:
            return apis[i % len(apis)]

        # Round 1, all at once: 30 burns of 150 from 3,000 of grants; 24 holds of 5,000 from
        # 95,000 available; 12 refunds of 700 of one 5,000 charge; 10 requestIds sent 3 times
        # each (each on another server) as recordUsage of 10.
        burns = [api(i).call("burnCredits", {"userId": USER, "amount": 150, "currency": "usd"}) for i in range(30)]
        holds = [api(i + 1).call("createHold", {"user": USER, "amount": 5_000, "currency": "usd"}) for i in range(24)]
        refunds = [api(i + 2).call("refund", {"user": USER, "originalTransactionId": charge["transactionId"], "amount": 700}) for i in range(12)]
        usage = [api(i + j).call("recordUsage", {"user": USER, "requestId": f"req-{i}", "amount": 10, "currency": "usd"})
                 for i in range(10) for j in range(3)]
        answers = await asyncio.gather(*burns, *holds, *refunds, *usage)
        b_ans, h_ans, r_ans, u_ans = answers[:30], answers[30:54], answers[54:66], answers[66:]
        assert len(burns) + len(holds) + len(refunds) + len(usage) >= 60

        burned = sum(r.result["burned"] for r in b_ans if r.ok)
        assert all(r.ok for r in b_ans), [r.error for r in b_ans if not r.ok]  # a burn past the grants answers its overage
        assert burned == 3_000, burned  # 30 x 150 asked of 3,000: exactly all of it, never more
        assert sum(r.result["overage"] for r in b_ans) == 30 * 150 - 3_000
        assert all(r.ok or r.error["kind"] == "insufficient_funds" for r in h_ans), [r.error for r in h_ans if not r.ok]
        placed = [r.result for r in h_ans if r.ok]
        refunded = [r for r in r_ans if r.ok]
        assert all(r.ok or r.error["kind"] in ("invalid_params", "conflict") for r in r_ans), [r.error for r in r_ans if not r.ok]
        assert len(refunded) == 5_000 // 700, [r.error for r in r_ans]
        by_request: dict[str, set[str]] = {}
        for i, r in enumerate(u_ans):
            assert r.ok, r.error
            by_request.setdefault(f"req-{i // 3}", set()).add(r.result["transactionId"])
        assert all(len(ids) == 1 for ids in by_request.values()), by_request
        usage_total = 10 * 10

        # Round 2, all at once: each placed hold captured (2,000) on one server and released on
        # another: exactly one of the two wins.
        settle = []
        for i, h in enumerate(placed):
            settle.append(api(i).call("captureHold", {"id": h["holdId"], "amount": 2_000}))
            settle.append(api(i + 4).call("releaseHold", {"id": h["holdId"]}))
        settled = await asyncio.gather(*settle)
        captured = 0
        for n in range(len(placed)):
            capture, release = settled[2 * n], settled[2 * n + 1]
            assert capture.ok != release.ok, (capture, release)
            loser = release if capture.ok else capture
            assert loser.error["kind"] == "conflict", loser.error
            captured += 2_000 if capture.ok else 0

        # 95,000 was available before round 1, less what refunds added and usage took
        # meanwhile: 19 holds of 5,000 fit, give or take the one those may tip
        assert 18 <= len(placed) <= 19, len(placed)
        expected = 100_000 - 5_000 + 700 * len(refunded) - usage_total - captured
        for a in apis[:SERVERS * len(TRANSPORTS):len(TRANSPORTS)]:  # the same answer from every server
            assert (await ok(a, "getBalance", {"user": USER, "currency": "usd"}))["balance"] == expected
        grants = (await ok(first, "listCreditGrants", {"userId": USER}))["grants"]
        assert sum(g["remainingCents"] for g in grants if g["id"] in grant_ids) == 0
    check_invariants(db_path)


async def test_a_key_made_or_revoked_by_the_cli_works_or_stops_on_every_server_at_once(servers, db_path):
    key = create_key(db_path, "acme", "live")
    async with ClientSession() as session:
        for s in servers:  # every server caches it now
            assert (await Api(session, s.base, key).call("getBalance", {"user": "u", "currency": "usd"})).ok
        listed = subprocess.run([*zapbilling_cmd(), "keys", "list", "--db", db_path], capture_output=True, text=True,
                                env=child_env(), timeout=30)
        key_id = next(line.split()[0] for line in listed.stdout.splitlines() if line.startswith("key_"))
        revoked = subprocess.run([*zapbilling_cmd(), "keys", "revoke", key_id, "--db", db_path], capture_output=True,
                                 text=True, env=child_env(), timeout=30)
        assert revoked.returncode == 0, revoked.stderr
        for s in servers:
            r = await Api(session, s.base, key).call("getBalance", {"user": "u", "currency": "usd"})
            assert r.error is not None and r.error["kind"] == "unauthorized", (s.base, r)
        fresh = create_key(db_path, "acme", "live")
        for s in servers:
            assert (await Api(session, s.base, fresh).call("getBalance", {"user": "u", "currency": "usd"})).ok


async def test_postgresql_restarted_mid_storm_loses_no_acknowledged_write_and_the_servers_recover(tmp_path):
    cluster = pg.Cluster.own()  # a cluster of this test's own: it is restarted
    try:
        url = cluster.database_url("postgres")
        key = create_key(url, "acme", "live")
        started = [ServerProcess(url, tmp_path) for _ in range(2)]
        for s in started:
            await s.start_ready()
        acked: list[tuple[str, int]] = []
        outcomes: Counter[str] = Counter()
        stop = asyncio.Event()
        async with ClientSession(timeout=ClientTimeout(total=30)) as session:
            async def depositor(n: int) -> None:
                api = Api(session, started[n % 2].base, key, TRANSPORTS[n % 3])
                i = 0
                while not stop.is_set():
                    i += 1
                    t0 = time.monotonic()
                    try:
                        r = await api.call("deposit", {"user": f"acme/u{n}", "amount": i, "currency": "usd"})
                    except Exception as exc:  # noqa: BLE001 - a connection error is an answer too; counted
                        outcomes[f"exception {type(exc).__name__}"] += 1
                        await asyncio.sleep(0.05)
                        continue
                    assert time.monotonic() - t0 < 25, "a call hung while the database restarted"
                    if r.ok:
                        acked.append((f"acme/u{n}", i))
                        outcomes["ok"] += 1
                    else:
                        assert r.error["kind"] == "internal_error", r.error
                        outcomes["internal_error"] += 1
                        await asyncio.sleep(0.05)

            storm = [asyncio.create_task(depositor(n)) for n in range(12)]
            await asyncio.sleep(1.0)
            before = outcomes["ok"]
            cluster.pg_ctl("restart", "-m", "fast")
            deadline = time.monotonic() + 30
            while outcomes["ok"] < before + 200 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            stop.set()
            await asyncio.gather(*storm)
            assert outcomes["ok"] >= before + 200, f"the servers did not serve again after the restart: {outcomes}"
            for s in started:
                assert s.running(), s.log()[-2000:]
                r = await Api(session, s.base, key).call("getBalance", {"user": "acme/u0", "currency": "usd"})
                assert r.ok, r.error
        with pg.Connection(url) as con:
            stored = {(r[0], r[1]) for r in con.execute("SELECT user_id, amount FROM ledger")}
        lost = [a for a in acked if a not in stored]
        assert not lost, f"{len(lost)} acknowledged deposits are missing: {lost[:10]}"
        print(f"\n[pg restart] outcomes {dict(outcomes)}; {len(acked)} acknowledged writes all present")
        check_invariants(url)
        for s in started:
            s.stop()
    finally:
        cluster.stop()
