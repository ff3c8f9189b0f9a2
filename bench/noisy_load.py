"""The two tenants of scenario 7 (bench/noisy.py), each a process of its own that prints one JSON
line of figures when it is done:

    python -m bench.noisy_load quiet  CONFIG_JSON   # org B: steady getBalance, latency measured
    python -m bench.noisy_load abuse  CONFIG_JSON   # org A: issue 17's abuse, all at once

Org B is an open-loop load (as wrk2 does it): request k is due at start + k / rate whatever the
answers do, and goes out on a free keep-alive connection of a small pool (a new one is opened
while every one is busy, up to a cap, as a client's pool does); one that had to wait for a
connection is timed from when it was due, not from when it could be sent, so a server that
stalls for a second is charged a second for every request due meanwhile (a closed loop would
send nothing while stalled and report only the one slow answer). Every answer is checked (200,
a getBalance result with the balance prepared).

Org A does everything issue 17 found at the same time, from one process lowered to SCHED_BATCH
so that org B's measuring process, on the same CPU, is woken ahead of it:
- slow bodies: sockets that send `Content-Length: 100` and 1 byte, then stall (half of them) or
  trickle a byte a second (the others); reopened when the server drops them;
- metadata deposits: the largest metadata a deposit may carry (64 keys, ~13 KB) alternating
  with an over-large one (1 M empty maps in a body just under 1 MiB, which must be refused);
- expensive reads, batches of 100 with another read key: invoicePreview of a user with events on
  every meter, unique_count getMeterEventsSummary over many events, listMeters, listTransactions
  of the user holding the large metadata, getUsage;
- a flood: a few connections pipelining batches of getBalance as fast as the server answers
  (a batch takes a token per entry), far over the key's rate limit; the 429s (and their
  Retry-After) are counted.

Plain asyncio streams and a minimal HTTP/1.1 reader (Content-Length or chunked): no client
library between the figures and the socket.
"""
from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import msgpack

MSGPACK = "application/msgpack"


# -- HTTP/1.1 on asyncio streams --------------------------------------------------------------

def request_bytes(host: str, method: str, path: str, key: str, body: bytes | None = None,
                  content_type: str = MSGPACK) -> bytes:
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Authorization: Bearer {key}"]
    if body is not None:
        head += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + (body or b"")


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes

    @property
    def closes(self) -> bool:
        return self.headers.get(b"connection", b"").lower() == b"close"


