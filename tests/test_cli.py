"""The real `zapbilling` command, driven with subprocess: key management, argument errors, and
`serve` as a separate process (keys made and revoked while it runs, its access log, and a clean
stop on SIGTERM/SIGINT that keeps every acknowledged write)."""
from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from aiohttp import ClientError, ClientSession

from procs import child_env, zapbilling_cmd
from zapbilling.store import SqliteStore

pytestmark = pytest.mark.sqlite_only("the CLI on SQLite files; its PostgreSQL URLs: test_many_servers, test_copy, test_export")

TIMEOUT = 30  # generous: how long a CLI call or a server start may take before the test gives up
EXIT_WAIT = 10  # "within a few seconds", generously


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*zapbilling_cmd(), *args], capture_output=True, text=True, timeout=TIMEOUT,
        env=env if env is not None else child_env(), cwd=cwd,
    )


def create_key(db: str, org: str, mode: str = "test", *extra: str) -> str:
    r = run_cli("keys", "create", "--db", db, "--org", org, "--mode", mode, *extra)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1, f"stdout should be the key alone, got {r.stdout!r}"
    return lines[0]


def list_keys(db: str) -> str:
    r = run_cli("keys", "list", "--db", db)
    assert r.returncode == 0, r.stderr
    return r.stdout


def key_line(listing: str, key_id: str) -> str:
    found = [line for line in listing.splitlines() if key_id in line.split()]
    assert len(found) == 1, f"expected one line for {key_id} in {listing!r}"
    return found[0]


def key_id_of_org(db: str, org: str) -> str:
    """The id of the only key of `org`, read from `keys list` (each test uses its own org)."""
    lines = [line.split() for line in list_keys(db).splitlines() if org in line.split()]
    assert len(lines) == 1, lines
    ids = [tok for tok in lines[0] if tok.startswith("key")]
    assert ids, lines[0]
    return ids[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def authenticate(db: str, secret: str):
    store = SqliteStore(db)
    await store.open()
    try:
        return await store.authenticate(secret)
    finally:
        await store.close()


def one_stderr_line(r: subprocess.CompletedProcess[str]) -> None:
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"expected exactly one line on stderr, got {r.stderr!r}"


# -- a server process ----------------------------------------------------------------------

class Server:
    """`zapbilling serve` as a child process, its stderr (the log) in a file."""

    def __init__(self, tmp: Path, db: str, port: int, *, via_env: bool):
        self.db, self.port = db, port
        self.ready_token = f"ready{uuid.uuid4().hex}"
        self.ready_answers = 0  # readiness probes that got an answer, hence an access-log line
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = tmp / f"serve-{uuid.uuid4().hex[:8]}.log"
        self._log = open(self.log_path, "w")
        if via_env:
            args, env = [], child_env(ZAPBILLING_DB=db, ZAPBILLING_HOST="127.0.0.1", ZAPBILLING_PORT=str(port))
        else:
            args, env = ["--db", db, "--host", "127.0.0.1", "--port", str(port)], child_env()
        self.proc = subprocess.Popen([*zapbilling_cmd(), "serve", *args], stdout=subprocess.DEVNULL, stderr=self._log,
                                     env=env, cwd=tmp)

    def log(self) -> str:
        return self.log_path.read_text()

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        async with ClientSession() as s:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"serve exited with {self.proc.returncode}: {self.log()}")
                try:
                    async with s.get(self.base + "/healthz", params={"probe": self.ready_token}) as r:
                        self.ready_answers += 1
                        if r.status == 200:
                            return
                except ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"serve did not answer within {TIMEOUT}s: {self.log()}")

    def stop(self, sig: int) -> int:
        """Send `sig` and wait (generously) for the process to exit; its exit status."""
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=EXIT_WAIT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=EXIT_WAIT)
        self._log.close()


@pytest.fixture
def db(tmp_path) -> str:
    return str(tmp_path / "cli.db")


