"""Instructions per request: the server under callgrind, answering a fixed number of requests.

    python -m bench.instructions [--op getBalance|recordUsage] [--server zapbilling|bare]
                                 [--requests 2048] [--connections 64]

Timings on a shared machine move by tens of percent from one run to the next; the instructions
a server executes per request repeat to within 1% whatever else the machine is doing. That
makes this the tool for telling whether a change to the request path helps: run it on both
commits. It counts user-space instructions of every thread of the server (the writer's SQLite
work included), not system calls: a baseline that commits once per request pays for its
writes mostly in the kernel, so compare recordUsage with the bare baseline by the benchmark's
timings, and use this to compare zapbilling with itself.

The server runs under `valgrind --tool=callgrind` with instrumentation off until a warm-up of
256 requests is answered; then `callgrind_control` turns it on for the measured requests only.
getBalance goes over ZAP/msgpack (the bare baseline: its REST GET), recordUsage over ZAP/msgpack
with a new requestId each time. Needs valgrind (Debian's package). About a minute per run.
"""
from __future__ import annotations

import argparse
import asyncio
import glob
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgpack

from .load import ROOT, child_env, copy_db, free_port, zapbilling_cmd
from .scenarios import Bench, Settings

WARMUP = 256


def _request(op: str, server: str, i: int, run: str) -> tuple[str, str, bytes | None, str | None]:
    """(method, path, body, content type) of request number i."""
    user = f"bench/u{i % 100}"
    if op == "getBalance" and server == "bare":
        return "GET", f"/api/v1/billing/balance?user={user}&currency=usd", None, None
    if op == "getBalance":
        params: dict[str, Any] = {"user": user, "currency": "usd"}
    else:
        params = {"user": user, "amount": 1, "model": "gpt-bench", "totalTokens": 42, "requestId": f"{run}-{i}"}
    body = msgpack.packb({"method": f"billing.{op}", "id": i, "params": params})
    return "POST", "/api/v1/zap", body, "application/msgpack"


async def _drive(url: str, key: str, op: str, server: str, pid: int, requests: int, connections: int) -> int:
    run = secrets.token_hex(4)
    counter = 0

    async def worker(session: aiohttp.ClientSession, n: int) -> None:
        nonlocal counter
        for _ in range(n):
            counter += 1
            method, path, body, ctype = _request(op, server, counter, run)
            headers = {"Authorization": f"Bearer {key}"} | ({"Content-Type": ctype} if ctype else {})
            async with session.request(method, url + path, data=body, headers=headers) as r:
                answer = await r.read()
                if r.status >= 300:
                    raise SystemExit(f"{op}: HTTP {r.status}: {answer[:200]!r}")

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:
        deadline = time.monotonic() + 600  # python under valgrind starts slowly
        while True:
            try:
                async with session.get(url + "/healthz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start under valgrind")
            await asyncio.sleep(0.5)
        per = max(WARMUP // connections, 1)
        await asyncio.gather(*(worker(session, per) for _ in range(connections)))
        subprocess.run(["callgrind_control", "--instr=on", str(pid)], check=True, capture_output=True)
        per = max(requests // connections, 1)
        await asyncio.gather(*(worker(session, per) for _ in range(connections)))
        subprocess.run(["callgrind_control", "--instr=off", str(pid)], check=True, capture_output=True)
        return per * connections


def measure(op: str, server: str, requests: int, connections: int) -> float:
    if not shutil.which("valgrind"):
        raise SystemExit("needs valgrind: sudo apt-get install -y valgrind")
    work = Path(tempfile.mkdtemp(prefix="zapbilling-instructions-"))
    try:
        bench = Bench(Settings(seconds=1, warmup=1, rounds=1, big_rows=1000, pin=False, workdir=work, log=lambda m: None))
        tpl = bench.template("balance" if op == "getBalance" else "empty")
        db = copy_db(tpl.path, work / "measured.db")
        port = free_port()
        if server == "bare":
            argv = [sys.executable, "-m", "bench.baselines.bare", "--port", str(port), "--db", str(db), "--key", tpl.key]
        else:
            argv = [*zapbilling_cmd(), "serve", "--db", str(db), "--port", str(port)]
        out = work / "callgrind.out"
        with open(work / "valgrind.log", "wb") as log:
            proc = subprocess.Popen(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--instr-atstart=no", *argv],
                cwd=ROOT, env=child_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )
            try:
                answered = asyncio.run(_drive(f"http://127.0.0.1:{port}", tpl.key, op, server, proc.pid, requests, connections))
            finally:
                proc.terminate()
                proc.wait(timeout=600)
        total = sum(int(line.split()[1]) for f in glob.glob(f"{out}*") for line in open(f, errors="replace")
                    if line.startswith("totals:"))
        return total / answered
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--op", choices=("getBalance", "recordUsage"), default="getBalance")
    ap.add_argument("--server", choices=("zapbilling", "bare"), default="zapbilling")
    ap.add_argument("--requests", type=int, default=2048)
    ap.add_argument("--connections", type=int, default=64)
    args = ap.parse_args()
    per = measure(args.op, args.server, args.requests, args.connections)
    print(f"{args.server} {args.op}: {per:,.0f} instructions per request")


if __name__ == "__main__":
    main()
