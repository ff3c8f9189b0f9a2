"""Throughput of the real server: `python bench/run.py [--seconds 5] [--concurrency 32]`.

Starts `zapbilling serve` on a fresh SQLite file, makes a key with the CLI, then drives each
scenario from one aiohttp client process for a fixed time and prints requests per second,
latency percentiles and the ratio to the first scenario. Client and server share the machine,
so the figures are for comparing scenarios and commits, not absolute capacity.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import aiohttp
import msgpack


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli() -> list[str]:
    exe = shutil.which("zapbilling", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "zapbilling"]


async def _drive(make_request, seconds: float, concurrency: int) -> tuple[int, list[float]]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    counter = itertools.count()

    async def worker() -> None:
        while time.perf_counter() < deadline:
            n = next(counter)
            start = time.perf_counter()
            await make_request(n)
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), latencies


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--durability", choices=("full", "normal"), default="full")
    args = ap.parse_args()

    workdir = tempfile.mkdtemp(prefix="zb-bench-")
    db, port = os.path.join(workdir, "bench.db"), _free_port()
    key = subprocess.run(_cli() + ["keys", "create", "--db", db, "--org", "bench", "--mode", "test"],
                         capture_output=True, text=True, check=True).stdout.strip()
    server = subprocess.Popen(_cli() + ["serve", "--db", db, "--port", str(port), "--durability", args.durability],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {key}"}
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency)) as http:
            await http.post(f"{base}/api/v1/billing/deposit", json={"user": "bench/u", "amount": 10**9}, headers=auth)
            mp_headers = dict(auth, **{"Content-Type": "application/msgpack"})
            read_env = msgpack.packb({"method": "billing.getBalance", "id": 1, "params": {"user": "bench/u"}})
            batch_env = msgpack.packb([{"method": "billing.getBalance", "id": i, "params": {"user": "bench/u"}} for i in range(100)])

            async def get(url, **kw):
                async with http.get(url, **kw) as r:
                    await r.read()
                    assert r.status == 200, r.status

            async def post(url, ok=(200, 201), **kw):
                async with http.post(url, **kw) as r:
                    await r.read()
                    assert r.status in ok, (r.status, await r.text())

            scenarios = {
                "REST GET balance": lambda n: get(f"{base}/api/v1/billing/balance?user=bench/u", headers=auth),
                "ZAP/json getBalance": lambda n: post(f"{base}/api/v1/zap", headers=auth,
                                                      json={"method": "billing.getBalance", "id": n, "params": {"user": "bench/u"}}),
                "ZAP/msgpack getBalance": lambda n: post(f"{base}/api/v1/zap", data=read_env, headers=mp_headers),
                "REST POST usage (write)": lambda n: post(f"{base}/api/v1/billing/usage", headers=auth,
                                                          json={"user": f"bench/u{n % 50}", "amount": 1, "requestId": f"r{n}"}),
                "ZAP/msgpack recordUsage (write)": lambda n: post(f"{base}/api/v1/zap", headers=mp_headers, data=msgpack.packb(
                    {"method": "billing.recordUsage", "id": n, "params": {"user": f"bench/v{n % 50}", "amount": 1, "requestId": f"z{n}"}})),
                "ZAP/msgpack batch of 100 reads": lambda n: post(f"{base}/api/v1/zap", data=batch_env, headers=mp_headers),
            }
            first = None
            print(f"{args.seconds:g}s per scenario, {args.concurrency} concurrent, durability {args.durability}")
            print(f"{'scenario':34} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>7}")
            for name, make in scenarios.items():
                count, lat = await _drive(make, args.seconds, args.concurrency)
                rate = count / args.seconds
                first = first or rate
                lat.sort()
                p99 = lat[int(len(lat) * 0.99) - 1] if lat else 0
                print(f"{name:34} {rate:9.0f} {statistics.median(lat) * 1000:8.2f} {p99 * 1000:8.2f} {rate / first:7.2f}")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
