"""Smoke test of the benchmark (issue 8): `python -m bench --quick` runs every scenario end to
end against real servers. No thresholds: figures on a shared machine are not pass/fail. The
test command (README, `.ci/run`) installs wrk and the `bench` extra, so CI runs it; it skips
itself where either is missing (a bare `pytest` in an environment without them)."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MISSING = [m for m in ("fastapi", "uvicorn", "httptools", "jsonrpcserver", "psutil") if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.sqlite_only("runs the bench, which starts its own servers and databases, PostgreSQL too"),
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install -y wrk)"),
    pytest.mark.skipif(bool(MISSING), reason=f"the bench extra is not installed: {', '.join(MISSING)}"),
]


def test_bench_quick_runs_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    r = subprocess.run([sys.executable, "-m", "bench", "--quick", "--json", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    data = json.loads(out.read_text())
    assert data["runs"]
    for key, run in data["runs"].items():
        assert not run["problems"], (key, run["problems"])
        m = run["median"]
        assert m["rate"] > 0 and 0 < m["p50_ms"] <= m["p99_ms"] and m["rss_mb"] > 0, (key, m)
    assert all(t["result"] in ("PASS", "FAIL", "info", "SKIP") for t in data["targets"])
    assert {t["scenario"] for t in data["targets"]} == {1, 2, 3, 4, 5, 6, 7}
    # scenario 7 measured org B alone and ran every kind of org A's abuse beside it (how B fared
    # meanwhile is the scenario's target, not the smoke test's)
    noisy = data["runs"]["s7.noisy"]["rounds"][0]
    assert data["runs"]["s7.quiet"]["rounds"][0]["b"]["ok"] > 0
    assert {"flood", "slow_bodies", "deposits_largest_legal", "deposits_oversize", "reads_invoicePreview",
            "reads_uniqueCountSummary", "reads_listMeters", "reads_listTransactions"} <= set(noisy["abuse"]["tallies"])
    assert all(t["sent"] > 0 for t in noisy["abuse"]["tallies"].values()), noisy["abuse"]


def test_bench_quick_on_postgres(tmp_path: Path) -> None:
    """`--backend postgres` end to end on a tiny scale: the bench starts its own cluster, runs the
    write scenarios on PostgreSQL beside SQLite and 1-3 servers on one database, and reports the
    cluster's CPU and the retried transactions of every PostgreSQL run."""
    out = tmp_path / "results.json"
    r = subprocess.run([sys.executable, "-m", "bench", "--backend", "postgres", "--quick", "--seconds", "1", "--no-calibrate",
                        "--only", "2,3,8", "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    data = json.loads(out.read_text())
    assert {"s2.full", "s2.pg_full", "s2.bare_pg_insert", "s3.pg_events", "s8.read1", "s8.read3", "s8.write3"} <= set(data["runs"])
    for key, run in data["runs"].items():
        assert not run["problems"], (key, run["problems"])
        m = run["median"]
        assert m["rate"] > 0 and m["cpu_us_per_unit"] > 0, (key, m)
        if ".bare_pg" in key:  # a baseline on PostgreSQL: its cluster's CPU, no retries to count
            assert m["pg_cpu_us_per_unit"] > 0 and "retries" not in m, (key, m)
        elif ".pg_" in key or key.startswith("s8."):
            assert m["pg_cpu_us_per_unit"] > 0 and m["retries"] >= 0, (key, m)
        else:
            assert "pg_cpu_us_per_unit" not in m, (key, m)
    assert data["runs"]["s8.write3"]["rounds"][0]["servers"] == 3
    labels = {t["label"] for t in data["targets"]}
    assert "recordUsage full: PostgreSQL vs SQLite" in labels
    assert "recordUsage --durability full: server CPU/request, 3 servers vs 1" in labels
    assert all(t["result"] in ("PASS", "FAIL", "info") for t in data["targets"]), data["targets"]
