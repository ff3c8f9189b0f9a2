"""Where a zapbilling request spends its time: the server under wrk load, sampled by py-spy.

    python -m bench.profile [--op getBalance|recordUsage|recordMeterEvents] [--codec msgpack|json|rest]
                            [--server zapbilling|bare] [--seconds 15] [--rate 250] [--raw FILE] [--svg FILE] [--top 25]

Starts `zapbilling serve` on a copy of scenario 1's database (scenario 2's empty one for
recordUsage and recordMeterEvents, whose batches of 100 are scenario 3's), drives it with the same Lua script as the benchmark (64 connections), and after a
short warm-up records the server with `py-spy record --gil --nonblocking` (only the thread
holding the GIL is sampled: that is the CPU a single worker has; the server is paused for each
sample, so stacks are whole, at --rate 100 per second). Prints the request rate under the profiler, then the share of samples
(1) by package of the innermost frame (self time), (2) of the functions that matter on the
request path (inclusive: the function and everything it called), (3) the top functions by self
and by inclusive time. --raw keeps py-spy's collapsed stacks; --svg records a flame graph in a
second pass. Needs `pip install py-spy` (ptrace must be allowed: root, or CAP_SYS_PTRACE).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from .load import LUA, Server, wrk_path
from .scenarios import Bench, Settings, create_meter

# Inclusive shares worth tracking on the request path, by a regex on "function (file)".
PATH_FUNCTIONS = [
    ("aiohttp: RequestHandler._handle_request (whole request)", r"^RequestHandler\._handle_request \(aiohttp/web_protocol\.py\)"),
    ("  aiohttp: reading + parsing the request (data_received)", r"^RequestHandler\.data_received \(aiohttp/web_protocol\.py\)"),
    ("  aiohttp: finish_response (headers, body, socket write)", r"^RequestHandler\.finish_response \(aiohttp/web_protocol\.py\)"),
    ("    socket write (StreamWriter._writelines/_write)", r"^StreamWriter\._(writelines|write) \(aiohttp/http_writer\.py\)"),
    ("    access log (log_access: AccessLogger + logging)", r"^RequestHandler\.log_access \(aiohttp/web_protocol\.py\)"),
    ("  middleware: bounded (semaphore)", r"bounded \(zapbilling/app\.py\)"),
    ("  ZapEndpoint.handle", r"^ZapEndpoint\.handle \(zapbilling/transport/zap\.py\)"),
    ("  REST view", r"view \(zapbilling/transport/rest\.py\)"),
    ("    authenticate (key hash + lookup)", r"^authenticate \(zapbilling/transport/auth\.py\)"),
    ("    read_body (request.read + timeout)", r"^read_body \(zapbilling/transport/http\.py\)"),
    ("    codec decode", r"^Codec\.decode \(zapbilling/transport/codec\.py\)"),
    ("    ZapEndpoint.one (envelope checks + call)", r"^ZapEndpoint\.one \(zapbilling/transport/zap\.py\)"),
    ("    Caller.call", r"^Caller\.call \(zapbilling/transport/calls\.py\)"),
    ("      params validation (pydantic)", r"\(pydantic/|model_validate"),
    ("      handler (zapbilling/billing)", r"\(zapbilling/billing/"),
    ("      store (zapbilling/store, SQL included)", r"\(zapbilling/store/"),
    ("      aiosqlite (trips to its thread)", r"\(aiosqlite/"),
    ("    respond (encode + web.Response)", r"^respond \(zapbilling/transport/http\.py\)"),
    ("asyncio/uvloop machinery", r"\((asyncio|uvloop)/"),
    ("logging (all)", r"\(logging/"),
]
"""Inclusive shares worth tracking on the request path: a regex on "function (file)" frames."""


def _frames(stack: str) -> list[str]:
    """py-spy's 'func (file:line)' frames, without line numbers, site-packages prefixes trimmed."""
    out = []
    for frame in stack.split(";"):
        frame = re.sub(r":\d+\)$", ")", frame.strip())
        frame = re.sub(r"\((?:.*/site-packages/|.*/lib/python3\.\d+/)", "(", frame)
        frame = re.sub(r"\(/work/main/", "(", frame)
        out.append(frame)
    return out


def _package(frame: str) -> str:
    m = re.search(r"\(([^)]*)\)$", frame)
    path = m.group(1) if m else frame
    parts = path.split("/")
    if parts[0] in ("zapbilling",) and len(parts) > 1:
        return "/".join(parts[:2]).removesuffix(".py")
    if len(parts) > 1:
        return parts[0]
    return path.removesuffix(".py")


