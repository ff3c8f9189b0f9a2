"""`zapbilling serve` as a real child process, for the suites that must kill it: the crash
suite (test_crash.py), the soak (bench/soak.py, test_soak.py).

The approach is test_cli.py's: the installed `zapbilling` script next to the interpreter (else
`python -m zapbilling`), an environment without any ZAPBILLING_* leaking in, a free loopback
port picked by binding port 0, readiness = GET /healthz answering 200 while the process lives,
keys made with `zapbilling keys create` (the key alone on stdout). Only the standard library and
aiohttp, so bench/soak.py can import it too.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
from aiohttp import ClientError, ClientSession, ClientTimeout

TIMEOUT = 30  # generous: how long a CLI call or a server start may take before giving up
SHUTDOWN_TIMEOUT = 10  # `serve --shutdown-timeout`'s default: a graceful stop waits at most this for requests


def zapbilling_cmd() -> list[str]:
    script = Path(sys.executable).with_name("zapbilling")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "zapbilling"]


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment without any ZAPBILLING_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZAPBILLING_")}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_key(db: str, org: str, mode: str = "test", scope: str = "admin") -> str:
    """A new API key made by the CLI; the database file is created (and migrated) if needed."""
    r = subprocess.run([*zapbilling_cmd(), "keys", "create", "--db", db, "--org", org, "--mode", mode, "--scope", scope, "--create-db"],
                       capture_output=True, text=True, timeout=TIMEOUT, env=child_env())
    if r.returncode != 0:
        raise RuntimeError(f"zapbilling keys create failed ({r.returncode}): {r.stderr}")
    lines = r.stdout.splitlines()
    if len(lines) != 1 or not lines[0].strip():
        raise RuntimeError(f"zapbilling keys create should print the key alone, got {r.stdout!r}")
    return lines[0].strip()


class ServerProcess:
    """One `zapbilling serve --db DB --host 127.0.0.1 --port N --durability D`; its stderr (the
    log) goes to `log_path`. Not started until start()."""

    def __init__(self, db: str, log_dir: str | Path, *, durability: str = "full", port: int | None = None, workers: int = 1,
                 args: tuple[str, ...] = ()):
        self.db, self.durability, self.workers, self.args = db, durability, workers, args  # args: more `serve` flags
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_dir) / f"serve-{self.port}-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = None

    def start(self) -> "ServerProcess":
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [*zapbilling_cmd(), "serve", "--db", self.db, "--host", "127.0.0.1", "--port", str(self.port),
             "--durability", self.durability, "--workers", str(self.workers), *self.args],
            stdout=subprocess.DEVNULL, stderr=self._log, env=child_env(),
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    async def wait_ready(self, timeout: float = TIMEOUT) -> None:
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + timeout
        async with ClientSession(timeout=ClientTimeout(total=2)) as s:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"serve exited with {self.proc.returncode} before it was ready:\n{self.log()}")
                try:
                    async with s.get(self.base + "/healthz") as r:
                        if r.status == 200:
                            return
                except (ClientError, asyncio.TimeoutError, OSError):
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError(f"serve did not answer /healthz within {timeout}s:\n{self.log()}")

    async def start_ready(self) -> "ServerProcess":
        self.start()
        await self.wait_ready()
        return self

    def kill9(self) -> None:
        """SIGKILL: no handler runs, no cleanup, no final commit; as a crash."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=TIMEOUT)
        self._close_log()

    def crash(self) -> None:
        """SIGKILL to the server and every process it started (its webhook sender, its
        workers), children first: the whole service gone at once, as in a power cut, where
        kill9 leaves the children to notice their parent is gone."""
        assert self.proc is not None
        children = psutil.Process(self.proc.pid).children(recursive=True)
        for child in children:
            child.kill()
        psutil.wait_procs(children, timeout=TIMEOUT)
        self.kill9()

    def terminate(self, timeout: float = SHUTDOWN_TIMEOUT + 5) -> int | None:
        """SIGTERM and wait up to `timeout` for the exit; its status, or None if it is still running."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            if self.proc.poll() is not None:
                self._close_log()

    def stop(self) -> None:
        """Make sure it is gone (SIGKILL if still running); for teardown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
