"""Running the HTTP server: one process, or several worker processes sharing one port.

Workers share nothing but the SQLite file. That is enough for correctness because every write
batch is one `BEGIN IMMEDIATE` transaction: SQLite's write lock serialises batches across
processes exactly as the writer thread serialises jobs within one, so checks and writes made
in one job (funds for a hold, refund caps, dedupe) stay atomic. Each worker binds its own
listening socket with SO_REUSEPORT and the kernel spreads connections between them.

Webhooks are delivered by one process of their own beside the serving ones, never by a process
that answers requests (sender_process.py): a single-process server starts it once ready, a
supervisor starts it with its workers.

The supervisor stays small (no aiohttp, no models: it only prepares the file and watches):
workers are plain `python -c` processes, not multiprocessing ones, which would add a resource
tracker process. Each worker holds the read end of a pipe whose write end only the
supervisor holds; if the supervisor dies, even by SIGKILL, the pipe reports end-of-file and
the worker stops gracefully instead of serving on unsupervised.
"""
from __future__ import annotations

import asyncio
import atexit
import dataclasses
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
from typing import Any

from . import logs, sender_process
from .config import Config, server_options
from .early_stop import EarlyStop
from .metrics import directory as metrics_directory
from .transport.console import share_with_workers

log = logging.getLogger("zapbilling")


def serve(config: Config) -> int:
    """Serve until SIGTERM or SIGINT. Raises OSError or sqlite3.Error when it cannot start.

    The port is bound before the database is opened, so a port already taken creates no
    database file. A stop signal during start-up is kept (early_stop.py) and honoured once
    start-up is done: nothing served, one line, exit status 0."""
    early = EarlyStop.install()
    atexit.register(metrics_directory.prepare())  # before any app or worker imports prometheus_client
    config = dataclasses.replace(config, deliver=False)  # webhooks go out from a process of their own (sender_process.py)
    if config.workers <= 1:
        with _listener(config, shared=False) as sock:
            sock.listen(BACKLOG)
            _run(config, sock, "", early=early, sender=sender_process.Child(config))
        return 0
    logs.configure(config.log_format, config.log_level)
    if config.port:
        # A probe that shares with no one: the reserved socket below shares the port
        # (SO_REUSEPORT), so it would not notice another zapbilling's workers holding it.
        _listener(config, shared=False).close()
    with _listener(config) as reserved:  # bound, not listening: learns the port when 0 was asked and holds it
        config = dataclasses.replace(config, port=reserved.getsockname()[1])
        if early.signal is None:
            _prepare_database(config)
        share_with_workers()  # one console session secret for every worker (transport/console)
        return _supervise(config, early)


BACKLOG = 1024
"""Connections the kernel queues before they are accepted (aiohttp's own default is 128)."""


def _run(config: Config, sock: socket.socket, label: str, lifeline: int | None = None, *, early: EarlyStop,
         sender: sender_process.Child | None = None) -> None:
    """Serve on `sock` until stopped; `sender`: the webhook sender process a single-process
    server starts once it is ready and stops after its own stop (a worker has none: its
    supervisor starts one for all)."""
    from . import access_log, graceful
    from .app import ADMISSION, create_app
    from .store import describe

    access_log.configure(config.log_format, config.log_level)
    loop = event_loop()
    asyncio.set_event_loop(loop)
    app = create_app(config)
    _share_the_interpreter()
    port = sock.getsockname()[1]  # the one the kernel chose, when 0 was asked

    def started() -> None:
        log.info("serving %s on http://%s:%d (durability %s)%s", describe(config.db), config.host, port, config.durability, label)
        if sender is not None:
            sender.start()

    if lifeline is not None:
        def supervisor_gone() -> None:
            loop.remove_reader(lifeline)
            log.error("the supervisor is gone; stopping%s", label)
            os.kill(os.getpid(), signal.SIGTERM)

        loop.add_reader(lifeline, supervisor_gone)
    # SIGINT and SIGTERM make a graceful stop (graceful.py): no new connections, the requests
    # under way answered (up to --shutdown-timeout), the writer drained, so no acknowledged
    # write is lost, the database closed, one line logged.
    try:
        loop.run_until_complete(graceful.serve(
            app, sock, early, shutdown_timeout=config.limits.shutdown_timeout, started=started,
            cut_off=lambda: app[ADMISSION].cut_off, label=label, access_log_class=access_log.AccessLog,
            **server_options(config)))
    finally:
        if sender is not None:
            loop.run_until_complete(sender.stop())
        access_log.flush()
        _close_loop(loop)


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """What aiohttp's run_app does on the way out: cancel what is left, close the loop."""
    left = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in left:
        t.cancel()
    loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


