"""SQLite's process-wide settings, made as zapbilling is imported (zapbilling/__init__.py calls
`tune` first thing in every process: `serve`, its workers and sender, the CLI, tests).

One setting: SQLite's memory statistics off (`sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0)`).
With them on (the library's default), every allocation and free SQLite makes takes and drops a
global mutex to keep the counts, ~80 of each per recordUsage; SQLite's own documentation
recommends the statistics off wherever nothing reads them ("helps the sqlite3_malloc() routines
run much faster"). Nothing here reads them: they feed only sqlite3_memory_used, the heap limits
and sqlite3_status, which the sqlite3 module does not expose. Measured by callgrind
(`python -m bench.instructions`, 4,096 requests): recordUsage 551.8k -> 532.7k instructions per
request (-3.5%), recordMeterEvents 51.1k -> 50.6k per event, getBalance 318.2k -> 316.8k.

The sqlite3 module has no call for it, so it goes through ctypes, to the very library the
module's extension (`_sqlite3`) is linked with: its symbols looked up through the extension's
own handle, never a second copy of SQLite loaded by name (which would also make the extension
bind to that copy instead of the one it was built against). SQLite takes configuration only
before it initialises, and importing `_sqlite3` initialises it; so `tune` imports it, shuts
SQLite down again (documented as safe while no connection is open: none can be, the extension
being new to the process), configures it and initialises it once more. A process that loaded
the extension before zapbilling may hold connections already: it is left as it is, statistics
on, slower and otherwise the same. So is a Python whose SQLite cannot be reached this way (an
extension built into the interpreter, or not exporting SQLite's symbols).
"""
from __future__ import annotations

import ctypes
import sys

SQLITE_CONFIG_MEMSTATUS = 9
SQLITE_OK = 0


def tune() -> bool:
    """Memory statistics off; whether that took."""
    if "_sqlite3" in sys.modules:  # loaded before zapbilling: it may have connections open
        return False
    try:
        import _sqlite3  # initialises SQLite
    except ImportError:  # a Python built without it: nothing to tune
        return False
    try:
        library = ctypes.CDLL(_sqlite3.__file__)
        shutdown, config, initialize = library.sqlite3_shutdown, library.sqlite3_config, library.sqlite3_initialize
    except (AttributeError, OSError):
        return False
    if shutdown() != SQLITE_OK:
        return False
    took = config(SQLITE_CONFIG_MEMSTATUS, 0) == SQLITE_OK
    initialize()  # its failure would also fail the first connection's open, which initialises again
    return bool(took)
