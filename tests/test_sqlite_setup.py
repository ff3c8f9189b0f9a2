"""SQLite's memory statistics are off in every process that imports zapbilling first (the
serving process, its workers, the CLI), and a process that loaded sqlite3 before it keeps them
on and works the same (zapbilling/sqlite_setup.py). Each case runs in a fresh interpreter: the
setting is made once per process, before SQLite initialises."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.sqlite_only("process-wide SQLite settings; no store")

WORK = """
import _sqlite3, ctypes, json, sqlite3
conn = sqlite3.connect(":memory:")
conn.execute("CREATE TABLE t (x TEXT)")
conn.executemany("INSERT INTO t VALUES (?)", [(str(i) * 20,) for i in range(2000)])
rows = conn.execute("SELECT count(*), sum(length(x)) FROM t").fetchone()
print(json.dumps({"tuned": TUNED, "memory_used": ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_used(), "rows": rows}))
"""


def run(first: str) -> dict:
    out = subprocess.run([sys.executable, "-c", first + WORK], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_importing_zapbilling_first_turns_the_statistics_off():
    seen = run("import zapbilling.cli\nTUNED = None\n")
    assert seen["memory_used"] == 0  # SQLite counted nothing: the mutex around each allocation is gone
    assert seen["rows"] == [2000, sum(len(str(i) * 20) for i in range(2000))]


def test_sqlite_loaded_before_zapbilling_keeps_them_on_and_works_the_same():
    seen = run("import sqlite3\nfrom zapbilling.sqlite_setup import tune\nTUNED = tune()\n")
    assert seen["tuned"] is False  # connections may be open: SQLite is not shut down under them
    assert seen["memory_used"] > 0
    assert seen["rows"] == [2000, sum(len(str(i) * 20) for i in range(2000))]