SWITCH_INTERVAL = 0.0005
"""Seconds a thread may hold the GIL while another waits for it (Python's default: 0.005). The
event loop answers every request; the reader threads turn rows into Python objects between
their queries, holding the GIL. With 5 ms, each time the loop wanted the GIL back from a reader
it could wait up to 5 ms, and a tenant running many long reads added that to every other
tenant's answer. Measured in benchmark scenario 7 (--quick, one run each, with the gc.freeze
below): the quiet tenant's p99 while the other abused 54 -> 37 ms. getBalance alone does not
move: no other thread wants the GIL then."""


YOUNG_OBJECTS = 50_000
"""The collector's first threshold: how many more container objects (dicts, lists, models...)
may be alive than at its last pass before it walks them (Python's default: 700). It counts
objects made less objects freed, and objects freed by their reference count never reach it, so
a larger bound holds back only garbage in cycles, of which requests make little. At 700, the
requests in flight were most of what it walked: 64 connections each holding a decoded batch of
100 meter events, its models and rows while the writer works, made a pass every few requests
over objects that were still in use, which then moved to the older generations and were walked
again there. Callgrind (bench.instructions): recordMeterEvents 6.80M -> 6.37M instructions per
batch (the collector's share, ~430k, all but gone), recordUsage 614k -> 588k, getBalance 343k
-> 342k. 20,000 kept half the gain; 100,000 measured as 50,000."""


def _share_the_interpreter() -> None:
    """Process-wide settings of a serving process, once the app is built: a short GIL switch
    interval (SWITCH_INTERVAL), every object made so far (modules, the schema's models, the
    registry) moved out of the garbage collector's sight with gc.freeze(), so that a full
    collection walks only what requests made (measured: a full collection paused the loop for
    64 ms in a test process), and a first threshold high enough to leave the requests in
    flight alone (YOUNG_OBJECTS)."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_OBJECTS)


def event_loop() -> asyncio.AbstractEventLoop:
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


def _listener(config: Config, shared: bool = True) -> socket.socket:
    """A TCP socket bound to the configured address (OSError when the port is taken).
    `shared`: with SO_REUSEPORT, as the workers of one supervisor bind it."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((config.host, config.port))
    except BaseException:
        sock.close()
        raise
    return sock


def worker_main() -> None:
    """A worker process: `python -c "from zapbilling.server import worker_main; worker_main()" SPEC`."""
    early = EarlyStop.install((signal.SIGTERM,))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides; it sends SIGTERM
    config, spec = sender_process.read_spec()
    sock = _listener(config)
    sock.listen(BACKLOG)
    label = f" (worker {spec['number']} of {config.workers}, pid {os.getpid()})"
    _run(config, sock, label, lifeline=spec["lifeline"], early=early)


def _spawn(config: Config, number: int, lifeline: int) -> subprocess.Popen[bytes]:
    spec = sender_process.spec(config, lifeline, number=number)
    argv = [sys.executable, "-c", "from zapbilling.server import worker_main; worker_main()", spec]
    return subprocess.Popen(argv, pass_fds=(lifeline,), stdin=subprocess.DEVNULL)


def _supervise(config: Config, early: EarlyStop) -> int:
    """Start the workers; on SIGTERM or SIGINT stop them all gracefully. If one dies on its
    own, stop the rest and fail, rather than serve on with less capacity unnoticed. Each
    worker logs its own stop line; this logs one more when all are gone."""
    lifeline, keep = os.pipe()  # `keep` stays open here only: its end is the workers' signal
    workers: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(signum: int, _: Any) -> None:
        nonlocal stopping
        stopping = True
        for w in workers.values():
            if w.returncode is None:
                # os.kill, not Popen.send_signal: that polls first and so may reap a worker
                # that has just exited, which os.wait below then never sees ("No child
                # processes" once all were reaped that way). Only os.wait reaps here, so a
                # worker without a return code is alive or a zombie, and the pid still its.
                os.kill(w.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if early.signal:  # arrived while the database was being prepared
        stopping = True
    try:
        for n in range(config.workers):
            if not stopping:
                w = _spawn(config, n + 1, lifeline)
                workers[w.pid] = w
        if not stopping:  # the webhook sender, one for all the workers (sender_process.py): watched as one of them
            w = sender_process.spawn(config, lifeline)
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
        metrics_directory.worker_gone(pid)
        w.returncode = code = os.waitstatus_to_exitcode(wait_status)
        # a worker stopped by our SIGTERM before its app installed the graceful handler dies of
        # the signal: it had served nothing yet, so that is a clean stop too
        clean = code == 0 or (stopping and code == -signal.SIGTERM)
        if not clean:
            status = status or (code if code > 0 else 1)
        if not stopping:
            log.error("%s pid %d exited with %s; stopping the other workers", "worker" if "worker_main" in str(w.args) else "the webhook sender",
                      pid, code)
            status = status or 1
            stop(signal.SIGTERM, None)
    os.close(keep)
    if not workers:
        early.log_stopped()
    elif status == 0:
        log.info("stopped: all %d workers stopped", config.workers)
    else:
        log.error("stopped: a worker failed; exit status %d", status)
    return status
