"""A short run of the soak (bench/soak.py) in CI: 50 clients of mixed traffic for 2 s of warm-up
plus 8 s against the real `zapbilling serve` process, on a fresh SQLite file.

The real soak is `python bench/soak.py` (200 clients, 10 s warm-up + 60 s): run it by hand or
nightly; it fails on any unexpected error or on RSS growth of 10% or more after warm-up.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.sqlite_only("the soak runs its own SQLite server")

SOAK = Path(__file__).resolve().parent.parent / "bench" / "soak.py"
CI_MAX_GROWTH = 25.0  # percent; see the test's docstring


def load_soak():
    """bench/soak.py as a module (bench/ is not a package)."""
    name = "zapbilling_bench_soak"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SOAK)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its dataclasses look their module up while being defined
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_short_soak_has_no_unexpected_errors_and_keeps_invariants(tmp_path):
    """Zero unexpected errors (5xx, -32000, connection errors, a wrong error kind or a wrong
    result), every contract error exercised and answered as the contract says, a clean exit on
    SIGTERM, check_invariants on the file afterwards.

    The RSS bound is looser here (growth < 25% after warm-up, not the real run's 10%): after a
    2-second warm-up the process has not reached its steady state (SQLite's page cache, aiohttp's
    and the allocator's pools are still filling), so part of what a short run sees as growth is
    warm-up. The 10% bound is the real 200-client, 60-second run's (`python bench/soak.py`)."""
    soak = load_soak()
    out = tmp_path / "soak.json"
    lines: list[str] = []
    args = soak.parse_args(["--clients", "50", "--seconds", "8", "--warmup", "2", "--max-growth", str(CI_MAX_GROWTH),
                            "--json", str(out)])
    figures = soak.run(args, say=lines.append)
    soak.report(figures, say=lines.append)
    print("\n" + "\n".join(lines))
    out.write_text(json.dumps(figures, indent=2))

    assert figures["unexpected_errors"] == 0, figures["unexpected_samples"]
    assert figures["invariants_ok"], figures["invariant_violations"]
    assert figures["server_exit"] == 0, f"exit status after SIGTERM: {figures['server_exit']}"
    assert figures["server_tracebacks"] == 0, f"tracebacks in the server log {figures['server_log']}"
    assert figures["rss_growth_pct"] < CI_MAX_GROWTH, figures["rss_samples"]
    # the run did what it says: traffic of every kind, every expected error seen and right
    assert figures["requests"] > 1000, figures["requests"]
    client_ops = set(soak.op_names())
    exercised = set(figures["ok_by_op"]) | set(figures["expected_errors_by_op"])
    assert exercised == client_ops, f"never exercised: {sorted(client_ops - exercised)}"
    assert all(name.startswith("err.") for name in figures["expected_errors_by_op"])
    assert figures["failures"] == []


def test_soak_verdict_fails_on_each_reason():
    """The soak's pass/fail rule itself: each reason alone fails the run."""
    soak = load_soak()
    good = {"unexpected_errors": 0, "rss_growth_pct": 3.0, "server_exit": 0, "server_tracebacks": 0,
            "invariants_ok": True, "requests": 10}
    assert soak.verdict(good) == []
    for change in ({"unexpected_errors": 1}, {"rss_growth_pct": 10.0}, {"server_exit": None}, {"server_exit": 1},
                   {"server_tracebacks": 2}, {"invariants_ok": False}, {"requests": 0}):
        assert soak.verdict(good | change), change
    assert soak.verdict(good | {"rss_growth_pct": 20.0}, max_growth=25.0) == []


@pytest.mark.parametrize("argv,expected", [([], (200, 60.0, 10.0)), (["--clients", "7", "--seconds", "3", "--warmup", "1"], (7, 3.0, 1.0))])
def test_soak_defaults_are_the_real_run(argv, expected):
    args = load_soak().parse_args(argv)
    assert (args.clients, args.seconds, args.warmup) == expected
