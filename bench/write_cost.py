"""What an endpoint on usage.recorded costs recordUsage's write path, in bytes written to storage
and server CPU per request: the figures the outbox's pages are judged by (README, "The outbox's
cost").

    python -m bench.write_cost [--requests 24000] [--repeat 3]

Each run makes a fresh database, starts `zapbilling serve --durability full` pinned to the last
CPU, funds 100 users, and (for the endpoint's runs) creates one endpoint on usage.recorded whose
attempts are held back (`--webhook-concurrency 0`), then pauses the server's sender process
(SIGSTOP) so that only the serving process's writes count. 64 connections of this process, pinned
to the other CPUs, send recordUsage (a new requestId each); after a warm-up, the serving process's
`write_bytes` (/proc/<pid>/io: what it sent to storage, the WAL and checkpoints) and its CPU time
are read around the measured requests. Runs without and with the endpoint alternate, `--repeat`
times. A Python client is slower than wrk, so commits hold fewer writes than in the benchmark's
scenario 2; the ratio is what compares. Linux only (/proc, sched_setaffinity).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

import aiohttp
import psutil

from .load import Server, cpu_seconds_of, free_port, zap, zapbilling_cmd
from .scenarios import _create_key

USERS = 100
CONNECTIONS = 64
WARMUP = 2000


async def _load(url: str, key: str, start: int, requests: int) -> None:
    """`requests` recordUsage from CONNECTIONS connections, requestIds from `start` on."""
    headers = {"Authorization": f"Bearer {key}"}
    sent = start
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONNECTIONS)) as session:
        async def worker(n: int) -> None:
            nonlocal sent
            for _ in range(n):
                sent += 1
                params = {"user": f"b/u{sent % USERS}", "amount": 1, "model": "m", "requestId": f"r{sent}"}
                async with session.post(f"{url}/api/v1/zap", headers=headers,
                                        json={"method": "billing.recordUsage", "id": 1, "params": params}) as r:
                    answer = await r.json()
                    assert "result" in answer, answer

        await asyncio.gather(*(worker(requests // CONNECTIONS) for _ in range(CONNECTIONS)))


def _run(hook: bool, requests: int) -> tuple[float, float]:
    """(bytes written, server CPU seconds) per request."""
    folder = Path(tempfile.mkdtemp(prefix="zapbilling-write-cost-"))
    db = folder / "b.db"
    key = _create_key(db)
    port = free_port()
    argv = [*zapbilling_cmd(), "serve", "--db", str(db), "--port", str(port), "--durability", "full",
            "--webhook-allow-private", "--webhook-concurrency", "0", "--rate-per-second", "0", "--log-level", "warning"]
    with Server("zapbilling", argv, port, log=folder / "server.log", cpus={max(os.sched_getaffinity(0))}) as srv:
        for u in range(USERS):
            zap(srv.url, key, "billing.deposit", {"user": f"b/u{u}", "amount": 10**12})
        if hook:
            zap(srv.url, key, "billing.createWebhookEndpoint", {"url": "http://127.0.0.1:9/hook", "events": ["usage.recorded"]})
        sender = srv.sender()
        sender.suspend()  # only the serving process's writes count
        try:
            proc = psutil.Process(srv.pid)
            asyncio.run(_load(srv.url, key, 0, WARMUP))
            written, cpu = proc.io_counters().write_bytes, cpu_seconds_of([proc])
            asyncio.run(_load(srv.url, key, WARMUP, requests))
            n = requests // CONNECTIONS * CONNECTIONS
            return (proc.io_counters().write_bytes - written) / n, (cpu_seconds_of([proc]) - cpu) / n
        finally:
            sender.resume()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--requests", type=int, default=24000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    others = os.sched_getaffinity(0) - {max(os.sched_getaffinity(0))}
    if others:
        os.sched_setaffinity(0, others)
    for _ in range(args.repeat):
        (b0, c0), (b1, c1) = [_run(hook, args.requests) for hook in (False, True)]
        print(f"recordUsage per request: no endpoint {b0 / 1024:.1f} KB written, {c0 * 1e6:.0f} us CPU;"
              f" one on usage.recorded {b1 / 1024:.1f} KB, {c1 * 1e6:.0f} us: {c0 / c1:.2f}x by CPU", flush=True)


if __name__ == "__main__":
    main()
