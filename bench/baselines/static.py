"""The load generator's yardstick: a trivial HTTP/1.1 server (asyncio Protocol on uvloop, no
framework, no database) answering every request with the same small 200. wrk driven against it
with a scenario's own Lua script shows how many requests per second wrk can produce with that
script on this machine; a scenario far below that figure is not limited by wrk.

    python -m bench.baselines.static --port N
"""
from __future__ import annotations

import argparse
import asyncio

import uvloop

BODY = b'{"ok":true}'
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)


class Http(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data
        out = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                line_end = head.find(b"\r\n", at)
                length = int(head[at + 15:line_end if line_end >= 0 else None])
            total = end + 4 + length
            if len(buf) < total:
                break
            buf = buf[total:]
            out.append(RESPONSE)
        self.buffer = buf
        if out:
            self.transport.write(b"".join(out))  # type: ignore[attr-defined]


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Http, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    uvloop.run(main(ap.parse_args().port))
