"""Resource limits: a client that trickles its body, holds connections open or sends a huge
body cannot exhaust the server. Driven over raw sockets, since a well-behaved HTTP client
cannot be made to misbehave this way."""
from __future__ import annotations

import asyncio
import json

import pytest

from zapbilling.app import STORE, create_app
from zapbilling.config import Config, server_options
from zapbilling.times import system_clock

BODY_TIMEOUT = 0.5
IDLE_TIMEOUT = 0.5


@pytest.fixture
async def limited(aiohttp_server, db_path, clock):
    config = Config(db=db_path, clock=clock, sweep_seconds=3600, body_timeout=BODY_TIMEOUT,
                    idle_timeout=IDLE_TIMEOUT, max_inflight=2)
    server = await aiohttp_server(create_app(config), **server_options(config))
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


async def test_requests_beyond_the_inflight_limit_wait_their_turn(limited):
    """max_inflight=2: two trickling bodies hold both slots, so a third, complete request is
    answered only after one of them has been refused for its slow body."""
    server, key = limited
    slow = [await connect(server) for _ in range(2)]
    for _, w in slow:
        w.write(head(key, len(BALANCE)) + BALANCE[:5])
        await w.drain()
    await asyncio.sleep(0.1)  # let both take their slots
    order: list[str] = []

    async def slow_answer(reader):
        status, _, _ = await response(reader)
        order.append(f"slow {status}")

    async def quick():
        reader, writer = await connect(server)
        writer.write(head(key, len(BALANCE)) + BALANCE)
        await writer.drain()
        status, _, _ = await response(reader)
        order.append(f"quick {status}")
        writer.close()

    await asyncio.gather(quick(), *(slow_answer(r) for r, _ in slow))
    assert order[0] == "slow 400" and "quick 200" in order, order
    for _, w in slow:
        w.close()
