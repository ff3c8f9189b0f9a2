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
import signal
import subprocess
import tempfile
from typing import Any

import aiohttp
import psutil

from .load import child_env, cpu_seconds_of, free_port, zapbilling_cmd

USERS = 100
CONNECTIONS = 64
WARMUP = 2000


async def _run(hook: bool, requests: int) -> tuple[float, float]:
    """(bytes written, server CPU seconds) per request."""
    folder = tempfile.mkdtemp(prefix="zapbilling-write-cost-")
    db, port = f"{folder}/b.db", free_port()
    env = child_env()
    key = subprocess.check_output([*zapbilling_cmd(), "keys", "create", "--db", db, "--org", "bench", "--mode", "live"],
                                  text=True, env=env, stderr=subprocess.DEVNULL).strip()
    last = max(os.sched_getaffinity(0))
    server = subprocess.Popen(
        [*zapbilling_cmd(), "serve", "--db", db, "--port", str(port), "--durability", "full", "--webhook-allow-private",
         "--webhook-concurrency", "0", "--rate-per-second", "0", "--log-level", "warning"], env=env)
    proc = psutil.Process(server.pid)
    senders: list[psutil.Process] = []
    try:
        proc.cpu_affinity([last])
        base, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONNECTIONS)) as session:
            async def call(method: str, params: dict[str, Any]) -> Any:
                body = {"method": f"billing.{method}", "id": 1, "params": params}
                async with session.post(f"{base}/api/v1/zap", json=body, headers=headers) as r:
                    answer = await r.json()
                    assert "result" in answer, answer
                    return answer["result"]

            for _ in range(200):
                try:
                    async with session.get(f"{base}/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
            for u in range(USERS):
                await call("deposit", {"user": f"b/u{u}", "amount": 10**12})
            if hook:
                await call("createWebhookEndpoint", {"url": "http://127.0.0.1:9/hook", "events": ["usage.recorded"]})
            for _ in range(100):  # the sender process: started once the server is ready
                senders = proc.children()
                if senders:
                    break
                await asyncio.sleep(0.05)
            for sender in senders:
                sender.send_signal(signal.SIGSTOP)
            sent = 0

            async def worker(n: int) -> None:
                nonlocal sent
                for _ in range(n):
                    sent += 1
                    i = sent
                    await call("recordUsage", {"user": f"b/u{i % USERS}", "amount": 1, "model": "m", "requestId": f"r{i}"})

            await asyncio.gather(*(worker(WARMUP // CONNECTIONS) for _ in range(CONNECTIONS)))
            written, cpu = proc.io_counters().write_bytes, cpu_seconds_of([proc])
            per = requests // CONNECTIONS
            await asyncio.gather(*(worker(per) for _ in range(CONNECTIONS)))
            n = per * CONNECTIONS
            return (proc.io_counters().write_bytes - written) / n, (cpu_seconds_of([proc]) - cpu) / n
    finally:
        for sender in senders:
            sender.send_signal(signal.SIGCONT)
        server.terminate()
        server.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--requests", type=int, default=24000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    others = os.sched_getaffinity(0) - {max(os.sched_getaffinity(0))}
    if others:
        os.sched_setaffinity(0, others)
    for _ in range(args.repeat):
        (b0, c0), (b1, c1) = [asyncio.run(_run(hook, args.requests)) for hook in (False, True)]
        print(f"recordUsage per request: no endpoint {b0 / 1024:.1f} KB written, {c0 * 1e6:.0f} us CPU;"
              f" one on usage.recorded {b1 / 1024:.1f} KB, {c1 * 1e6:.0f} us: {c0 / c1:.2f}x by CPU", flush=True)


if __name__ == "__main__":
    main()