@pytest.fixture
def start_server(tmp_path):
    """start_server(db, via_env=False) -> a running Server; every one is killed at teardown."""
    started: list[Server] = []

    async def start(db: str, *, via_env: bool = False) -> Server:
        server = Server(tmp_path, db, free_port(), via_env=via_env)
        started.append(server)
        await server.wait_ready()
        return server

    yield start
    for server in started:
        server.kill()


async def get_balance(session: ClientSession, server: Server, key: str, user: str) -> tuple[int, dict]:
    async with session.get(server.base + "/api/v1/billing/balance", params={"user": user},
                           headers={"Authorization": f"Bearer {key}"}) as r:
        return r.status, await r.json()


async def deposit(session: ClientSession, server: Server, key: str, user: str, amount: int) -> tuple[int, dict]:
    async with session.post(server.base + "/api/v1/billing/deposit", json={"user": user, "amount": amount},
                            headers={"Authorization": f"Bearer {key}"}) as r:
        return r.status, await r.json()


# -- keys ----------------------------------------------------------------------------------

async def test_keys_create_prints_only_the_key_with_default_scope_admin(db):
    r = run_cli("keys", "create", "--db", db, "--org", "acme", "--mode", "test")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1, f"stdout must be the key alone: {r.stdout!r}"
    key = lines[0]
    assert key and key == key.strip()
    principal = await authenticate(db, key)
    assert principal is not None, "the printed key does not authenticate"
    assert (principal.org, principal.mode, principal.scope) == ("acme", "test", "admin")


async def test_keys_create_with_scope_read_makes_a_read_key(db):
    key = create_key(db, "readers", "live", "--scope", "read")
    principal = await authenticate(db, key)
    assert principal is not None
    assert (principal.org, principal.mode, principal.scope) == ("readers", "live", "read")
    key_id = key_id_of_org(db, "readers")
    assert "read" in key_line(list_keys(db), key_id).split()


def test_keys_list_shows_id_org_mode_scope_and_never_the_key(db):
    admin = create_key(db, "acme", "test")
    reader = create_key(db, "globex", "live", "--scope", "read")
    r = run_cli("keys", "list", "--db", db)
    assert r.returncode == 0, r.stderr
    assert admin not in r.stdout and reader not in r.stdout
    assert admin not in r.stderr and reader not in r.stderr
    rows = {}
    for org in ("acme", "globex"):
        key_id = key_id_of_org(db, org)
        rows[org] = key_line(r.stdout, key_id).split()
    assert {"acme", "test", "admin"} <= set(rows["acme"])
    assert {"globex", "live", "read"} <= set(rows["globex"])
    assert len(r.stdout.splitlines()) == 2


async def test_keys_revoke_marks_the_key_revoked_in_list(db):
    key = create_key(db, "acme", "test")
    other = create_key(db, "initech", "test")
    key_id = key_id_of_org(db, "acme")
    assert "revoked" not in key_line(list_keys(db), key_id)
    r = run_cli("keys", "revoke", key_id, "--db", db)
    assert r.returncode == 0, r.stderr
    listing = list_keys(db)
    assert "revoked" in key_line(listing, key_id)
    assert "revoked" not in key_line(listing, key_id_of_org(db, "initech"))
    assert await authenticate(db, key) is None
    assert await authenticate(db, other) is not None


def test_keys_revoke_unknown_id_exits_nonzero_with_one_line(db):
    create_key(db, "acme", "test")
    r = run_cli("keys", "revoke", "key_doesnotexist000000000000", "--db", db)
    assert r.returncode != 0
    one_stderr_line(r)
    assert r.stdout == ""


