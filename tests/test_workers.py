"""`zapbilling serve --workers N`: several processes on one port and one SQLite file. What one
process guarantees with its writer thread, several must guarantee through SQLite's write lock:
no two holds spend the same money, a requestId charges once, a refund cap holds."""
from __future__ import annotations

import asyncio
import signal

import psutil
import pytest
from aiohttp import ClientSession

from invariants import check_invariants
from procs import ServerProcess, create_key

pytestmark = pytest.mark.sqlite_only("--workers on one SQLite file; several servers on PostgreSQL: test_many_servers")

USER = "hanzo/alice"


@pytest.fixture
async def two_workers(tmp_path):
    db = str(tmp_path / "billing.db")
    key = create_key(db, "acme", "live")
    server = ServerProcess(db, tmp_path, workers=2)
    await server.start_ready()
    for _ in range(600):  # /healthz answered by one worker; wait for both to listen and serve
        if len(listening_pids(server.port)) == 2 and server.log().count("serving ") == 2:
            break
        await asyncio.sleep(0.05)
    try:
        yield server, key
    finally:
        workers = workers_of(server) if server.proc.poll() is None else []
        server.stop()
        for w in workers:  # a worker left behind by a failed test
            if w.is_running():
                w.kill()


async def call(session: ClientSession, server: ServerProcess, key: str, method: str, params: dict) -> dict:
    async with session.post(f"{server.base}/api/v1/zap", json={"method": f"billing.{method}", "id": 1, "params": params},
                            headers={"Authorization": f"Bearer {key}"}) as r:
        return await r.json()


def workers_of(server: ServerProcess) -> list[psutil.Process]:
    """The worker processes."""
    return [c for c in psutil.Process(server.pid).children() if "worker_main" in " ".join(c.cmdline())]


def sender_of(server: ServerProcess) -> list[psutil.Process]:
    """The webhook sender process (zapbilling/sender_process.py)."""
    return [c for c in psutil.Process(server.pid).children() if "sender_process" in " ".join(c.cmdline())]


def listening_pids(port: int) -> set[int]:
    return {c.pid for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid}


async def test_two_worker_processes_listen_on_the_port_and_answer(two_workers):
    server, key = two_workers
    workers = workers_of(server)
    assert len(workers) == 2
    assert listening_pids(server.port) == {w.pid for w in workers}
    async with ClientSession() as s:
        answers = await asyncio.gather(*(call(s, server, key, "deposit", {"user": USER, "amount": 10}) for _ in range(40)))
        assert all("result" in a for a in answers), answers
        balance = await call(s, server, key, "getBalance", {"user": USER})
    assert balance["result"]["balance"] == 400
    assert server.log().count("serving ") == 2


async def test_holds_across_workers_never_exceed_available(two_workers):
    server, key = two_workers
    async with ClientSession() as s:
        await call(s, server, key, "deposit", {"user": USER, "amount": 1000})
        answers = await asyncio.gather(*(call(s, server, key, "createHold", {"user": USER, "amount": 70}) for _ in range(50)))
        balance = (await call(s, server, key, "getBalance", {"user": USER}))["result"]
    accepted = [a for a in answers if "result" in a]
    refused = [a for a in answers if "error" in a]
    assert len(accepted) == 14 and all(a["error"]["code"] == -32002 for a in refused), answers
    assert balance == {"user": USER, "currency": "usd", "balance": 1000, "holds": 980, "available": 20}


async def test_a_request_id_charges_once_across_workers(two_workers):
    server, key = two_workers
    async with ClientSession() as s:
        answers = await asyncio.gather(*(call(s, server, key, "recordUsage", {"user": USER, "amount": 25, "requestId": "r-1"}) for _ in range(30)))
        balance = (await call(s, server, key, "getBalance", {"user": USER}))["result"]["balance"]
    assert len({a["result"]["transactionId"] for a in answers}) == 1
    assert balance == -25


async def test_sigterm_stops_every_worker_cleanly(two_workers):
    server, key = two_workers
    workers = workers_of(server)
    async with ClientSession() as s:
        await call(s, server, key, "deposit", {"user": USER, "amount": 10})
    assert server.terminate() == 0
    gone, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive
    check_invariants(server.db)


async def test_a_worker_that_dies_stops_the_others_and_the_server_fails(two_workers):
    server, _ = two_workers
    first, second = workers_of(server)
    first.send_signal(signal.SIGKILL)
    assert server.proc.wait(timeout=30) != 0
    assert not second.is_running() or second.status() == psutil.STATUS_ZOMBIE
    assert "exited with" in server.log()


async def test_workers_stop_on_their_own_when_the_supervisor_is_killed(two_workers):
    """A SIGKILL gives the supervisor no chance to stop its workers; they notice on their own
    (the lifeline pipe) and stop gracefully instead of serving on unsupervised."""
    server, key = two_workers
    workers = workers_of(server)
    assert len(workers) == 2
    sender = sender_of(server)
    assert len(sender) == 1
    server.kill9()
    gone, alive = psutil.wait_procs(workers + sender, timeout=20)
    assert not alive, [w.pid for w in alive]  # the webhook sender too: it holds the same lifeline
    assert server.log().count("the supervisor is gone") == 2
    check_invariants(server.db)


async def test_a_two_worker_server_is_four_processes(two_workers):
    """The supervisor, its workers and one webhook sender for all of them, nothing else (no
    multiprocessing resource tracker); the sender listens on no port."""
    server, _ = two_workers
    assert len(psutil.Process(server.pid).children(recursive=True)) == 3
    assert len(workers_of(server)) == 2 and len(sender := sender_of(server)) == 1
    assert sender[0].pid not in listening_pids(server.port)
