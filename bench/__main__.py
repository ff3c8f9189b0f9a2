"""zapbilling's benchmark (issue 8): `python -m bench [--quick] [--rounds N] [--only 1,2,...] [--backend B]`.

Every server (zapbilling and each baseline) runs as its own process on a fresh copy of a
database prepared by zapbilling itself; wrk (Debian's package, Lua scripts in bench/lua) drives
it from a separate process. For each scenario and its baselines: requests/s (events/s for
meter events), p50 and p99 latency, the server process tree's peak memory (PSS summed over its
processes, judged; RSS summed, shown), and the CPU used by the server, by wrk and by everything
else on the machine during the measured window. Prints the
runs and the targets (figure, baseline, ratio, target, PASS/FAIL) and writes bench/results.json.

--backend (issue 18): sqlite (the default) runs scenarios 1-7 on SQLite as always; postgres
starts a throwaway PostgreSQL cluster (bench/postgres.py) and runs scenarios 1-4's zapbilling
runs on it beside the SQLite runs they are compared with (same load, same client, the same
rows), then scenario 8 (1, 2 and 3 servers on one PostgreSQL); both runs everything. PostgreSQL
runs also report the cluster's CPU per request and the transactions retried (every server logs
its count at shutdown).

Exit status: 0 when every run worked (every answer checked in the warm-up was right, no HTTP or
socket error while measuring, servers stopped cleanly, writes all in the file), whatever the
targets say; 1 otherwise; with --strict, also 1 when a target fails.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

from .load import CPUS, ROOT, wrk_path
from .noisy import noisy_scenario
from .postgres import SETTINGS as PG_SETTINGS
from .scenarios import CALIBRATION, Bench, HttpRun, Run, Scenario, Settings, calibrate, median_of, scenarios

RESULTS = Path(__file__).resolve().parent / "results.json"
PG_RESULTS = RESULTS.with_name("results-postgres.json")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 1 round, 2 s per run after 1 s of warm-up, 100,000 rows instead of 1,000,000")
    ap.add_argument("--rounds", type=int, help="rounds of every run, the median is reported (default 3; --quick: 1)")
    ap.add_argument("--seconds", type=float, help="measured seconds per run (default 10; --quick: 2); whole seconds")
    ap.add_argument("--warmup", type=float, help="warm-up seconds per run, answers checked (default 2; --quick: 1); whole seconds")
    ap.add_argument("--rows", type=int, help="scenario 4's ledger rows and meter events, scenario 6's rows of each listing (default 1,000,000; --quick: 100,000)")
    ap.add_argument("--only", help="comma-separated scenario numbers, e.g. 1,4")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                    help="pin one-process servers to the last CPU and wrk to the others (default on when there are 2+ CPUs)")
    ap.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                    help="skip the run of wrk against a trivial server")
    ap.add_argument("--json", type=Path, help=f"where to write the results (default {RESULTS.relative_to(ROOT)}; "
                                              f"with --backend postgres or both: {PG_RESULTS.relative_to(ROOT)})")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (databases, server logs)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    ap.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="sqlite",
                    help="sqlite: scenarios 1-7 on SQLite (default); postgres: scenarios 1-4 on PostgreSQL beside the "
                         "SQLite runs they are compared with, and scenario 8 (1-3 servers on one PostgreSQL); both: all")
    args = ap.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (2.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    args.rows = args.rows or (100_000 if args.quick else 1_000_000)
    args.only = {int(x) for x in args.only.split(",")} if args.only else None
    args.json = args.json or (RESULTS if args.backend == "sqlite" else PG_RESULTS)
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "zapbilling"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + (" (zapbilling/ modified)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def fmt_figure(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit.startswith("ms"):
        return f"{value:.2f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    if unit == "%":
        return f"{value:.3f} %"
    return f"{value:,.0f} {unit}"


def compare(scn: Scenario, runs: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for t in scn.targets:
        subject, baseline = runs.get(t.subject), runs.get(t.baseline)
        row: dict[str, Any] = {"scenario": scn.number, "label": t.label, "subject": t.subject, "baseline": t.baseline,
                               "metric": t.metric, "target": f"{t.op} {t.threshold:g}{'x' if t.baseline else ''}" if t.op else None}
        if scn.skipped:
            row.update(result="SKIP", note=scn.skipped)
        elif not t.baseline and subject is not None:  # no baseline: the worst round's figure itself (a count that must be 0)
            worst = min if t.op == ">=" else max
            a = worst((r[t.metric] for r in subject["rounds"] if t.metric in r), default=None)
            ok = a is not None and (a >= t.threshold if t.op == ">=" else a <= t.threshold)
            row.update(figure=a, unit=subject["unit"] if t.metric == "rate" else "%" if t.metric.endswith("_pct") else t.metric,
                       result="n/a" if a is None else "ERROR" if subject["problems"] else "PASS" if ok else "FAIL")
        elif subject is None or baseline is None:
            row.update(result="n/a", note="not measured")
        else:
            a, b = subject["median"][t.metric], baseline["median"][t.metric]
            ratio = a / b if b else float("inf")
            row.update(figure=a, baseline_figure=b, ratio=ratio,
                       unit="us CPU" if t.metric.endswith("cpu_us_per_unit") else "per 1k" if t.metric == "preempted_per_1k"
                       else subject["unit"])
            ca, cb = subject["median"].get("cpu_us_per_unit"), baseline["median"].get("cpu_us_per_unit")
            if t.metric == "rate" and ca and cb:
                row["cpu_ratio"] = cb / ca  # how many times less server CPU per unit of work than the baseline
            broken = subject["problems"] or baseline["problems"]
            if t.op is None:
                row["result"] = "info"
            elif broken:
                row["result"] = "ERROR"
            else:
                row["result"] = "PASS" if (ratio >= t.threshold if t.op == ">=" else ratio <= t.threshold) else "FAIL"
        rows.append(row)
    if not scn.skipped:  # server memory: every zapbilling run of the scenario
        # Judged by PSS summed over the server's processes: its resident memory with each page
        # counted once (a page shared by n processes counts 1/n in each). Summed RSS counts every
        # shared page once per process: libpython, libssl, aiohttp's and pydantic's native code,
        # ~15 MB a process, so four interpreters (scenario 5: supervisor, two workers, sender)
        # could not pass 150 MB summed whatever each held (196 MB summed vs 142 MB PSS at the
        # commit that made this change). Summed RSS is still shown beside it.
        ours = [(k, r) for k, r in runs.items() if r["scenario"] == scn.number and r.get("zapbilling")]
        if ours:
            def held(m: dict[str, Any]) -> float:
                return float(m.get("pss_mb") or m["rss_mb"])

            key, worst = max(ours, key=lambda kr: held(kr[1]["median"]))
            m = worst["median"]
            row = {"scenario": scn.number, "label": f"zapbilling peak memory (PSS), scenario {scn.number}", "subject": key,
                   "metric": "pss_mb", "figure": held(m), "unit": "MB", "target": "< 150 MB",
                   "result": "PASS" if held(m) < 150 else "FAIL"}
            if m.get("server_processes", 1) > 1:
                row["note"] = f"sum over {m['server_processes']} processes; summed RSS {m['rss_mb']:.0f} MB"
            elif m.get("servers", 1) > 1:
                row["note"] = f"the largest of {m['servers']} servers"
            else:
                row["note"] = f"RSS {m['rss_mb']:.0f} MB"
            rows.append(row)
    return rows


def print_report(meta: dict[str, Any], runs: dict[str, Any], targets: list[dict[str, Any]],
                 calib: dict[str, Any], skipped: dict[int, str], scns: list[Scenario]) -> None:
    p = print
    p(f"\nzapbilling benchmark  {meta['started']}  commit {meta['commit']}  {meta['mode']}: {meta['rounds']} round(s) x "
      f"{meta['seconds']:g}s (+{meta['warmup']:g}s warm-up), medians")
    p(f"machine: {meta['cpus']} CPUs ({meta['cpu_model']}), {meta['pinning']}; load average "
      f"{meta['loadavg_start']} at start, {meta['loadavg_end']} at end")
    p("CPU columns: % of one CPU during the measured window; 'other' = the rest of the machine (not server, not wrk);")
    p("'CPU/unit' = server CPU time per request (per event for events/s, per query for in-process runs), summed over")
    p("the servers of a run; PostgreSQL runs: 'PG' = the cluster's processes' CPU, 'PG/unit' = their CPU time per request,")
    p("'retries' = transactions retried after a deadlock or serialisation failure (every round, warm-up included)")
    if meta.get("postgres"):
        p(f"PostgreSQL: {meta['postgres']}")
    for scn in scns:
        p(f"\nScenario {scn.number}: {scn.title}")
        if scn.number in skipped:
            p(f"  {skipped[scn.number]}")
            continue
        pg = any("pg_cpu_pct" in runs[run.key]["median"] for run in scn.runs if run.key in runs)
        pg_head = f" {'PG':>6} {'PG/unit':>9} {'retries':>7}" if pg else ""
        p(f"  {'run':54} {'figure':>16} {'p50 ms':>8} {'p99 ms':>8} {'RSS MB':>7} {'server':>7} {'wrk':>6} {'other':>6} {'CPU/unit':>9}{pg_head}")
        for run in scn.runs:
            r = runs.get(run.key)
            if r is None:
                continue
            m = r["median"]
            pg_cols = ""
            if pg:
                pg_cols = (f" {m['pg_cpu_pct']:5.0f}% {per_unit({'cpu_us_per_unit': m['pg_cpu_us_per_unit']}):>9} {m.get('retries', '-'):>7}"
                           if "pg_cpu_pct" in m else f" {'-':>6} {'-':>9} {'-':>7}")
            fig = fmt_figure(m["p50_ms"] if run.unit == "ms" else m["rate"], "ms p50" if run.unit == "ms" else run.unit)
            cpu = lambda k: f"{m[k]:.0f}%" if k in m else "-"  # noqa: E731
            flag = "  <- " + "; ".join(r["problems"])[:160] if r["problems"] else ""
            p(f"  {run.label:54} {fig:>16} {m['p50_ms']:8.2f} {m['p99_ms']:8.2f} {m['rss_mb']:7.0f} "
              f"{cpu('server_cpu_pct'):>7} {cpu('load_cpu_pct'):>6} {cpu('other_cpu_pct'):>6} {per_unit(m):>9}{pg_cols}{flag}")
            for i, rnd in enumerate(r["rounds"], 1):  # what a run has to say beyond the columns (scenario 7)
                for line in rnd.get("summary", []):
                    p(f"    round {i}: {line}")
    p("\nTargets (ratio = figure / baseline; PASS/FAIL on the ratio. 'CPU x': baseline's server CPU per unit / ours,")
    p("the same comparison by CPU cost instead of throughput, less disturbed by other work on the machine)")
    p(f"  {'#':2} {'comparison':52} {'figure':>16} {'baseline':>16} {'ratio':>7} {'target':>10} {'result':6} {'CPU x':>6}")
    for t in targets:
        unit = t.get("unit", "")
        unit = ("ms p99" if t["metric"] == "p99_ms" else "ms p50") if unit == "ms" else unit
        fig = fmt_figure(t.get("figure"), unit) if t["metric"] != "pss_mb" else f"{t['figure']:.0f} MB"
        base = fmt_figure(t.get("baseline_figure"), unit) if "baseline_figure" in t else ""
        ratio = f"{t['ratio']:.2f}x" if "ratio" in t else ""
        note = f"  ({t['note']})" if t.get("note") else ""
        cpu_x = f"{t['cpu_ratio']:.2f}x" if "cpu_ratio" in t else ""
        p(f"  {t['scenario']:<2} {t['label']:52} {fig:>16} {base:>16} {ratio:>7} {t['target'] or '-':>10} {t['result']:6} {cpu_x:>6}{note}")
    if calib:
        p("\nLoad generator check: wrk with each script against a trivial server (no framework, no database)")
        p(f"  {'script':28} {'wrk alone':>12} {'wrk CPU':>8} {'fastest run using it':>22} {'headroom':>9}")
        for name, c in calib.items():
            script, env = CALIBRATION[name]
            users = [r for k, r in runs.items() if r.get("script") == script and r.get("style") == env.get("BENCH_STYLE")
                     and r["unit"] != "ms"]
            fastest = max((u["median"]["rate"] / u["per_request"] for u in users), default=None)
            head = f"{c['rate'] / fastest:.1f}x" if fastest else "-"
            fastest_s = f"{fastest:,.0f} req/s" if fastest else "-"
            p(f"  {name:28} {c['rate']:>8,.0f} r/s {c['load_cpu_pct']:>7.0f}% {fastest_s:>22} {head:>9}")


def per_unit(m: dict[str, Any]) -> str:
    v = m.get("cpu_us_per_unit")
    if v is None:
        return "-"
    return f"{v:.1f} us" if v < 100 else f"{v / 1000:.2f} ms" if v >= 10_000 else f"{v:.0f} us"


def backend_of(run: Run) -> str:
    return getattr(run, "backend", "sqlite")


def for_backend(scns: list[Scenario], backend: str) -> list[Scenario]:
    """The scenarios, runs and targets --backend asks for. postgres keeps the PostgreSQL runs and
    the runs their targets compare them with; sqlite drops the PostgreSQL runs and their
    targets; a scenario left with no run goes."""
    every = [r for scn in scns for r in scn.runs]
    if backend == "sqlite":
        kept = {r.key for r in every if backend_of(r) == "sqlite"}
    elif backend == "postgres":
        kept = {r.key for r in every if backend_of(r) == "postgres"}
        kept |= {t.baseline for scn in scns for t in scn.targets if t.subject in kept and t.baseline}
    else:
        kept = {r.key for r in every}
    out = []
    for scn in scns:
        runs = [r for r in scn.runs if r.key in kept]
        if runs:
            targets = [t for t in scn.targets if t.subject in kept and (not t.baseline or t.baseline in kept)]
            out.append(dataclasses.replace(scn, runs=runs, targets=targets))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if wrk_path() is None:
        log("wrk is not installed: apt-get install -y wrk (Debian) or build https://github.com/wg/wrk")
        return 2
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="zapbilling-bench-"))
    pin = args.pin and CPUS >= 2
    settings = Settings(seconds=args.seconds, warmup=args.warmup, rounds=args.rounds, big_rows=args.rows,
                        connections=args.connections, pin=pin, workdir=workdir, log=log)
    bench = Bench(settings)
    scns = sorted(for_backend([*scenarios(settings), noisy_scenario(settings)], args.backend), key=lambda s: s.number)
    scns = [s for s in scns if args.only is None or s.number in args.only]
    cpu_model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    meta: dict[str, Any] = {
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": git_commit(),
        "mode": "quick" if args.quick else "full", "rounds": args.rounds, "seconds": args.seconds, "warmup": args.warmup,
        "rows": args.rows, "connections": args.connections, "cpus": CPUS, "cpu_model": cpu_model,
        "pinning": (f"one-process servers pinned to CPU {CPUS - 1}, wrk to CPU {'0' if CPUS == 2 else f'0-{CPUS - 2}'}; "
                    "scenario 5 (both worker counts) unpinned"
                    if pin else "no pinning: servers and wrk share every CPU") + "; wrk as SCHED_BATCH",
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()), "python": sys.version.split()[0],
        "wrk": subprocess.run([wrk_path() or "wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[0:1],
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1), "backend": args.backend,
    }
    if args.backend != "sqlite":
        meta["postgres"] = (", ".join(f"{k}={v}" for k, v in PG_SETTINGS.items()) + "; a throwaway cluster on loopback, "
                            "unpinned (it shares both CPUs with the servers and wrk); a fresh database per run")
    log(f"bench: work folder {workdir}; {meta['pinning']}; load average {meta['loadavg_start']}")
    runs: dict[str, Any] = {}
    skipped = {s.number: s.skipped for s in scns if s.skipped}
    calib: dict[str, Any] = {}
    failed = False
    try:
        if args.calibrate:
            log("calibration: wrk against a trivial server")
            calib = calibrate(bench)
        for rnd in range(1, args.rounds + 1):
            for scn in scns:
                if scn.skipped:
                    continue
                for run in scn.runs:
                    log(f"round {rnd}/{args.rounds} scenario {scn.number}: {run.label}")
                    try:
                        m = run.measure(bench, rnd)
                    except Exception as exc:  # a run that could not be measured: reported, the rest goes on
                        m = {"problems": [f"{type(exc).__name__}: {exc}"[:800]]}
                    entry = runs.setdefault(run.key, {
                        "label": run.label, "scenario": scn.number, "unit": run.unit, "per_request": run.per_request,
                        "zapbilling": isinstance(run, HttpRun) and run.server == "zapbilling",
                        "script": getattr(run, "script", None), "style": getattr(run, "env", {}).get("BENCH_STYLE"),
                        "rounds": [], "problems": []})
                    entry["rounds"].append(m)
                    entry["problems"] += m["problems"]
                    if m["problems"]:
                        failed = True
                        log(f"  PROBLEM: {'; '.join(m['problems'])[:600]}")
                    else:
                        log(f"  {m['rate']:,.0f} {run.unit if run.unit != 'ms' else 'ops/s'}, p50 {m['p50_ms']:.2f} ms, "
                            f"p99 {m['p99_ms']:.2f} ms, RSS {m['rss_mb']:.0f} MB")
        for entry in runs.values():
            good = [m for m in entry["rounds"] if "rate" in m]
            entry["median"] = median_of(good) if good else {}
        measured = {k: v for k, v in runs.items() if v["median"]}
        targets = [row for scn in scns for row in compare(scn, measured)]
        meta["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        meta["elapsed_s"] = round(time.monotonic() - started, 1)
        print_report(meta, measured, targets, calib, skipped, scns)
        for key, entry in runs.items():
            if entry["problems"]:
                print(f"PROBLEM {key} ({entry['label']}): {'; '.join(entry['problems'])[:1000]}")
        print(f"\n{meta['elapsed_s']:.0f}s in all; results in {args.json}")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "calibration": calib, "skipped": skipped, "targets": targets,
                                         "runs": runs}, indent=2, default=str) + "\n")
    finally:
        bench.close()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if failed:
        return 1
    if args.strict and any(t["result"] in ("FAIL", "ERROR") for t in targets):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