BAD_INVOCATIONS = {
    "unknown-flag-keys-create": (["keys", "create", "--org", "acme", "--mode", "test", "--colour", "red"], {}),
    "unknown-flag-keys-list": (["keys", "list", "--verbose"], {}),
    "unknown-flag-serve": (["serve", "--port", "0", "--threads", "4"], {}),
    "zero-workers": (["serve", "--port", "0", "--workers", "0"], {}),
    "bad-workers-env": (["serve", "--port", "0"], {"ZAPBILLING_WORKERS": "many"}),
    "unknown-command": (["keys", "rotate"], {}),
    "bad-mode": (["keys", "create", "--org", "acme", "--mode", "production"], {}),
    "bad-scope": (["keys", "create", "--org", "acme", "--mode", "test", "--scope", "owner"], {}),
    "bad-port-text": (["serve", "--port", "eighty"], {}),
    "bad-port-range": (["serve", "--port", "70000"], {}),
    "bad-port-negative": (["serve", "--port=-1"], {}),
    "bad-port-env": (["serve"], {"ZAPBILLING_PORT": "http"}),
    "missing-org": (["keys", "create", "--mode", "test"], {}),
    "empty-org": (["keys", "create", "--org", "", "--mode", "test"], {}),
    "bad-durability-env": (["serve"], {"ZAPBILLING_DURABILITY": "sometimes"}),
    "db-folder-missing-keys": (["keys", "list", "--db", "/nonexistent-zb/dir/x.db"], {}),
    "db-folder-missing-serve": (["serve", "--port", "0", "--db", "/nonexistent-zb/dir/x.db"], {}),
}


@pytest.mark.parametrize("case", list(BAD_INVOCATIONS))
def test_bad_invocation_exits_nonzero_with_one_line_on_stderr(case, tmp_path):
    args, env = BAD_INVOCATIONS[case]
    db = str(tmp_path / "bad.db")
    if args[0] == "keys" and args[1] in ("create", "list") and "--db" not in args:
        args = [*args, "--db", db]
    elif args[0] == "serve":
        env = {"ZAPBILLING_DB": db, **env}
    try:
        r = run_cli(*args, env=child_env(**env), cwd=tmp_path)
    except subprocess.TimeoutExpired:  # run() kills the child on timeout
        pytest.fail(f"{args} did not exit: a bad invocation was accepted")
    assert r.returncode != 0
    one_stderr_line(r)
    assert r.stdout == ""


# -- serve ---------------------------------------------------------------------------------

async def test_serve_accepts_a_key_created_while_running(db, start_server):
    create_key(db, "bootstrap", "test")  # the database exists before the server starts
    server = await start_server(db, via_env=True)
    key = create_key(db, "acme", "test")
    async with ClientSession() as s:
        status, body = await get_balance(s, server, key, "hanzo/alice")
        assert status == 200, body
        assert body["balance"] == 0
        status, body = await deposit(s, server, key, "hanzo/alice", 700)
        assert status == 201, body
        status, body = await get_balance(s, server, key, "hanzo/alice")
        assert (status, body["balance"]) == (200, 700)


async def test_serve_refuses_a_key_revoked_while_running(db, start_server):
    server = await start_server(db)
    key = create_key(db, "acme", "test")
    keep = create_key(db, "globex", "test")
    async with ClientSession() as s:
        assert (await get_balance(s, server, key, "u"))[0] == 200
        r = run_cli("keys", "revoke", key_id_of_org(db, "acme"), "--db", db)
        assert r.returncode == 0, r.stderr
        status, body = await get_balance(s, server, key, "u")
        assert status == 401, body
        status, body = await deposit(s, server, key, "u", 5)
        assert status == 401, body
        assert (await get_balance(s, server, keep, "u"))[0] == 200


async def test_serve_logs_one_line_per_request(db, start_server):
    key = create_key(db, "acme", "test")
    server = await start_server(db, via_env=True)
    # the readiness probes' own lines may be written just after their answers: wait for them
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and server.log().count(server.ready_token) < server.ready_answers:
        await asyncio.sleep(0.05)
    assert server.log().count(server.ready_token) == server.ready_answers
    before = len(server.log().splitlines())
    markers = [f"probe{uuid.uuid4().hex}" for _ in range(8)]
    async with ClientSession() as s:
        for i, m in enumerate(markers):
            if i % 4 == 0:
                async with s.get(server.base + "/healthz", params={"p": m}) as r:
                    assert r.status == 200
            elif i % 4 == 1:
                assert (await get_balance(s, server, key, m))[0] == 200
            elif i % 4 == 2:
                assert (await get_balance(s, server, "zb_test_notakey", m))[0] == 401
            else:
                async with s.get(server.base + f"/api/v1/{m}", headers={"Authorization": f"Bearer {key}"}) as r:
                    assert r.status == 404
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and not all(m in server.log() for m in markers):
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # anything else a request would log has had time to arrive
    new = server.log().splitlines()[before:]
    for m in markers:
        assert sum(m in line for line in new) == 1, f"request {m} should be logged on exactly one line: {new}"
    assert len(new) == len(markers), f"expected {len(markers)} new log lines, got {new}"


