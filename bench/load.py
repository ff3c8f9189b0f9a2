"""Processes and load: servers as child processes (their process tree's RSS sampled while they
run, their CPU time read around the measured window), wrk driven with the Lua scripts in
bench/lua, and the machine's own CPU use so a busy machine shows up in the figures.

Nothing here knows a scenario; bench/scenarios.py says what to start and what to send.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import psutil

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "lua"
CPUS = os.cpu_count() or 1
MB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def zapbilling_cmd() -> list[str]:
    """The installed `zapbilling` script next to this interpreter, else `python -m zapbilling`."""
    script = Path(sys.executable).with_name("zapbilling")
    return [str(script)] if script.exists() else [sys.executable, "-m", "zapbilling"]


def child_env(**extra: str) -> dict[str, str]:
    """This environment without ZAPBILLING_* settings (flags say everything), `bench` importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZAPBILLING_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def wrk_path() -> str | None:
    return shutil.which("wrk")


def copy_db(src: Path, dst: Path) -> Path:
    """A fresh copy of a prepared database (its -wal and -shm too, if any)."""
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{src}{suffix}").exists():
            shutil.copyfile(f"{src}{suffix}", f"{dst}{suffix}")
    return dst


def _pin(cpus: set[int] | None):  # type: ignore[no-untyped-def]
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def _load_process(cpus: set[int] | None):  # type: ignore[no-untyped-def]
    """wrk runs as SCHED_BATCH: where it shares CPUs with the server (scenario 5's two workers on
    two CPUs), a normal task is woken ahead of the running worker at each answer that arrives,
    handling one or two answers per wake-up and preempting the server each time; as a batch task
    it takes its turn and handles what has piled up. Measured here: wrk's CPU per request beside
    two workers 20 -> 10 us; where wrk has a CPU to itself it changes nothing (no one to
    preempt). Any user may lower its own process to SCHED_BATCH."""
    pin = _pin(cpus)

    def prepare() -> None:
        if pin:
            pin()
        if hasattr(os, "SCHED_BATCH"):
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    return prepare


def _summed(processes: Iterable[psutil.Process], read: Callable[[psutil.Process], float]) -> float:
    """`read` of each of `processes`, summed; one that has ended counts nothing."""
    total = 0.0
    for p in processes:
        try:
            total += read(p)
        except psutil.NoSuchProcess:
            pass
    return total


def cpu_seconds_of(processes: Iterable[psutil.Process]) -> float:
    """User + system CPU time of `processes` so far."""
    return _summed(processes, lambda p: (t := p.cpu_times()).user + t.system)


def preemptions_of(processes: Iterable[psutil.Process]) -> int:
    """Involuntary context switches of `processes` so far: how often the kernel took the CPU from
    them while they could still run (on 2 CPUs shared by several servers, PostgreSQL and wrk, the
    cost of sharing rather than of the work; scenario 8)."""
    return int(_summed(processes, lambda p: p.num_ctx_switches().involuntary))


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class Proc:
    """A child process (and whatever it forks) whose summed RSS is sampled every `interval`
    seconds from start to stop; `peak_rss` is the highest sum seen."""

    def __init__(self, name: str, argv: list[str], *, log: Path, cpus: set[int] | None = None,
                 env: dict[str, str] | None = None, capture: bool = False, interval: float = 0.1):
        self.name, self.argv, self.log, self.cpus = name, argv, log, cpus
        self.env = env or child_env()
        self.capture = capture
        self.interval = interval
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_breakdown: list[tuple[int, str, float]] = []
        """(pid, process name, RSS MB) of each process when the tree's RSS peaked."""
        self.popen: subprocess.Popen[bytes] | None = None
        self._stop_sampling = threading.Event()
        self._sampler: threading.Thread | None = None
        self._log_file: Any = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self) -> "Proc":
        self._log_file = open(self.log, "wb")
        self.popen = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if self.capture else self._log_file, stderr=self._log_file,
            preexec_fn=_pin(self.cpus), start_new_session=True,
        )
        self._sampler = threading.Thread(target=self._sample, name=f"rss-{self.name}", daemon=True)
        self._sampler.start()
        return self

    def _sample(self) -> None:
        n = 0
        while not self._stop_sampling.is_set():
            rss = pss = 0
            full = n % 10 == 0  # PSS (shared pages counted once) is dearer to read: once a second
            breakdown = []
            for p in _tree(self.pid):
                try:
                    if full:
                        info = p.memory_full_info()
                        pss += getattr(info, "pss", info.rss)
                    else:
                        info = p.memory_info()
                    rss += info.rss
                    breakdown.append((p.pid, p.name(), round(info.rss / MB, 1)))
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            if rss > self.peak_rss:
                self.peak_rss, self.peak_breakdown = rss, breakdown
            self.peak_pss = max(self.peak_pss, pss)
            n += 1
            self._stop_sampling.wait(self.interval)

    def processes(self) -> int:
        return len(_tree(self.pid))

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process tree so far (all threads)."""
        return cpu_seconds_of(_tree(self.pid))

    def preemptions(self) -> int:
        return preemptions_of(_tree(self.pid))

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def communicate(self, timeout: float) -> bytes:
        """For a program that ends by itself: its stdout, once it has exited."""
        assert self.popen is not None
        try:
            out, _ = self.popen.communicate(timeout=timeout)
        finally:
            self._finish()
        if self.popen.returncode != 0:
            raise RuntimeError(f"{self.name} exited {self.popen.returncode}: {self.log_tail()}")
        return out or b""

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM to the process itself (every server here stops gracefully on it; a
        supervisor forwards it to its workers), then SIGKILL to its whole session (only this
        child and what it started) after `timeout`."""
        assert self.popen is not None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)  # leftovers of a stopped server, or a hung one
        except (ProcessLookupError, PermissionError):
            pass
        if self.popen.returncode is None:
            self.popen.wait()
        self._finish()
        return self.popen.returncode

    def _finish(self) -> None:
        self._stop_sampling.set()
        if self._sampler is not None:
            self._sampler.join()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_has_traceback(self) -> bool:
        try:
            return "Traceback (most recent call last)" in self.log.read_text(errors="replace")
        except OSError:
            return False


