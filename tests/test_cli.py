"""The real `zapbilling` command, driven with subprocess: key management, argument errors, and
`serve` as a separate process (keys made and revoked while it runs, its access log, and a clean
stop on SIGTERM/SIGINT that keeps every acknowledged write)."""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import sqlite3
import subprocess
import time
import uuid
from importlib.metadata import version
from pathlib import Path

import pytest
from aiohttp import ClientError, ClientSession

from procs import child_env, zapbilling_cmd
from zapbilling import cli
from zapbilling.config import ENV
from zapbilling.limits import env_name, limit_fields
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
    r = run_cli("keys", "create", "--db", db, "--org", org, "--mode", mode, "--create-db", *extra)
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
    r = run_cli("keys", "create", "--db", db, "--org", "acme", "--mode", "test", "--create-db")
    assert r.returncode == 0, r.stderr
    key_id = key_id_of_org(db, "acme")
    assert r.stderr == f"created {key_id} for acme (test, admin) in {db} (a new database)\n"
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
    lines = r.stdout.splitlines()
    assert lines[0] == "ID\tORG\tMODE\tSCOPE\tSECRET\tCREATED\tSTATE"
    assert len(lines) == 3 and all(len(line.split("\t")) == 7 for line in lines)
    assert r.stderr == f"2 keys in {db}\n"


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


# -- the CLI guides ------------------------------------------------------------------------

def all_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("zapbilling",)):
    """(command words, parser) for the top parser and every subcommand under it, at any depth."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from all_parsers(sub, (*path, name))


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Its options (not positionals, not --help or --version, not subcommands)."""
    return [a for a in parser._actions if a.option_strings and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


def env_variables() -> list[str]:
    """Every ZAPBILLING_* variable a setting is read from, as the code itself lists them."""
    return sorted(set(ENV.values()) | {env_name(f) for f in limit_fields()})


def parser_with_env(monkeypatch, values: dict[str, str]) -> argparse.ArgumentParser:
    for name in [k for k in os.environ if k.startswith("ZAPBILLING_")]:
        monkeypatch.delenv(name)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return cli._parser()


def test_every_option_help_names_its_default_and_its_environment_variable(monkeypatch):
    """Walks the parser: every subcommand, every option. Which variable an option reads is found
    by setting each to a marker and seeing which option's default becomes it; that option's
    help must name it, and an option whose help names a variable must read it."""
    markers = {name: f"marker-of-{name}" for name in env_variables()}
    marked = {(path, a.dest): a.default for path, p in all_parsers(parser_with_env(monkeypatch, markers)) for a in options(p)}
    reads = {key: name for key, default in marked.items() for name, m in markers.items() if default == m}
    assert len(set(reads.values())) == len(markers), f"variables no option reads: {set(markers) - set(reads.values())}"

    plain = {path: p for path, p in all_parsers(parser_with_env(monkeypatch, {}))}
    assert {" ".join(path) for path in plain} >= {"zapbilling serve", "zapbilling keys create", "zapbilling keys list",
                                                  "zapbilling keys revoke", "zapbilling gen openapi", "zapbilling migrate"}
    checked = 0
    for path, p in plain.items():
        for a in options(p):
            where, text = f"{' '.join(path)} {a.option_strings[0]}", a.help or ""
            if a.required:
                assert "(required)" in text, f"{where}: its help should say it is required: {text!r}"
            else:
                assert "default" in text, f"{where}: its help names no default: {text!r}"
                if a.default not in (None, False):
                    assert f"default {a.default}" in text, f"{where}: its help should name its default {a.default!r}: {text!r}"
            named = re.findall(r"\bZAPBILLING_[A-Z_]+", text)
            expected = [reads[(path, a.dest)]] if (path, a.dest) in reads else []
            assert named == expected, f"{where}: reads {expected}, its help names {named}: {text!r}"
            checked += 1
    assert checked > 40


def test_serve_help_shows_defaults_and_variables():
    r = run_cli("serve", "--help")
    assert r.returncode == 0 and r.stderr == ""
    text = " ".join(r.stdout.split())  # argparse wraps lines
    for fragment in ("(default 8080; env ZAPBILLING_PORT)", "(default zapbilling.db; env ZAPBILLING_DB)",
                     "(default 10.0; env ZAPBILLING_SHUTDOWN_TIMEOUT)", "(default 1; env ZAPBILLING_WORKERS)"):
        assert fragment in text, fragment


@pytest.mark.parametrize("words", [(), ("keys",), ("gen",)])
def test_a_command_alone_prints_its_usage(words):
    r = run_cli(*words)
    assert (r.returncode, r.stderr) == (2, "")
    prog = " ".join(("zapbilling", *words))
    assert r.stdout.startswith(f"usage: {prog} ")
    parser = dict(all_parsers(cli._parser()))[("zapbilling", *words)]
    subcommands = next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subcommands.items():
        assert re.search(rf"^\s+{name}\s", r.stdout, re.M), f"{name} is missing from {prog}'s usage"


def test_version():
    r = run_cli("--version")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"zapbilling {version('zapbilling')}\n", "")