def analyse(raw: str, top: int) -> str:
    stacks: list[tuple[list[str], int]] = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        if count.isdigit():
            stacks.append((_frames(stack), int(count)))
    total = sum(c for _, c in stacks)
    if not total:
        return "no samples (is the server busy? is ptrace allowed?)"
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    pkg: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    for frames, count in stacks:
        self_t[frames[-1]] += count
        pkg[_package(frames[-1])] += count
        for f in set(frames):
            incl[f] += count
        for name, pattern in PATH_FUNCTIONS:
            if any(re.search(pattern, f) for f in frames):
                groups[name] += count
    pct = lambda n: f"{100 * n / total:5.1f}%"  # noqa: E731
    lines = [f"{total} samples of the thread holding the GIL", "", "Self time by package (innermost frame):"]
    lines += [f"  {pct(n)}  {name}" for name, n in pkg.most_common(top)]
    lines += ["", "Request path (inclusive: the function and all it called):"]
    lines += [f"  {pct(groups[name])}  {name}" for name, _ in PATH_FUNCTIONS]
    lines += ["", f"Top {top} functions by self time:"]
    lines += [f"  {pct(n)}  {name}" for name, n in self_t.most_common(top)]
    lines += ["", f"Top {top} functions by inclusive time:"]
    lines += [f"  {pct(n)}  {name}" for name, n in incl.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    ap.add_argument("--op", choices=("getBalance", "recordUsage", "recordMeterEvents"), default="getBalance")
    ap.add_argument("--server", choices=("zapbilling", "bare"), default="zapbilling",
                    help="bare: profile scenario 1's/2's ceiling (bench/baselines/bare.py) instead, for comparison")
    ap.add_argument("--codec", choices=("msgpack", "json", "rest"), default="msgpack")
    ap.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite",
                    help="postgres: the same database copied into a throwaway PostgreSQL cluster (bench/postgres.py)")
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    ap.add_argument("--nonblocking", action="store_true",
                    help="do not pause the server per sample (less overhead, some stacks come out truncated)")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--raw", type=Path, help="keep py-spy's collapsed stacks here")
    ap.add_argument("--svg", type=Path, help="also record a flame graph here (a second pass)")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists():
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="zapbilling-profile-"))
    bench = Bench(Settings(seconds=args.seconds, warmup=2, rounds=1, big_rows=0, workdir=workdir,
                           log=lambda m: print(m, file=sys.stderr)))
    fresh = bench.fresh_pg if args.backend == "postgres" else bench.fresh
    try:
        if args.op == "getBalance":
            db, tpl = fresh("balance", "profile")
            script = "balance.lua"
            env = {"BENCH_STYLE": "rest", "BENCH_PATH": "/api/v1/billing/balance"} if args.codec == "rest" else \
                {"BENCH_STYLE": "zap", "BENCH_CODEC": args.codec, "BENCH_PATH": "/api/v1/zap"}
        else:
            db, tpl = fresh("empty", "profile")
            script = "usage.lua" if args.op == "recordUsage" else "meter_events.lua"
            env = {"BENCH_CODEC": "json" if args.codec == "json" else "msgpack", "BENCH_PATH": "/api/v1/zap"}
        if args.server == "bare" and args.op == "recordMeterEvents":
            print("--server bare has no recordMeterEvents (scenario 3's baseline runs in-process)", file=sys.stderr)
            return 2
        if args.server == "bare":
            if args.op == "getBalance":
                env = {"BENCH_STYLE": "rest", "BENCH_PATH": "/api/v1/billing/balance"}
            srv: Server = bench.baseline("bare", db, "profile", key=tpl.key)
        else:
            srv = bench.zapbilling(db, "profile")
        with srv:
            if args.op == "recordMeterEvents":
                env.update(create_meter(bench, srv, tpl))
            passes = [("raw", workdir / "stacks.txt")] + ([("flamegraph", args.svg)] if args.svg else [])
            for fmt, out in passes:
                load = subprocess.Popen(
                    [wrk_path() or "wrk", "-t2", f"-c{args.connections}", f"-d{args.seconds + 4}s", "--latency", "-s", str(LUA / script),
                     srv.url], env={**os.environ, "BENCH_LUA_DIR": str(LUA), "BENCH_KEY": tpl.key, **env},
                    stdout=subprocess.PIPE, text=True)
                time.sleep(2)
                subprocess.run([pyspy, "record", "--pid", str(srv.pid), "--duration", str(args.seconds), "--rate",
                                str(args.rate), "--gil", *(["--nonblocking"] if args.nonblocking else []), "--format", fmt, "--output", str(out)],
                               check=True, capture_output=True)
                text, _ = load.communicate()
                rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
                over = "REST (bare baseline)" if args.server == "bare" and args.op == "getBalance" else args.codec
                print(f"{args.server} {args.op} over {over}: {float(rate.group(1)) if rate else 0:,.0f} req/s under the profiler"
                      f" ({args.connections} connections){' [flame graph pass]' if fmt == 'flamegraph' else ''}")
            raw = (workdir / "stacks.txt").read_text()
            if args.raw:
                args.raw.write_text(raw)
            print(analyse(raw, args.top))
            if args.svg:
                print(f"\nflame graph: {args.svg}")
    finally:
        bench.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
