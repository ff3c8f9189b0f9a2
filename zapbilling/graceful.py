"""One serving process's life: open the database, serve on a socket bound beforehand, and stop
gracefully on SIGTERM or SIGINT.

The stop, in order (aiohttp's AppRunner.cleanup does steps 1 to 4):

1. the listening socket is closed: a new connection is refused from then on;
2. idle keep-alive connections are closed; a connection with a request under way keeps going
   until that request is answered, then is closed;
3. the requests under way get up to `--shutdown-timeout` seconds (default 10,
   ZAPBILLING_SHUTDOWN_TIMEOUT) to finish, a body still arriving included; those still
   running then are cut off (app.py's lifecycle logs how many);
4. the app's cleanup stops the sweeper, drains the writer (every acknowledged write is
   committed) and closes the database;
5. the access lines still buffered are written, then one line:
   `stopped: answered N requests in flight, database closed` (N: the answers that went out
   after the signal), with `, cut off M at the 10 s bound` before `, database closed` when
   some were cut off (M counts those whose body had arrived; aiohttp cancels them).

A request whose body is still arriving when the stop begins cannot finish: aiohttp stops
reading every connection at step 2, so the rest of its body is never read, and it ends at
its --body-timeout or at the bound, whichever comes first. A request that has arrived whole
(even one waiting for its turn behind the admission gates) is answered.

A signal that arrives while the process is still starting (early_stop.py) is honoured as
soon as the event loop runs: the process then serves nothing and logs
`stopped during start-up (SIGTERM), before serving`, with exit status 0. The database may
have been opened (and migrated) by then; it is closed as on any stop.

Counting N costs requests nothing before the stop: only once the signal has arrived is each
open connection's access logger wrapped by one that counts (`_Tally`).
"""
from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Callable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from .early_stop import EarlyStop
from .transport import plain_routes

log = logging.getLogger("zapbilling")


class _Tally(AbstractAccessLogger):
    """A connection's access logger once the stop has begun: counts each answer, then logs it
    as before."""

    def __init__(self, inner: AbstractAccessLogger, counts: list[int]) -> None:
        super().__init__(inner.logger, "")
        self.inner, self.counts = inner, counts

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.counts[0] += 1
        self.inner.log(request, response, time)

    @property
    def enabled(self) -> bool:
        return self.inner.enabled


def _count_answers(server: web.Server) -> list[int]:
    """From now on, count the answers the open connections send (a one-item list, updated in
    place). New connections are no longer accepted, so these are all the answers still to come."""
    counts = [0]
    for conn in server.connections:
        if conn.access_logger is not None:
            conn.access_logger = _Tally(conn.access_logger, counts)
    return counts


async def serve(app: web.Application, sock: socket.socket, early: EarlyStop, *, shutdown_timeout: float,
                started: Callable[[], None], cut_off: Callable[[], int],
                label: str = "", **runner_options: Any) -> None:
    """Serve `app` on `sock` (bound and listening) until SIGTERM or SIGINT, then stop as the
    module docstring says. `cut_off`: how many handlers (their bodies read) have been
    cancelled so far, to count those cut off at the bound. Raises what the app's start-up raises (the
    database cannot be opened): nothing was served then."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(sig: int) -> None:
        early.record(sig)  # what the start-up line names, if it comes to that
        stop.set()

    for sig in early.signals:
        loop.add_signal_handler(sig, on_signal, sig)
    if early.signal:
        early.log_stopped(label)
        return
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=shutdown_timeout, **runner_options)
    await runner.setup()  # the app's start-up: opens (and migrates) the database
    plain_routes.install(runner)
    counts: list[int] | None = None
    cut_before = 0
    try:
        if not stop.is_set():
            await web.SockSite(runner, sock).start()
            started()
            await stop.wait()
            assert runner.server is not None  # set up above
            counts = _count_answers(runner.server)
            cut_before = cut_off()
    finally:
        await runner.cleanup()
    if counts is None:
        early.log_stopped(label)
        return
    cut = cut_off() - cut_before
    cut_line = f", cut off {cut} at the {shutdown_timeout:g} s bound" if cut else ""
    log.info("stopped: answered %d requests in flight%s, database closed%s", counts[0], cut_line, label)
