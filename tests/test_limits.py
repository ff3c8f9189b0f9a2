"""Resource limits: a client that trickles its body, holds connections open or sends a huge
body cannot exhaust the server, and one API key's stalled requests cannot hold what other
tenants need (transport/admission.py). Driven over raw sockets, since a well-behaved HTTP
client cannot be made to misbehave this way."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import pytest

from conftest import make_app
from zapbilling.app import ADMISSION, STORE
from zapbilling.config import Config, server_options
from zapbilling.limits import Limits
from zapbilling.times import system_clock

from procs import ServerProcess, create_key

pytestmark = pytest.mark.sqlite_only("HTTP limits, before the store")

BODY_TIMEOUT = 0.5
IDLE_TIMEOUT = 0.5


@pytest.fixture
async def limited(aiohttp_server, db_path, clock):
    config = Config(db=db_path, clock=clock, sweep_seconds=3600,
                    limits=Limits(body_timeout=BODY_TIMEOUT, idle_timeout=IDLE_TIMEOUT, max_inflight=2))
    server = await aiohttp_server(make_app(config), **server_options(config))
    _, key = await server.app[STORE].create_key("acme", "live", "admin", system_clock())
    return server, key


async def connect(server):
    return await asyncio.open_connection(server.host, server.port)


def head(key: str, length: int, path: str = "/api/v1/zap") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()


async def response(reader: asyncio.StreamReader) -> tuple[int, dict, bytes]:
    status_line = await asyncio.wait_for(reader.readline(), 10)
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        k, _, v = line.decode().partition(":")
        headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return int(status_line.split()[1]), headers, body


async def closed(reader: asyncio.StreamReader) -> bool:
    """The server closed the connection (EOF) within 10 s."""
    try:
        while await asyncio.wait_for(reader.read(65536), 10):
            pass
    except ConnectionResetError:
        pass
    return True


BALANCE = json.dumps({"method": "billing.getBalance", "id": 1, "params": {"user": "u"}}).encode()


async def test_a_body_that_does_not_arrive_in_time_is_refused_and_the_connection_closed(limited):
    server, key = limited
    reader, writer = await connect(server)
    writer.write(head(key, len(BALANCE)) + BALANCE[:10])  # and then nothing more
    await writer.drain()
    status, _, body = await response(reader)
    assert status == 400
    err = json.loads(body)["error"]
    assert err["code"] == -32600 and "did not arrive within 0.5 s" in err["message"]
    assert await closed(reader)
    writer.close()


async def test_a_rest_body_that_does_not_arrive_in_time_is_refused(limited):
    server, key = limited
    reader, writer = await connect(server)
    writer.write(head(key, 100, "/api/v1/billing/deposit") + b'{"user"')
    await writer.drain()
    status, _, body = await response(reader)
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_request"
    writer.close()


async def test_headers_sent_slowly_or_an_idle_connection_are_closed(limited):
    server, key = limited
    idle_reader, idle_writer = await connect(server)
    slow_reader, slow_writer = await connect(server)
    slow_writer.write(b"POST /api/v1/zap HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    await slow_writer.drain()
    assert await closed(idle_reader)
    assert await closed(slow_reader)
    idle_writer.close()
    slow_writer.close()


async def test_many_idle_connections_do_not_keep_others_out(limited):
    server, key = limited
    idle = [await connect(server) for _ in range(300)]
    reader, writer = await connect(server)
    writer.write(head(key, len(BALANCE)) + BALANCE)
    await writer.drain()
    status, _, body = await response(reader)
    assert status == 200 and json.loads(body)["result"]["balance"] == 0
    for r, _ in idle:
        assert await closed(r)
    for _, w in idle + [(reader, writer)]:
        w.close()


async def test_an_oversized_body_is_refused_before_it_is_read(limited):
    server, key = limited
    reader, writer = await connect(server)
    writer.write(head(key, 50 * 1024 * 1024) + b"[")  # 50 MiB announced, 1 byte sent
    await writer.drain()
    status, _, body = await response(reader)  # answered without waiting for the rest
    assert status == 413 and json.loads(body)["error"]["code"] == -32013
    writer.close()


async def test_a_chunked_body_over_the_limit_is_refused(limited):
    server, key = limited
    reader, writer = await connect(server)
    writer.write((f"POST /api/v1/zap HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                  "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode())
    chunk = b"x" * 65536
    try:
        for _ in range(40):  # 2.5 MiB, more than the 1 MiB limit
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
    except ConnectionResetError:
        pass
    status, _, body = await response(reader)
    assert status == 413 and json.loads(body)["error"]["code"] == -32013
    writer.close()


async def stalled(server, key: str, n: int, path: str = "/api/v1/zap") -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """n connections, each with the headers of a 100-byte body and 1 byte of it, then nothing."""
    conns = [await connect(server) for _ in range(n)]
    for _, w in conns:
        w.write(head(key, 100, path) + b"{")
        await w.drain()
    return conns


async def quick_balance(server, key: str) -> int:
    reader, writer = await connect(server)
    writer.write(head(key, len(BALANCE)) + BALANCE)
    await writer.drain()
    status, _, _ = await response(reader)
    writer.close()
    return status


async def answered_first(server, key: str, slow: list) -> list[str]:
    """The order in which a complete getBalance of `key` and the `slow` connections are answered."""
    order: list[str] = []

    async def slow_answer(reader):
        status, _, _ = await response(reader)
        order.append(f"slow {status}")

    async def quick():
        order.append(f"quick {await quick_balance(server, key)}")

    await asyncio.gather(quick(), *(slow_answer(r) for r, _ in slow))
    return order


STALL_TIMEOUT = 3.0
"""Body deadline of the stalling tests: the other tenant must be answered well within it."""


@pytest.fixture
async def shared_two(aiohttp_server, db_path, clock):
    """max_inflight=2, per-key bound 3, bodies may take 3 s; org acme (admin and read keys) and
    org other."""
    config = Config(db=db_path, clock=clock, sweep_seconds=3600,
                    limits=Limits(body_timeout=STALL_TIMEOUT, idle_timeout=STALL_TIMEOUT, max_inflight=2, inflight_per_key=3))
    server = await aiohttp_server(make_app(config), **server_options(config))
    store = server.app[STORE]
    now = system_clock()
    keys = {"admin": (await store.create_key("acme", "live", "admin", now))[1],
            "read": (await store.create_key("acme", "live", "read", now))[1],
            "other": (await store.create_key("other", "live", "read", now))[1]}
    return server, keys


@pytest.mark.parametrize("scope", ["admin", "read"])
async def test_stalled_bodies_of_one_key_do_not_hold_the_shared_slots(shared_two, scope):
    """Finding 2: 260 stalled bodies of any key, a read key included, made another org's
    getBalance wait for the body deadline (8.5 s), since the shared bound was taken before the
    body was read. Here 6 stalled bodies (3x the shared slots, 2x the key's own bound) and the
    other org is answered while they are all still stalled."""
    server, keys = shared_two
    slow = await stalled(server, keys[scope], 6)
    await asyncio.sleep(0.1)  # let them take what they can
    order = await answered_first(server, keys["other"], slow)
    assert order[0] == "quick 200", order
    assert sorted(order[1:]) == ["slow 400"] * 6, order
    for _, w in slow:
        w.close()


async def test_one_key_never_has_more_in_flight_than_its_bound(shared_two):
    """Per-key bound 3: 5 stalled bodies of the key hold 3 slots (2 wait their turn, holding no
    shared slot), a complete request of the same key waits behind them, and another org's goes
    first. The key's count of requests in flight, sampled throughout, never passes 3."""
    server, keys = shared_two
    admission = server.app[ADMISSION]
    admin_id = (await server.app[STORE].authenticate(keys["admin"])).key_id
    seen: list[int] = []
    sampling = True

    async def sample():
        while sampling:
            seen.append(admission.in_flight(admin_id))
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    slow = await stalled(server, keys["admin"], 5)
    await asyncio.sleep(0.1)
    assert admission.in_flight(admin_id) == 3
    assert admission.shared.in_use == 0, "stalled bodies hold no shared slot"
    order: list[str] = []

    async def own():
        order.append(f"own {await quick_balance(server, keys['admin'])}")

    async def other():
        order.append(f"other {await quick_balance(server, keys['other'])}")

    async def slow_answer(reader):
        status, _, _ = await response(reader)
        order.append(f"slow {status}")

    own_task = asyncio.create_task(own())
    await asyncio.sleep(0.05)  # queued behind the key's stalled requests
    await asyncio.gather(other(), own_task, *(slow_answer(r) for r, _ in slow))
    sampling = False
    await sampler
    assert order[0] == "other 200", order
    assert order.index("own 200") > order.index("slow 400"), f"the key's own request waited its turn: {order}"
    assert max(seen) == 3, f"the key's in-flight count went to {max(seen)}"
    for _, w in slow:
        w.close()


async def test_a_request_without_a_valid_key_never_has_its_body_read(shared_two):
    """Refused on its headers at once (not after the body deadline), holding nothing."""
    server, keys = shared_two
    reader, writer = await connect(server)
    loop = asyncio.get_running_loop()
    start = loop.time()
    writer.write(head("zb_live_not-a-key", 100) + b"{")
    await writer.drain()
    status, _, body = await response(reader)
    assert status == 401 and json.loads(body)["error"]["code"] == -32001
    assert loop.time() - start < STALL_TIMEOUT / 2, "answered without waiting for the body"
    assert server.app[ADMISSION].shared.in_use == 0 and not server.app[ADMISSION].gates
    writer.close()


# -- one line per abandoned body ----------------------------------------------------------------

async def _log_of(caplog, what: str) -> list[logging.LogRecord]:
    """Every record logged until one containing `what` shows up (10 s at most), and a moment after."""
    for _ in range(1000):
        if any(what in r.getMessage() for r in caplog.records):
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # anything the same request logs after it
    return list(caplog.records)


def assert_one_line(lines: list[str], how: str, key: str) -> None:
    abandoned = [ln for ln in lines if "request body abandoned" in ln]
    assert len(abandoned) == 1, lines
    line = abandoned[0]
    assert "POST /api/v1/zap" in line and "4 of 100 bytes" in line, line
    assert ("closed the connection" if how == "hang up" else "deadline passed") in line, line
    assert key not in line


async def test_a_body_past_its_deadline_logs_one_line_without_a_traceback(limited, caplog):
    server, key = limited
    caplog.set_level(logging.DEBUG)
    reader, writer = await connect(server)
    writer.write(head(key, 100) + b'{"me')
    await writer.drain()
    status, _, _ = await response(reader)
    assert status == 400
    records = await _log_of(caplog, "request body abandoned")
    writer.close()
    assert_one_line([r.getMessage() for r in records], "deadline", key)
    noisy = [r for r in records if r.exc_info or r.levelno >= logging.WARNING]
    assert not noisy, [(r.name, r.getMessage()) for r in noisy]


async def test_a_client_hanging_up_mid_body_logs_one_line_without_a_traceback(tmp_path):
    """Finding 8: aiohttp logged a 25-line traceback (ConnectionResetError) per abandoned body.
    A real `zapbilling serve` and its stderr: aiohttp's test server cancels a handler whose
    client hangs up, which `serve` does not (so the in-process server cannot show this)."""
    db = str(tmp_path / "billing.db")
    key = create_key(db, "acme")
    proc = ServerProcess(db, tmp_path)
    await proc.start_ready()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proc.port)
        writer.write(head(key, 100) + b'{"me')
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()
        for _ in range(500):
            if "request body abandoned" in proc.log():
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # the access line, and anything else the request logs
    finally:
        assert proc.terminate() == 0
    log = proc.log()
    assert_one_line(log.splitlines(), "hang up", key)
    assert "Traceback" not in log and " ERROR " not in log, log
    assert '"POST /api/v1/zap HTTP/1.1" 400' in log, log