async def test_serve_writes_every_buffered_access_line_before_it_exits(db, start_server):
    """Access lines are written in batches; a graceful stop right after the requests must still
    leave one line per request in the log."""
    key = create_key(db, "acme", "test")
    server = await start_server(db)
    markers = [f"last{uuid.uuid4().hex}" for _ in range(5)]
    async with ClientSession() as s:
        for m in markers:
            assert (await get_balance(s, server, key, m))[0] == 200
    assert server.stop(signal.SIGTERM) == 0
    log = server.log()
    assert all(log.count(m) == 1 for m in markers), log


async def test_serve_exits_zero_on_sigterm(db, start_server):
    server = await start_server(db)
    assert server.stop(signal.SIGTERM) == 0
    assert "Traceback" not in server.log()


async def test_acknowledged_writes_survive_sigterm_and_restart(db, start_server):
    key = create_key(db, "acme", "test")
    server = await start_server(db, via_env=True)
    amounts = list(range(1, 201))
    async with ClientSession() as s:
        replies = await asyncio.gather(*(deposit(s, server, key, "hanzo/burst", a) for a in amounts))
    acknowledged = sum(a for a, (status, _) in zip(amounts, replies) if status == 201)
    assert all(status == 201 for status, _ in replies), [r for r in replies if r[0] != 201][:3]
    assert server.stop(signal.SIGTERM) == 0
    restarted = await start_server(db)
    async with ClientSession() as s:
        status, body = await get_balance(s, restarted, key, "hanzo/burst")
    assert status == 200, body
    assert body["balance"] == acknowledged


async def test_sigterm_during_a_burst_keeps_every_acknowledged_deposit(db, start_server):
    """Deposits of distinct powers of two: the balance after a restart says exactly which ones
    were committed, and every one answered 201 must be among them."""
    key = create_key(db, "acme", "test")
    server = await start_server(db)
    amounts = [1 << i for i in range(60)]
    async with ClientSession() as s:
        async def attempt(amount: int):
            try:
                return await deposit(s, server, key, "hanzo/midflight", amount)
            except (ClientError, asyncio.TimeoutError, ValueError) as exc:
                return None, repr(exc)

        tasks = [asyncio.create_task(attempt(a)) for a in amounts]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        server.proc.send_signal(signal.SIGTERM)
        replies = await asyncio.gather(*tasks)
    acknowledged = sum(a for a, (status, _) in zip(amounts, replies) if status == 201)
    assert acknowledged > 0
    assert server.proc.wait(timeout=EXIT_WAIT) == 0
    restarted = await start_server(db)
    async with ClientSession() as s:
        status, body = await get_balance(s, restarted, key, "hanzo/midflight")
    assert status == 200, body
    committed = body["balance"]
    lost = acknowledged & ~committed
    assert lost == 0, f"acknowledged deposits missing after restart: {[a for a in amounts if a & lost]}"


async def test_sigint_stops_cleanly_and_keeps_acknowledged_writes(db, start_server):
    key = create_key(db, "acme", "test")
    server = await start_server(db)
    async with ClientSession() as s:
        replies = await asyncio.gather(*(deposit(s, server, key, "hanzo/int", a) for a in range(1, 51)))
    assert all(status == 201 for status, _ in replies)
    assert server.stop(signal.SIGINT) == 0
    assert "Traceback" not in server.log()
    restarted = await start_server(db)
    async with ClientSession() as s:
        status, body = await get_balance(s, restarted, key, "hanzo/int")
    assert (status, body["balance"]) == (200, sum(range(1, 51)))
