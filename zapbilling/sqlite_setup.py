"""SQLite's process-wide settings, made before the sqlite3 module loads (zapbilling/__init__.py
calls `tune` first thing in every process: `serve`, its workers and sender, the CLI, tests).

One setting: SQLite's memory statistics off (`sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0)`).
With them on (the library's default), every allocation and free SQLite makes takes and drops a
global mutex to keep the counts, ~80 of each per recordUsage; SQLite's own documentation
recommends the statistics off wherever nothing reads them ("helps the sqlite3_malloc() routines
run much faster"). Nothing here reads them: they feed only sqlite3_memory_used, the heap limits
and sqlite3_status, which the sqlite3 module does not expose. Measured by callgrind
(`python -m bench.instructions`, 4,096 requests): recordUsage 551.8k -> 532.7k instructions per
request (-3.5%), recordMeterEvents 51.1k -> 50.6k per event, getBalance 318.2k -> 316.8k.

The sqlite3 module has no call for it, so it goes through ctypes to the shared library the
module links against. It must come before SQLite initialises, which importing the sqlite3
module does: `sqlite3_config` answers SQLITE_MISUSE after that and changes nothing. So a
process that imported sqlite3 before zapbilling, or whose Python carries its own SQLite rather
than the system's libsqlite3, runs with the statistics on, exactly as before: slower, never
different in what it stores or answers.
"""
from __future__ import annotations

import ctypes

LIBRARY = "libsqlite3.so.0"
"""The system SQLite's name on Linux, where the sqlite3 module links against it."""
SQLITE_CONFIG_MEMSTATUS = 9
SQLITE_OK = 0


def tune() -> bool:
    """Memory statistics off; whether that took (False: SQLite was already initialised, or
    the library is not there to be told)."""
    try:
        library = ctypes.CDLL(LIBRARY)
    except OSError:
        return False
    return bool(library.sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0) == SQLITE_OK)