# -- the Server header -------------------------------------------------------------------------

def assert_no_version(headers: dict[str, str]) -> None:
    server = headers.get("server", "")
    assert server == "zapbilling", headers
    assert "python" not in server.lower() and "aiohttp" not in server.lower()


async def test_no_answer_names_python_or_aiohttp(limited):
    """Finding 8: `Server: Python/3.11 aiohttp/3.x` on every answer, aiohttp's own included."""
    server, key = limited
    reader, writer = await connect(server)
    writer.write(head(key, len(BALANCE)) + BALANCE)  # an API answer
    await writer.drain()
    status, headers, _ = await response(reader)
    assert status == 200
    assert_no_version(headers)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    status, headers, _ = await response(reader)
    assert status == 200
    assert_no_version(headers)
    writer.close()
    reader, writer = await connect(server)  # aiohttp's own answer to a malformed request line
    writer.write(b"GET /healthz HTTP/1.1 and more\r\nHost: x\r\n\r\n")
    await writer.drain()
    status, headers, _ = await response(reader)
    assert status == 400
    assert_no_version(headers)
    writer.close()


async def test_handlers_still_running_at_a_stop_are_cancelled_before_the_store_closes(db_path, clock, caplog):
    """As `serve` stops (run_app: the shutdown timeout, then the app's cleanup), a handler that
    outlived the timeout is cancelled before the store closes under it. Before, each such call
    failed on the closed store and was logged as an internal error with its traceback."""
    from aiohttp import ClientSession, web

    app = make_app(Config(db=db_path, clock=clock, sweep_seconds=3600))
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    store = app[STORE]
    _, key = await store.create_key("acme", "live", "admin", system_clock())
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def stuck(*args, **kwargs):  # a long read that will not end by itself
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    store.meters_page = stuck
    port = site._server.sockets[0].getsockname()[1]
    async with ClientSession() as s:
        call = asyncio.create_task(s.get(f"http://127.0.0.1:{port}/api/v1/billing/meters", headers={"Authorization": f"Bearer {key}"}))
        await asyncio.wait_for(started.wait(), 10)
        assert app[ADMISSION].running, "the call is admitted and running"
        with caplog.at_level(logging.INFO, logger="zapbilling"):
            await asyncio.wait_for(runner.cleanup(), 30)
        with contextlib.suppress(Exception):
            await call
    assert cancelled.is_set()
    assert not app[ADMISSION].running
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert errors == [], [r.getMessage() for r in errors]
