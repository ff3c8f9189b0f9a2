"""The directory where prometheus_client keeps every process's values (its multiprocess mode),
so that a scrape answered by any worker sums them all.

prometheus_client reads PROMETHEUS_MULTIPROC_DIR once, when it is first imported, so `serve`
calls `prepare()` before it starts a worker or builds an app (the supervisor imports no
prometheus_client at all; the workers inherit the variable). The directory must start empty:
values left by an earlier run would be added to this one's. So:

- PROMETHEUS_MULTIPROC_DIR set by the operator: that directory is used, created if missing, and
  emptied of the files prometheus_client writes (`*.db`) at start; it is left in place at exit.
  One per server: two servers sharing one would add up each other's numbers.
- unset: a private directory under the system's temporary directory
  (`zapbilling-metrics-<pid>-XXXXXXXX`), removed at exit. A server killed outright (SIGKILL)
  cannot remove its own: the next server started removes every such directory whose process
  is gone (found by the pid in its name).

A worker that has exited is marked dead (`worker_gone`): its gauges (requests in flight, queue
depth, pool) leave the sums, its counters and histograms stay, as counters must.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "zapbilling-metrics-"


def prepare() -> Callable[[], None]:
    """Make this process's (and its children's) metrics directory ready and empty; returns what
    to call once the server has stopped."""
    given = os.environ.get(ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
        return lambda: None
    _remove_orphans()
    made = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")
    os.environ[ENV] = made

    def remove() -> None:
        shutil.rmtree(made, ignore_errors=True)
        if os.environ.get(ENV) == made:
            del os.environ[ENV]

    return remove


def _remove_orphans() -> None:
    """The private directories of servers that are gone (killed before they could remove them)."""
    for path in Path(tempfile.gettempdir()).glob(f"{PREFIX}*-*"):
        pid = path.name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def worker_gone(pid: int) -> None:
    """A worker process has exited: its live gauges leave the sums."""
    if os.environ.get(ENV):
        from prometheus_client import multiprocess  # only now: the supervisor needs it only here

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
