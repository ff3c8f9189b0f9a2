"""Graceful shutdown of a real `zapbilling serve` process (graceful.py, server.py): SIGTERM with
calls in flight. New connections are refused from then on, every call in flight gets its full
answer, its write survives a restart, the access lines are written, and the log ends with one
line per serving process saying so (plus the supervisor's with --workers), exit status 0.

"In flight" without timing: the test holds the database's write lock (SQLite: BEGIN IMMEDIATE;
PostgreSQL: the ledger table locked), so each deposit sent waits inside the server for it. A
call counts as in flight once the kernel says the server process has read all of it (its
socket's receive queue empty and the client's bytes all acknowledged, /proc/net/tcp). Then
SIGTERM; then the test waits until a new connection is refused (the stop has begun); only then
does it let the writes go. So the calls are in flight across the whole stop, however slow the
machine. (A request whose body is still arriving when the stop begins cannot finish: aiohttp
stops reading every connection at the stop; graceful.py says so.)
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sqlite3
from typing import AsyncIterator

import pytest

from procs import TIMEOUT, ServerProcess, create_key
from zapbilling.store import is_postgres

AMOUNTS = [1 << i for i in range(6)]
"""One deposit each, of distinct powers of two: the balance says exactly which were committed."""
GENEROUS = ("--shutdown-timeout", "120")
"""Far above anything this test waits, so that a loaded machine cannot cut a call off."""


@contextlib.asynccontextmanager
async def writes_held(db: str) -> AsyncIterator[None]:
    """No write commits while inside: the server's writes wait for the lock (SQLite's busy
    timeout is 10 s, PostgreSQL waits as long as it takes)."""
    if is_postgres(db):
        import asyncpg

        con = await asyncpg.connect(db)
        tx = con.transaction()
        await tx.start()
        await con.execute("LOCK TABLE ledger IN EXCLUSIVE MODE")  # reads go on; writes to the ledger wait
        try:
            yield
        finally:
            await tx.rollback()
            await con.close()
        return
    lite = sqlite3.connect(db, isolation_level=None)
    lite.execute("BEGIN IMMEDIATE")  # the write lock; readers (WAL) go on
    try:
        yield
    finally:
        lite.execute("ROLLBACK")
        lite.close()


def _tcp_queues(local_port: int, remote_port: int) -> tuple[int, int] | None:
    """(tx_queue, rx_queue) of the IPv4 TCP socket local_port -> remote_port, from /proc/net/tcp."""
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        fields = line.split()
        local, remote, queues = fields[1], fields[2], fields[4]
        if int(local.split(":")[1], 16) == local_port and int(remote.split(":")[1], 16) == remote_port:
            tx, rx = queues.split(":")
            return int(tx, 16), int(rx, 16)
    return None


async def read_by_the_server(server_port: int, client_port: int) -> None:
    """Return once every byte the client sent has been read by the server process."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while asyncio.get_running_loop().time() < deadline:
        client, server = _tcp_queues(client_port, server_port), _tcp_queues(server_port, client_port)
        if client is not None and server is not None and client[0] == 0 and server[1] == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the server did not read the request from port {client_port}")


class Call:
    """A REST deposit on its own connection."""

    def __init__(self, port: int, key: str, user: str, amount: int):
        self.port, self.key = port, key
        self.body = json.dumps({"user": user, "amount": amount}).encode()

    async def send(self) -> None:
        """Send it whole; return once the server has read it all."""
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(
            f"POST /api/v1/billing/deposit HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {self.key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(self.body)}\r\nConnection: close\r\n\r\n".encode()
            + self.body)
        await self.writer.drain()
        await read_by_the_server(self.port, self.writer.get_extra_info("sockname")[1])

    async def answer(self) -> tuple[int, dict]:
        """The status and JSON body of the answer, read to the end (the server closes after it)."""
        raw = await asyncio.wait_for(self.reader.read(), TIMEOUT)
        self.writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head, "no answer"
        status = int(head.split(b" ", 2)[1])
        length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))
        assert len(body) == length, f"a cut answer: {len(body)} of {length} bytes"
        return status, json.loads(body)


