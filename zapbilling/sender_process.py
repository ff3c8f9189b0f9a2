"""The webhook sender's own process: `zapbilling serve` delivers webhooks from one process of
its own, never from a process that answers requests.

Why: a delivery costs about what a request does (an aiohttp POST to a loopback receiver alone is
~460k instructions, the claim and the attempt's record as much again; events/sender.py), so a
sender inside the serving process took CPU from the very requests whose events it delivered
(recordUsage with every event delivered: 1.91M instructions per request against 650k without an
endpoint, 0.34x). In a process of its own it runs on another CPU where there is one, and the
serving loop only writes each event in the change's transaction. One sender per `serve`, however
many workers answer requests (with several servers on PostgreSQL, one per server: their claims
lease each attempt to exactly one of them).

The sender process is a plain `python -c` process like a worker (server.py): its settings come
as JSON in argv, and it holds the read end of a pipe whose write end only its parent holds, so
when the parent is gone, even by SIGKILL, it sees end-of-file and stops: attempts under way are
cut off unrecorded and their leases run out, to be made again by the next sender (delivery is at
least once). It stops the same way on SIGTERM. A single-process `serve` starts it once the
server is ready (the database migrated) and starts another if it exits on its own; under
`--workers N` the supervisor starts it beside the workers and treats it as one of them.

Tests that build the app in-process (tests/conftest.py) keep the sender in the app
(`Config.deliver`), on the test's injected clock.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
from typing import Any

from .config import Config
from .limits import Limits

log = logging.getLogger("zapbilling")

RESTART_SECONDS = 1.0
"""How long a single-process server waits before it starts another sender after one exited on
its own (a crash loop costs a process start a second, not a busy loop)."""
STOP_SECONDS = 10.0
"""How long a server waits for its sender to stop after SIGTERM (its own bound is 5 s:
events/sender.py STOP_SECONDS) before it kills it."""


def spec(config: Config, lifeline: int, **more: Any) -> str:
    """A child's settings as one argv word: the config's fields (not the clock) and the lifeline."""
    settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in ("clock", "limits")}
    settings["limits"] = dataclasses.asdict(config.limits)
    return json.dumps({"config": settings, "lifeline": lifeline, **more})


def read_spec() -> tuple[Config, dict[str, Any]]:
    """What `spec` wrote, from argv[1]: the config and the rest."""
    given = json.loads(sys.argv[1])
    settings = given.pop("config")
    return Config(**settings | {"limits": Limits(**settings["limits"])}), given


def argv(config: Config, lifeline: int) -> list[str]:
    return [sys.executable, "-c", "from zapbilling.sender_process import main; main()", spec(config, lifeline)]


def spawn(config: Config, lifeline: int) -> subprocess.Popen[bytes]:
    """The sender process of a supervisor (server.py), which reaps it with its workers."""
    return subprocess.Popen(argv(config, lifeline), pass_fds=(lifeline,), stdin=subprocess.DEVNULL)


def main() -> None:
    """The sender process: `python -c "from zapbilling.sender_process import main; main()" SPEC`."""
    from . import logs
    from .server import event_loop

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # its parent decides; it sends SIGTERM
    config, rest = read_spec()
    logs.configure(config.log_format, config.log_level)
    loop = event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_deliver(config, rest["lifeline"]))
    finally:
        loop.close()


async def _deliver(config: Config, lifeline: int) -> None:
    # Not the app, nor the domain's herald: the sender's writes (dispatch, lease, record and
    # an endpoint's disabling) name their events themselves. What it imports is its memory:
    # 47 MB of RSS where importing the app made it 65.
    from .events.sender import Sender
    from .store import make_store

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(lifeline, stop.set)  # end-of-file: the parent is gone
    # Durability normal whatever the server's: the sender writes no money, only leases, attempt
    # records and dispatched deliveries, and losing the last of those to a power cut means an
    # attempt made again, which at-least-once delivery allows (receivers dedupe by webhook-id).
    # With `full`, every lease and record was an fsync under SQLite's one write lock, which the
    # serving process's writer then waited for: recordUsage with every event delivered,
    # 3,278-3,389 req/s with `full` here, 3,666-3,975 with `normal` (5,206-5,432 without an
    # endpoint; two runs each, server pinned to one CPU, the sender beside the load generator).
    store = make_store(config.db, "normal")
    await store.open()
    sender = Sender.configured(store, config)
    sender.start()
    try:
        await stop.wait()
    finally:
        loop.remove_reader(lifeline)
        await sender.stop()
        await store.close()


class Child:
    """A single-process server's sender process: started once the server is ready, started
    again (after RESTART_SECONDS) if it exits on its own, stopped with the server."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._keep(), name="zapbilling-sender-process")

    async def _keep(self) -> None:
        from .metrics import directory as metrics_directory

        while True:
            lifeline, keep = os.pipe()
            try:
                self.proc = await asyncio.create_subprocess_exec(*argv(self.config, lifeline), pass_fds=(lifeline,),
                                                                 stdin=subprocess.DEVNULL)
            finally:
                os.close(lifeline)
            try:
                code = await self.proc.wait()
            finally:
                os.close(keep)
            metrics_directory.worker_gone(self.proc.pid)
            log.error("the webhook sender process (pid %d) exited with %s; starting another in %g s",
                      self.proc.pid, code, RESTART_SECONDS)
            self.proc = None
            await asyncio.sleep(RESTART_SECONDS)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_SECONDS: its attempts under way end unrecorded and
        are made again once their leases run out."""
        proc = self.proc
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)  # its pipe is closed: the sender sees end-of-file too
            self._task = None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_SECONDS)
        except asyncio.TimeoutError:
            log.warning("the webhook sender process (pid %d) did not stop within %g s; killed", proc.pid, STOP_SECONDS)
            proc.kill()
            await proc.wait()
