"""Running the HTTP server: one process, or several worker processes sharing one port.

Workers share nothing but the SQLite file. That is enough for correctness because every write
batch is one `BEGIN IMMEDIATE` transaction: SQLite's write lock serialises batches across
processes exactly as the writer thread serialises jobs within one, so checks and writes made
in one job (funds for a hold, refund caps, dedupe) stay atomic. Each worker binds its own
listening socket with SO_REUSEPORT and the kernel spreads connections between them.

The supervisor stays small (no aiohttp, no models: it only prepares the file and watches):
workers are plain `python -c` processes, not multiprocessing ones, which would add a resource
tracker process. Each worker holds the read end of a pipe whose write end only the
supervisor holds; if the supervisor dies, even by SIGKILL, the pipe reports end-of-file and
the worker stops gracefully instead of serving on unsupervised.
"""
from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from typing import Any

from . import logs
from .config import Config, server_options
from .limits import Limits

log = logging.getLogger("zapbilling")


def serve(config: Config) -> int:
    """Serve until SIGTERM or SIGINT. Raises OSError or sqlite3.Error when it cannot start."""
    if config.workers <= 1:
        _run(config, None, "")
        return 0
    logs.configure(config.log_format, config.log_level)
    _prepare_database(config)
    with _listener(config) as reserved:  # bound, not listening: learns the port when 0 was asked and holds it
        config = dataclasses.replace(config, port=reserved.getsockname()[1])
        return _supervise(config)


def _run(config: Config, sock: socket.socket | None, label: str, lifeline: int | None = None) -> None:
    from aiohttp import web

    from . import access_log
    from .app import create_app
    from .store import describe

    access_log.configure(config.log_format, config.log_level)
    loop = _event_loop()
    asyncio.set_event_loop(loop)
    app = create_app(config)
    _share_the_interpreter()
    where: dict[str, Any] = {"sock": sock} if sock else {"host": config.host, "port": config.port}

    def started(_: str) -> None:
        log.info("serving %s on http://%s:%d (durability %s)%s", describe(config.db), config.host, config.port, config.durability, label)

    if lifeline is not None:
        def supervisor_gone() -> None:
            loop.remove_reader(lifeline)
            log.error("the supervisor is gone; stopping%s", label)
            os.kill(os.getpid(), signal.SIGTERM)

        loop.add_reader(lifeline, supervisor_gone)
    # run_app turns SIGINT and SIGTERM into a graceful stop: it stops accepting, lets running
    # requests finish, then the app's cleanup drains the writer, so no acknowledged write is lost.
    try:
        web.run_app(app, access_log_class=access_log.AccessLog, print=started, shutdown_timeout=10, loop=loop,
                    **where, **server_options(config))
    finally:
        access_log.flush()


SWITCH_INTERVAL = 0.0005
"""Seconds a thread may hold the GIL while another waits for it (Python's default: 0.005). The
event loop answers every request; the reader threads turn rows into Python objects between
their queries, holding the GIL. With 5 ms, each time the loop wanted the GIL back from a reader
it could wait up to 5 ms, and a tenant running many long reads added that to every other
tenant's answer. Measured in benchmark scenario 7 (--quick, one run each, with the gc.freeze
below): the quiet tenant's p99 while the other abused 54 -> 37 ms. getBalance alone does not
move: no other thread wants the GIL then."""


def _share_the_interpreter() -> None:
    """Process-wide settings of a serving process, once the app is built: a short GIL switch
    interval (SWITCH_INTERVAL), and every object made so far (modules, the schema's models, the
    registry) moved out of the garbage collector's sight with gc.freeze(), so that a full
    collection walks only what requests made (measured: a full collection paused the loop for
    64 ms in a test process)."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    gc.collect()
    gc.freeze()


def _event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _prepare_database(config: Config) -> None:
    """Create and migrate the file once, before the workers race to open it."""
    from .store import make_store

    async def touch() -> None:
        store = make_store(config.db, config.durability)
        await store.open()
        await store.close()

    asyncio.run(touch())


def _listener(config: Config) -> socket.socket:
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((config.host, config.port))
    return sock


def worker_main() -> None:
    """A worker process: `python -c "from zapbilling.server import worker_main; worker_main()" SPEC`."""
    spec = json.loads(sys.argv[1])
    settings = spec["config"]
    config = Config(**settings | {"limits": Limits(**settings["limits"])})
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides; it sends SIGTERM
    sock = _listener(config)
    sock.listen(1024)
    label = f" (worker {spec['number']} of {config.workers}, pid {os.getpid()})"
    _run(config, sock, label, lifeline=spec["lifeline"])


def _spawn(config: Config, number: int, lifeline: int) -> subprocess.Popen[bytes]:
    settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in ("clock", "limits")}
    settings["limits"] = dataclasses.asdict(config.limits)
    spec = json.dumps({"config": settings, "number": number, "lifeline": lifeline})
    argv = [sys.executable, "-c", "from zapbilling.server import worker_main; worker_main()", spec]
    return subprocess.Popen(argv, pass_fds=(lifeline,), stdin=subprocess.DEVNULL)


def _supervise(config: Config) -> int:
    """Start the workers; on SIGTERM or SIGINT stop them all gracefully. If one dies on its
    own, stop the rest and fail, rather than serve on with less capacity unnoticed."""
    lifeline, keep = os.pipe()  # `keep` stays open here only: its end is the workers' signal
    workers: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(signum: int, _: Any) -> None:
        nonlocal stopping
        stopping = True
        for w in workers.values():
            if w.returncode is None:
                w.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for n in range(config.workers):
            if not stopping:
                w = _spawn(config, n + 1, lifeline)
                workers[w.pid] = w
    finally:
        os.close(lifeline)
    status = 0
    running = dict(workers)
    while running:
        pid, wait_status = os.wait()
        if pid not in running:
            continue
        w = running.pop(pid)
        w.returncode = code = os.waitstatus_to_exitcode(wait_status)
        # a worker stopped by our SIGTERM before its app installed the graceful handler dies of
        # the signal: it had served nothing yet, so that is a clean stop too
        clean = code == 0 or (stopping and code == -signal.SIGTERM)
        if not clean:
            status = status or (code if code > 0 else 1)
        if not stopping:
            log.error("worker pid %d exited with %s; stopping the other workers", pid, code)
            status = status or 1
            stop(signal.SIGTERM, None)
    os.close(keep)
    return status