async def read_answer(reader: asyncio.StreamReader, keep_body: bool = True) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    status = int(lines[0].split(None, 2)[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            if keep_body:
                parts.append(chunk[:-2])
        body = b"".join(parts)
    else:
        n = int(headers.get(b"content-length", b"0"))
        body = await reader.readexactly(n) if n else b""
    return Answer(status, headers, body if keep_body else b"")


def decode(body: bytes) -> Any:
    """An answer in msgpack (what was asked), else JSON (refusals written before the codec is
    known), else None."""
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception:
        try:
            return json.loads(body)
        except ValueError:
            return None


def outcome(answer: Answer) -> str:
    """"200", "200 -32602", "429 -32029", "413": the HTTP status and, for a ZAP error, its code."""
    value = decode(answer.body) if answer.body else None
    if isinstance(value, dict) and isinstance(value.get("error"), dict):
        return f"{answer.status} {value['error'].get('code')}"
    return str(answer.status)


class Conn:
    """One keep-alive connection, reopened when it is closed or fails."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def call(self, data: bytes, keep_body: bool = True) -> Answer:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        assert self.reader is not None
        self.writer.write(data)
        answer = await read_answer(self.reader, keep_body)
        if answer.closes:
            self.close()
        return answer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
        self.reader = self.writer = None


def envelope(method: str, params: dict[str, Any], id_: int = 1) -> dict[str, Any]:
    return {"method": method, "id": id_, "params": params}


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q / 100 * len(sorted_values)))]


# -- org B: the quiet tenant ------------------------------------------------------------------

async def quiet(cfg: dict[str, Any]) -> dict[str, Any]:
    """cfg: host, port, key, users (names), balance (each user's), rate (requests/s in all),
    connections (kept open from the start), max_connections (opened when every one is busy, as
    a client's pool does), warmup, seconds, timeout."""
    now = time.perf_counter  # not loop.time(): uvloop's is in whole milliseconds, cached per loop turn
    host, port = cfg["host"], cfg["port"]
    reqs = [request_bytes(f"{host}:{port}", "POST", "/api/v1/zap", cfg["key"],
                          msgpack.packb(envelope("billing.getBalance", {"user": u}, i)))
            for i, u in enumerate(cfg["users"])]
    interval = 1 / cfg["rate"]
    idle: list[Conn] = [Conn(host, port) for _ in range(cfg["connections"])]
    opened = len(idle)
    freed = asyncio.Condition()
    start = now() + 0.05
    measure_from = start + cfg["warmup"]
    end = measure_from + cfg["seconds"]
    deadline = end + cfg["timeout"] + 2.0
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    first_error: list[str] = []
    timer_lag: list[float] = []  # how late this process woke for a send it was sleeping towards

    def fail(kind: str, detail: str, measured: bool) -> None:
        if measured:
            errors[kind] += 1
            if not first_error:
                first_error.append(f"{kind}: {detail}"[:300])

    async def take() -> tuple[Conn, bool]:
        """A free connection, else a new one while under max_connections, else the next to
        be freed; and whether it had to wait for that."""
        nonlocal opened
        if idle:
            return idle.pop(), False
        if opened < cfg["max_connections"]:
            opened += 1
            return Conn(host, port), False
        async with freed:
            while not idle:
                await freed.wait()
            return idle.pop(), True

    async def give(conn: Conn) -> None:
        async with freed:
            idle.append(conn)
            freed.notify()

    async def one(k: int, due: float) -> None:
        # Timed from the send when a connection was free at once (this process's own late
        # wake-up, timers having ~1 ms granularity, is not the server's doing); from when it
        # was due when it had to wait for one (the server's slowness held every connection).
        measured = due >= measure_from
        conn, waited = await take()
        sent = due if waited else now()
        try:
            answer = await asyncio.wait_for(conn.call(reqs[k % len(reqs)]), max(0.001, min(cfg["timeout"], deadline - now())))
        except asyncio.TimeoutError:
            conn.close()
            fail("timeout", f"no answer within {cfg['timeout']:g}s", measured)
            return
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            conn.close()
            fail("socket", f"{type(exc).__name__}: {exc}", measured)
            return
        finally:
            await give(conn)
        done = now()
        value = decode(answer.body)
        result = value.get("result") if isinstance(value, dict) else None
        if answer.status != 200 or not isinstance(result, dict) or result.get("balance") != cfg["balance"]:
            fail(outcome(answer) if answer.status == 200 else str(answer.status), repr(answer.body[:200]), measured)
        elif measured:
            latencies.append(done - sent)

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    tasks = []
    k = 0
    while True:  # the schedule: request k is due at start + k / rate, whatever the answers do
        due = start + k * interval
        if due >= end:
            break
        t = now()
        if due > t:
            await asyncio.sleep(due - t)
            timer_lag.append(now() - due)
        tasks.append(asyncio.create_task(one(k, due)))
        k += 1
    await asyncio.gather(*tasks)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    for conn in idle:
        conn.close()
    latencies.sort()
    lag = sorted(timer_lag)
    ms = [x * 1000 for x in latencies]
    total_errors = sum(errors.values())
    return {
        "requests": len(latencies) + total_errors, "ok": len(latencies), "errors": total_errors,
        "error_kinds": dict(errors), "first_error": first_error[0] if first_error else "",
        "rate": len(latencies) / cfg["seconds"], "connections_used": opened,
        "p50_ms": percentile(ms, 50), "p90_ms": percentile(ms, 90), "p99_ms": percentile(ms, 99),
        "p999_ms": percentile(ms, 99.9), "max_ms": ms[-1] if ms else 0.0,
        "timer_lag_p99_ms": percentile(lag, 99) * 1000, "timer_lag_max_ms": (lag[-1] if lag else 0.0) * 1000,
        "cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
    }


# -- org A: the abuse -------------------------------------------------------------------------

@dataclass
class Tally:
    """What one kind of abuse sent and got back."""

    sent: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    bytes_in: int = 0
    slowest_s: float = 0.0
    extra: Counter[str] = field(default_factory=Counter)

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sent": self.sent, "outcomes": dict(self.outcomes.most_common())}
        if self.failures:
            out["failures"] = dict(self.failures)
        if self.bytes_in:
            out["bytes_in"] = self.bytes_in
        if self.slowest_s:
            out["slowest_s"] = round(self.slowest_s, 3)
        out.update(self.extra)
        return out


def legal_metadata() -> dict[str, str]:
    """As much metadata as a deposit may carry by the bounds issue 17 proposes (64 keys, 16 KiB
    encoded): 64 keys of 200 characters, ~13.5 KB in JSON and in msgpack."""
    return {f"k{i:02d}": chr(ord("a") + i % 26) * 200 for i in range(64)}


def oversize_metadata() -> dict[str, list[dict[str, Any]]]:
    """Issue 17's finding 4: a million empty maps, in a body just under the 1 MiB body limit
    (1000 keys of 1000 empty maps: ~1.01 MB of msgpack), so it is decoded rather than refused
    by its length; each cost 0.8 s of CPU before metadata was bounded."""
    return {f"k{i:04d}": [{}] * 1000 for i in range(1000)}


async def abuse(cfg: dict[str, Any]) -> dict[str, Any]:
    """cfg: host, port, keys {admin, read (slow bodies), reads, flood}, seconds, slow_sockets, flood_batch, depositors,
    deposit_kinds (largest_legal, oversize: both by default), readers, read_kinds (the keys of
    `reads` below without "reads_"; all by default), batch, flood_connections, flood_depth, and
    what to read: preview_user, events_user,
    unique_meter, meta_user, usage_user, period [start, end]."""
    if hasattr(os, "SCHED_BATCH"):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    loop = asyncio.get_running_loop()
    host, port, keys = cfg["host"], cfg["port"], cfg["keys"]
    hostport = f"{host}:{port}"
    started = loop.time()
    stop_at = started + cfg["seconds"]
    tallies: dict[str, Tally] = {}

    def zap_request(key: str, body: Any) -> bytes:
        return request_bytes(hostport, "POST", "/api/v1/zap", key, msgpack.packb(body))

    # slow bodies ------------------------------------------------------------------------------
    slow = tallies.setdefault("slow_bodies", Tally())
    slow_head = (f"POST /api/v1/zap HTTP/1.1\r\nHost: {hostport}\r\nAuthorization: Bearer {keys['read']}\r\n"
                 f"Content-Type: {MSGPACK}\r\nContent-Length: 100\r\n\r\n").encode()
    open_now = 0

    async def slow_socket(n: int) -> None:
        nonlocal open_now
        trickle = n % 2 == 1
        while loop.time() < stop_at:
            t0 = loop.time()
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError as exc:
                slow.failures[f"connect: {type(exc).__name__}"] += 1
                await asyncio.sleep(0.1)
                continue
            slow.sent += 1
            open_now += 1
            slow.extra["peak_open"] = max(slow.extra["peak_open"], open_now)
            try:
                writer.write(slow_head + b"\x80")
                while True:  # until the server answers or drops the socket
                    try:
                        data = await asyncio.wait_for(reader.read(65536), 1.0)
                    except asyncio.TimeoutError:
                        if trickle:
                            writer.write(b"\x80")
                        continue
                    if not data:
                        slow.outcomes["dropped without an answer"] += 1
                    else:
                        slow.outcomes[data.split(b" ", 2)[1].decode(errors="replace")] += 1
                    slow.slowest_s = max(slow.slowest_s, loop.time() - t0)
                    break
            except (OSError, ValueError, IndexError) as exc:
                slow.outcomes[f"reset ({type(exc).__name__})"] += 1
            finally:
                open_now -= 1
                writer.transport.abort()
            await asyncio.sleep(0.1)  # slow bodies, not a connection flood: the flood is below

    # metadata deposits -----------------------------------------------------------------------
    bodies = {
        "deposits_largest_legal": zap_request(keys["admin"], envelope("billing.deposit", {
            "user": cfg["meta_user"], "amount": 1, "metadata": legal_metadata()})),
        "deposits_oversize": zap_request(keys["admin"], envelope("billing.deposit", {
            "user": cfg["meta_user"], "amount": 1, "metadata": oversize_metadata()})),
    }

    async def cycle(n: int, requests: dict[str, bytes], kinds: list[str], tally: Callable[[Tally, Any], None]) -> None:
        """One connection sending `kinds` of `requests` in turn (starting at the n-th) until the
        end, each answer tallied by `tally`."""
        conn = Conn(host, port)
        i = n
        while loop.time() < stop_at:
            kind = kinds[i % len(kinds)]
            i += 1
            t = tallies.setdefault(kind, Tally())
            t.sent += 1
            t0 = loop.time()
            try:
                answer = await conn.call(requests[kind])
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                conn.close()
                t.failures[type(exc).__name__] += 1
                await asyncio.sleep(0.05)
                continue
            t.slowest_s = max(t.slowest_s, loop.time() - t0)
            tally(t, answer)
        conn.close()

    def tally_outcome(t: Tally, answer: Any) -> None:
        t.outcomes[outcome(answer)] += 1

    async def depositor(n: int) -> None:
        kinds = [k for k in bodies if k.removeprefix("deposits_") in cfg.get("deposit_kinds", ("largest_legal", "oversize"))]
        await cycle(n, bodies, kinds, tally_outcome)

    # expensive reads -------------------------------------------------------------------------
    start, end = cfg["period"]
    reads = {
        "reads_invoicePreview": ("billing.invoicePreview", {"userId": cfg["preview_user"], "periodStart": start, "periodEnd": end}),
        "reads_uniqueCountSummary": ("billing.getMeterEventsSummary", {"meterId": cfg["unique_meter"], "userId": cfg["events_user"]}),
        "reads_listMeters": ("billing.listMeters", {}),
        "reads_listTransactions": ("billing.listTransactions", {"user": cfg["meta_user"], "limit": 100}),
        "reads_getUsage": ("billing.getUsage", {"user": cfg["usage_user"], "limit": 100}),
    }
    batches = {kind: zap_request(keys["reads"], [envelope(m, p, i) for i in range(cfg["batch"])])
               for kind, (m, p) in reads.items()}

    def tally_entries(t: Tally, answer: Any) -> None:
        t.bytes_in += len(answer.body)
        value = decode(answer.body)
        if isinstance(value, list):
            for entry in value:
                err = entry.get("error") if isinstance(entry, dict) else None
                t.outcomes[f"entry {err.get('code')}" if isinstance(err, dict) else "entry ok"] += 1
        else:
            t.outcomes[outcome(answer)] += 1

    async def reader_task(n: int) -> None:
        kinds = [k for k in batches if k.removeprefix("reads_") in cfg.get("read_kinds", [k[6:] for k in batches])]
        await cycle(n, batches, kinds, tally_entries)

    # the flood -------------------------------------------------------------------------------
    flood = tallies.setdefault("flood", Tally())
    per = cfg.get("flood_batch", 1)
    one_balance = envelope("billing.getBalance", {"user": "flood/u0"})
    flood_req = zap_request(keys["flood"], [one_balance] * per if per > 1 else one_balance)
    depth = cfg["flood_depth"]

    async def flooder() -> None:
        conn = Conn(host, port)
        while loop.time() < stop_at:
            try:
                if conn.writer is None:
                    conn.reader, conn.writer = await asyncio.open_connection(host, port, limit=1 << 20)
                assert conn.reader is not None
                conn.writer.write(flood_req * depth)  # pipelined: answered in order
                flood.sent += depth
                for _ in range(depth):
                    answer = await read_answer(conn.reader, keep_body=False)
                    flood.outcomes[str(answer.status)] += 1
                    if answer.status == 429 and b"retry-after" in answer.headers:
                        flood.extra["429_with_retry_after"] += 1
                    if answer.closes:
                        conn.close()
                        break
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                conn.close()
                flood.failures[type(exc).__name__] += 1
                await asyncio.sleep(0.05)
        conn.close()

    tasks = [asyncio.create_task(slow_socket(n)) for n in range(cfg["slow_sockets"])]
    tasks += [asyncio.create_task(depositor(n)) for n in range(cfg["depositors"])]
    tasks += [asyncio.create_task(reader_task(n)) for n in range(cfg["readers"])]
    tasks += [asyncio.create_task(flooder()) for _ in range(cfg["flood_connections"])]
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.sleep(max(0.0, stop_at - loop.time()))
    await asyncio.sleep(0.5)  # loops stop by themselves when a call ends; calls still out are abandoned
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    elapsed = loop.time() - started
    flood.extra["rate_per_s"] = round(flood.sent / elapsed)
    flood.extra["entries_per_request"] = per
    return {"seconds": round(elapsed, 2), "cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
            "tallies": {k: t.report() for k, t in tallies.items()}}


def main(argv: list[str]) -> int:
    role, cfg = argv[0], json.loads(argv[1])
    try:
        import uvloop  # the same loop as the server's: less client CPU per request
        factory: Any = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(quiet(cfg) if role == "quiet" else abuse(cfg))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