def test_keys_create_refuses_a_database_that_does_not_exist_and_creates_nothing(tmp_path):
    """The trap: run from another folder, the default zapbilling.db is another file."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = run_cli("keys", "create", "--org", "acme", "--mode", "test", cwd=elsewhere)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == (f"zapbilling: error: no database at {elsewhere / 'zapbilling.db'}: pass --db (or set ZAPBILLING_DB)"
                        " to name the server's database, or --create-db to create it there\n")
    assert list(elsewhere.iterdir()) == []
    for words in (("keys", "list"), ("keys", "revoke", "key_0123456789abcdef01234567")):
        r = run_cli(*words, cwd=elsewhere)
        assert (r.returncode, r.stdout) == (2, "")
        assert r.stderr == (f"zapbilling: error: no database at {elsewhere / 'zapbilling.db'}: pass --db (or set"
                            " ZAPBILLING_DB) to name the server's database\n")
        assert list(elsewhere.iterdir()) == []

    r = run_cli("keys", "create", "--org", "acme", "--mode", "test", "--create-db", cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    made = elsewhere / "zapbilling.db"
    assert made.is_file()
    assert r.stderr == f"created {key_id_of_org(str(made), 'acme')} for acme (test, admin) in {made} (a new database)\n"


def test_keys_create_creates_a_database_named_on_purpose(tmp_path):
    """--db PATH (or ZAPBILLING_DB) names the database on purpose: the way a script sets up a
    fresh machine (keys create --db PATH, then serve --db PATH) keeps working; it says the
    database is new. keys list and revoke still never create one."""
    named = tmp_path / "billing.db"
    r = run_cli("keys", "list", "--db", str(named))
    assert r.returncode == 2 and not named.exists(), r.stderr
    r = run_cli("keys", "create", "--db", str(named), "--org", "acme", "--mode", "test")
    assert r.returncode == 0 and r.stdout.startswith("zb_test_"), r.stderr
    assert r.stderr == f"created {key_id_of_org(str(named), 'acme')} for acme (test, admin) in {named} (a new database)\n"
    by_env = tmp_path / "env.db"
    r = run_cli("keys", "create", "--org", "acme", "--mode", "live", env=child_env(ZAPBILLING_DB=str(by_env)), cwd=tmp_path)
    assert r.returncode == 0 and by_env.is_file(), r.stderr


async def test_every_key_command_says_which_database_it_used(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    env = child_env(ZAPBILLING_DB="billing.db")  # relative: the message shows it absolute
    where = work / "billing.db"
    made = run_cli("keys", "create", "--org", "acme", "--mode", "test", "--create-db", env=env, cwd=work)
    assert made.returncode == 0, made.stderr
    again = run_cli("keys", "create", "--org", "acme", "--mode", "live", "--scope", "read", env=env, cwd=work)
    assert again.returncode == 0, again.stderr
    listed = run_cli("keys", "list", env=env, cwd=work)
    assert listed.returncode == 0 and listed.stderr == f"2 keys in {where}\n"
    ids = [line.split("\t")[0] for line in listed.stdout.splitlines()[1:]]
    assert made.stderr == f"created {ids[0]} for acme (test, admin) in {where} (a new database)\n"
    assert again.stderr == f"created {ids[1]} for acme (live, read) in {where}\n"
    revoked = run_cli("keys", "revoke", ids[1], env=env, cwd=work)
    assert (revoked.returncode, revoked.stdout, revoked.stderr) == (0, "", f"revoked {ids[1]} in {where}\n")
    missing = run_cli("keys", "revoke", "key_0123456789abcdef01234567", env=env, cwd=work)
    assert (missing.returncode, missing.stderr) == (2, f"zapbilling: error: no such key: key_0123456789abcdef01234567 in {where}\n")


async def test_keys_revoke_given_a_secret_says_so_and_revokes_nothing(db):
    secret = create_key(db, "acme", "test")
    r = run_cli("keys", "revoke", secret, "--db", db)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == "zapbilling: error: that is a key's secret, not its id: use `zapbilling keys list` to find the id\n"
    assert await authenticate(db, secret) is not None
    assert "revoked" not in list_keys(db)


@pytest.mark.parametrize("target,out", [("openapi", "openapi.json"), ("docs", "api.md"), ("client", "client")])
def test_gen_check_names_a_file_that_does_not_exist(tmp_path, target, out):
    r = run_cli("gen", target, "--out", out, "--check", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == f"zapbilling: {out} does not exist: run `zapbilling gen {target} --out {out}`\n"
    assert list(tmp_path.iterdir()) == []


def test_gen_check_names_the_stale_file(tmp_path):
    (tmp_path / "openapi.json").write_text("{}")
    r = run_cli("gen", "openapi", "--check", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (1, "zapbilling: openapi.json is stale: run `zapbilling gen openapi --out openapi.json`\n")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_taken_port_says_so_and_creates_no_database(tmp_path, workers):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        r = run_cli("serve", "--db", "new.db", "--host", "127.0.0.1", "--port", str(port), "--workers", workers, cwd=tmp_path)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == (f"zapbilling: error: cannot serve on 127.0.0.1:{port}: the port is taken (choose another --port,"
                        " or stop what listens there); the database new.db was not opened\n")
    assert list(tmp_path.iterdir()) == []


def signal_caught(pid: int, sig: int) -> bool:
    """Whether the process has a handler for `sig` (Linux: SigCgt in /proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M).group(1), 16)
    return bool(caught >> (sig - 1) & 1)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_during_start_up_stops_cleanly_with_one_line(tmp_path, workers):
    """Start-up is held at opening the database (the test holds SQLite's lock on it); SIGTERM
    is sent once serve has its handler for it. The server finishes opening, serves nothing,
    and stops: exit status 0, one line, no `No child processes`."""
    db = tmp_path / "start.db"
    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # a new file in rollback mode: even opening it waits
    log = tmp_path / "serve.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([*zapbilling_cmd(), "serve", "--db", str(db), "--host", "127.0.0.1", "--port", "0",
                                 "--workers", workers], stdout=subprocess.DEVNULL, stderr=err, env=child_env())
        try:
            deadline = time.monotonic() + TIMEOUT
            while not signal_caught(proc.pid, signal.SIGTERM):
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            lock.execute("ROLLBACK")
            assert proc.wait(timeout=TIMEOUT) == 0
        finally:
            lock.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = log.read_text().splitlines()
    assert len(lines) == 1 and lines[0].endswith("INFO zapbilling: stopped during start-up (SIGTERM), before serving"), lines