class Server(Proc):
    """An HTTP server on 127.0.0.1:`port`, ready once GET /healthz answers 200."""

    def __init__(self, name: str, argv: list[str], port: int, *, sender_cpus: set[int] | None = None, **kw: Any):
        """sender_cpus: where zapbilling's webhook sender process goes once the server is ready
        (it inherits the server's pinning): beside the load generator, off the serving CPU, as
        the OS would place it on a machine with a CPU to spare."""
        super().__init__(name, argv, **kw)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.sender_cpus = sender_cpus

    def start(self, timeout: float = 60.0) -> "Server":
        super().start()
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                self._finish()
                raise RuntimeError(f"{self.name} exited during start-up: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as r:
                    if r.status == 200:
                        if self.sender_cpus:
                            os.sched_setaffinity(self.sender().pid, self.sender_cpus)
                        return self
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} not ready after {timeout:g}s: {self.log_tail()}")
            time.sleep(0.05)

    def sender(self, timeout: float = 10.0) -> psutil.Process:
        """zapbilling's webhook sender process. The server starts it once it is ready
        (zapbilling/sender_process.py): wait for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in _tree(self.pid):
                try:
                    if "sender_process" in " ".join(p.cmdline()):
                        return p
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: no webhook sender process within {timeout:g} s")

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def http(url: str, body: Any = None, *, key: str, method: str | None = None, timeout: float = 120) -> Any:
    """One JSON call (setup and checks only; load goes through wrk)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data else "GET"), headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{req.method} {url} -> {exc.code}: {exc.read()[:500]!r}") from None


def zap(base_url: str, key: str, method: str, params: dict[str, Any]) -> Any:
    """A ZAP/JSON call; raises on an error envelope."""
    answer = http(f"{base_url}/api/v1/zap", {"method": method, "id": 1, "params": params}, key=key)
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer["result"]


def zap_batch(base_url: str, key: str, calls: Iterable[tuple[str, dict[str, Any]]]) -> list[Any]:
    envelopes = [{"method": m, "id": i, "params": p} for i, (m, p) in enumerate(calls)]
    answers = http(f"{base_url}/api/v1/zap", envelopes, key=key)
    bad = [a for a in answers if "error" in a]
    if bad:
        raise RuntimeError(f"batch: {len(bad)} errors, first {bad[0]}")
    return [a["result"] for a in answers]


# -- machine-wide CPU -------------------------------------------------------------------------

def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy (not idle, not waiting on I/O) since boot."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


# -- wrk --------------------------------------------------------------------------------------

@dataclass
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: dict[str, int]
    checked: int
    bad: int
    first_bad: str
    cpu_seconds: float
    """wrk's own user + system CPU time (from wait4)."""
    argv: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> int:
        return self.requests - self.errors.get("status_errors", 0)

    @property
    def failed(self) -> int:
        return sum(self.errors.values()) + self.bad


