"""Running the HTTP server: one process, or several worker processes sharing one port.

Workers share nothing but the SQLite file. That is enough for correctness because every write
batch is one `BEGIN IMMEDIATE` transaction: SQLite's write lock serialises batches across
processes exactly as the writer thread serialises jobs within one, so checks and writes made
in one job (funds for a hold, refund caps, dedupe) stay atomic. Each worker binds its own
listening socket with SO_REUSEPORT and the kernel spreads connections between them.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from multiprocessing.connection import wait
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from .config import Config, server_options

log = logging.getLogger("zapbilling")


ACCESS_FLUSH_SECONDS = 0.1


class _AccessLines:
    """Access-log lines waiting to be written: one write per tenth of a second instead of one
    per request (a write to stderr costs a system call, more than the rest of the line). Other
    log records flush these first, so the log stays in order; `serve` flushes them on the way
    out. A process killed outright loses at most the last tenth of a second of access lines,
    never anything else (they record requests, they are not the ledger)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.scheduled = False

    def add(self, line: str) -> None:
        self.lines.append(line)
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_later(ACCESS_FLUSH_SECONDS, self._timer)

    def _timer(self) -> None:
        self.scheduled = False
        self.flush()

    def flush(self) -> None:
        lines, self.lines = self.lines, []  # safe against an append from the loop thread meanwhile
        if lines:
            sys.stderr.write("".join(lines))
            sys.stderr.flush()


_ACCESS = _AccessLines()


class AccessLog(AbstractAccessLogger):
    """One line per request on stderr, in the same shape as the other log lines. aiohttp's own
    access logger builds a logging record, formats its time and takes the handler's lock for
    every request, and writes each line on its own: together most of a small request's CPU.
    This preformats the line and buffers it. The path is the request target as sent (still
    percent-encoded), so a line can never be split by an encoded newline."""

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        self._second = -1
        self._stamp = ""

    def log(self, request: BaseRequest, response: StreamResponse, elapsed: float) -> None:
        second = int(time.time())
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        v = request.version
        _ACCESS.add(
            f'{self._stamp} INFO aiohttp.access: {request.remote} "{request.method} {request.raw_path} HTTP/{v.major}.{v.minor}"'
            f" {response.status} {response.body_length} {elapsed:.6f}s\n"
        )


class _LogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    def emit(self, record: logging.LogRecord) -> None:
        _ACCESS.flush()
        super().emit(record)


def serve(config: Config) -> int:
    """Serve until SIGTERM or SIGINT. Raises OSError or sqlite3.Error when it cannot start."""
    _logging()
    if config.workers <= 1:
        _run(config, None, "")
        return 0
    _prepare_database(config)
    with _listener(config) as reserved:  # bound, not listening: learns the port when 0 was asked and holds it
        config = dataclasses.replace(config, port=reserved.getsockname()[1])
        return _supervise(config)


def _run(config: Config, sock: socket.socket | None, label: str) -> None:
    from aiohttp import web

    from .app import create_app

    loop = _event_loop()
    asyncio.set_event_loop(loop)
    app = create_app(config)
    where: dict[str, Any] = {"sock": sock} if sock else {"host": config.host, "port": config.port}

    def started(_: str) -> None:
        log.info("serving %s on http://%s:%d (durability %s)%s", config.db, config.host, config.port, config.durability, label)

    # run_app turns SIGINT and SIGTERM into a graceful stop: it stops accepting, lets running
    # requests finish, then the app's cleanup drains the writer, so no acknowledged write is lost.
    try:
        web.run_app(app, access_log_class=AccessLog, print=started, shutdown_timeout=10, loop=loop,
                    **where, **server_options(config))
    finally:
        _ACCESS.flush()


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=[_LogHandler()])


def _event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _prepare_database(config: Config) -> None:
    """Create and migrate the file once, before the workers race to open it."""
    from .store import SqliteStore

    async def touch() -> None:
        store = SqliteStore(config.db, config.durability)
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


def _worker(config: Config, number: int) -> None:
    _logging()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides; it sends SIGTERM
    sock = _listener(config)
    sock.listen(1024)
    _run(config, sock, f" (worker {number} of {config.workers}, pid {os.getpid()})")


def _supervise(config: Config) -> int:
    """Start the workers; on SIGTERM or SIGINT stop them all gracefully. If one dies on its
    own, stop the rest and fail, rather than serve on with less capacity unnoticed."""
    spawn = multiprocessing.get_context("spawn")
    workers = [spawn.Process(target=_worker, args=(config, n + 1), name=f"zapbilling-worker-{n + 1}") for n in range(config.workers)]
    stopping = False

    def stop(signum: int, _: Any) -> None:
        nonlocal stopping
        stopping = True
        for w in workers:
            if w.is_alive() and w.pid:
                os.kill(w.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for w in workers:
        w.start()
    status = 0
    running = list(workers)
    while running:
        for sentinel in wait([w.sentinel for w in running]):
            w = next(w for w in running if w.sentinel == sentinel)
            w.join()
            running.remove(w)
            # a worker stopped by our SIGTERM before its app installed the graceful handler dies of
            # the signal: it had served nothing yet, so that is a clean stop too
            clean = w.exitcode == 0 or (stopping and w.exitcode == -signal.SIGTERM)
            if not clean:
                status = status or (w.exitcode if w.exitcode and w.exitcode > 0 else 1)
            if not stopping:
                log.error("%s exited with %s; stopping the other workers", w.name, w.exitcode)
                status = status or 1
                stop(signal.SIGTERM, None)
    return status