async def refused(port: int) -> None:
    """Return once a new connection to the port is refused."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while asyncio.get_running_loop().time() < deadline:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            return
        except ConnectionResetError:  # queued just as the listening socket closed
            continue
        w.close()
        await asyncio.sleep(0.01)
    raise AssertionError("new connections were still accepted after SIGTERM")


async def balance(port: int, key: str, user: str) -> int:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"GET /api/v1/billing/balance?user={user} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            "Connection: close\r\n\r\n".encode())
    raw = await asyncio.wait_for(r.read(), TIMEOUT)
    w.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), raw
    return int(json.loads(body)["balance"])


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_answers_every_call_in_flight_then_stops_with_one_line(tmp_path, db_path, workers):
    key = create_key(db_path, "acme", "test")
    server = ServerProcess(db_path, tmp_path, workers=workers, args=GENEROUS)
    try:
        await server.start_ready()
        calls = [Call(server.port, key, "hanzo/inflight", a) for a in AMOUNTS]
        async with writes_held(db_path):
            for c in calls:
                await c.send()
            server.proc.send_signal(signal.SIGTERM)
            await refused(server.port)
        answers = await asyncio.gather(*(c.answer() for c in calls))
        assert [(status, body["amount"], body["type"]) for status, body in answers] == [(201, a, "deposit") for a in AMOUNTS]
        assert server.proc.wait(timeout=TIMEOUT) == 0
        log = server.log().splitlines()
    finally:
        server.stop()

    stopped = [line for line in log if "stopped" in line]
    answered = [re.search(r"INFO zapbilling: stopped: answered (\d+) requests in flight, database closed(.*)$", line)
                for line in stopped if "stopped: answered" in line]
    assert all(answered), stopped
    if workers == 1:
        assert len(stopped) == 1 and [m.group(1, 2) for m in answered] == [(str(len(AMOUNTS)), "")], stopped
    else:
        # a worker still starting when the signal came (the port answers once one worker does;
        # on PostgreSQL a worker's start-up takes longer) stops with its start-up line instead
        early = [re.search(r"INFO zapbilling: stopped during start-up \(SIGTERM\), before serving(.*)$", line)
                 for line in stopped if "stopped during start-up" in line]
        assert all(early) and answered and len(answered) + len(early) == workers and len(stopped) == workers + 1, stopped
        assert sum(int(m.group(1)) for m in answered) == len(AMOUNTS), stopped
        labels = [m.group(2) for m in answered] + [m.group(1) for m in early]
        assert sorted(re.sub(r", pid \d+", "", label) for label in labels) == [f" (worker {n} of {workers})" for n in range(1, workers + 1)]
        assert stopped[-1].endswith(f"INFO zapbilling: stopped: all {workers} workers stopped"), stopped
        assert log[-1] == stopped[-1]
    # the access lines were written (by one process: before its stop line; workers share the log)
    deposits = [n for n, line in enumerate(log) if "/api/v1/billing/deposit" in line]
    assert len(deposits) == len(AMOUNTS), log
    if workers == 1:
        assert max(deposits) < min(n for n, line in enumerate(log) if "stopped:" in line)
    assert not [line for line in log if "Traceback" in line or "ERROR" in line], log

    restarted = ServerProcess(db_path, tmp_path)
    try:
        await restarted.start_ready()
        assert await balance(restarted.port, key, "hanzo/inflight") == sum(AMOUNTS)
    finally:
        restarted.stop()


async def test_a_call_that_outlives_the_shutdown_timeout_is_cut_off_and_the_server_still_stops(tmp_path, db_path):
    """The bound: a call still waiting --shutdown-timeout after the signal is cut off (its
    connection closed without an answer), and the server stops all the same."""
    key = create_key(db_path, "acme", "test")
    server = ServerProcess(db_path, tmp_path, args=("--shutdown-timeout", "0.5"))
    try:
        await server.start_ready()
        stuck = Call(server.port, key, "hanzo/stuck", 5)
        async with writes_held(db_path):
            await stuck.send()
            server.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(stuck.reader.read(), TIMEOUT) == b"", "the cut call got no answer"
        assert server.proc.wait(timeout=TIMEOUT) == 0
        log = server.log()
    finally:
        server.stop()
    stopped = [line for line in log.splitlines() if "stopped" in line]
    assert [line.split("INFO zapbilling: ")[1] for line in stopped] == [
        "stopped: answered 0 requests in flight, cut off 1 at the 0.5 s bound, database closed"], log
    assert "Traceback" not in log