def wrk(url: str, script: str, env: dict[str, str], *, seconds: float, connections: int, threads: int,
        key: str, cpus: set[int] | None = None, check: bool = False, expect: str = "", reject: str = "error",
        timeout_s: float = 30.0) -> WrkResult:
    """Run wrk once with bench/lua/<script> for `seconds` (whole seconds: wrk takes no fractions). `check`: every response is checked in Lua
    (status < 300, contains `expect`, lacks `reject`): slower, so only for warm-ups."""
    exe = wrk_path()
    if exe is None:
        raise RuntimeError("wrk is not installed (Debian: apt-get install -y wrk)")
    threads = max(1, min(threads, connections))
    argv = [exe, f"-t{threads}", f"-c{connections}", f"-d{max(1, math.ceil(seconds))}s", "--latency",
            f"--timeout={timeout_s:g}s", "-s", str(LUA / script), url]
    full_env = dict(os.environ, BENCH_LUA_DIR=str(LUA), BENCH_KEY=key, BENCH_CHECK="1" if check else "0",
                    BENCH_EXPECT=expect, BENCH_REJECT=reject, **env)
    p = subprocess.Popen(argv, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                         preexec_fn=_load_process(cpus))
    assert p.stdout is not None and p.stderr is not None
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)  # wait4, not wait: it also gives wrk's CPU time
    p.returncode = os.waitstatus_to_exitcode(status)
    text = out.decode(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if p.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({p.returncode}): {err.decode(errors='replace')[-800:]} {text[-800:]}")
    r = json.loads(line[len("BENCH_RESULT "):])
    return WrkResult(
        requests=r["requests"], seconds=r["duration_us"] / 1e6, p50_ms=r["p50_us"] / 1e3, p90_ms=r["p90_us"] / 1e3,
        p99_ms=r["p99_us"] / 1e3, mean_ms=r["mean_us"] / 1e3, max_ms=r["max_us"] / 1e3,
        errors={k: r[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts") if r[k]},
        checked=r["checked"], bad=r["bad"], first_bad=r["first_bad"], cpu_seconds=usage.ru_utime + usage.ru_stime,
        argv=argv,
    )


def wrk_many(urls: list[str], script: str, env: dict[str, str], *, seconds: float, connections: int, threads: int,
             key: str, cpus: set[int] | None = None, check: bool = False, expect: str = "", reject: str = "error",
             timeout_s: float = 30.0) -> WrkResult:
    """`wrk` against each of `urls` at once (servers on one database), the connections split
    evenly over them, each its own nonce; one URL is a plain `wrk`. The result sums the
    requests, errors and CPU; its latencies are the worst of the wrk processes' (each wrk only
    knows its own percentiles), so p50 and p99 of a split load are upper bounds."""
    if len(urls) == 1:
        return wrk(urls[0], script, env, seconds=seconds, connections=connections, threads=threads, key=key, cpus=cpus,
                   check=check, expect=expect, reject=reject, timeout_s=timeout_s)
    share = [connections // len(urls) + (1 if i < connections % len(urls) else 0) for i in range(len(urls))]
    results: list[WrkResult | BaseException] = [RuntimeError("wrk did not run")] * len(urls)

    def one(i: int) -> None:
        try:
            results[i] = wrk(urls[i], script, env | {"BENCH_NONCE": f"{env.get('BENCH_NONCE', 'r')}-s{i}"}, seconds=seconds,
                             connections=share[i], threads=min(threads, share[i]), key=key, cpus=cpus, check=check,
                             expect=expect, reject=reject, timeout_s=timeout_s)
        except BaseException as exc:  # reported by the caller's thread
            results[i] = exc

    workers = [threading.Thread(target=one, args=(i,), name=f"wrk-{i}") for i in range(len(urls))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise failed[0]
    done = [r for r in results if isinstance(r, WrkResult)]
    errors: dict[str, int] = {}
    for r in done:
        for k, v in r.errors.items():
            errors[k] = errors.get(k, 0) + v
    seconds_run = max(r.seconds for r in done)
    return WrkResult(
        requests=sum(r.requests for r in done), seconds=seconds_run, p50_ms=max(r.p50_ms for r in done),
        p90_ms=max(r.p90_ms for r in done), p99_ms=max(r.p99_ms for r in done),
        mean_ms=sum(r.mean_ms * r.requests for r in done) / max(sum(r.requests for r in done), 1),
        max_ms=max(r.max_ms for r in done), errors=errors, checked=sum(r.checked for r in done),
        bad=sum(r.bad for r in done), first_bad=next((r.first_bad for r in done if r.first_bad), ""),
        cpu_seconds=sum(r.cpu_seconds for r in done), argv=done[0].argv,
    )
