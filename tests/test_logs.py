"""The log (issue 20, item 3; contract: Operations endpoints, "Logs"), on a real `zapbilling
serve` process (tests/procs.py) whose stderr is the log:

- one access line per request naming what it called and how it ended (transport, method or a
  batch's count and methods, the envelope id, org and mode, outcome kind, status, duration), in
  `--log-format text` and `json` (each JSON line parses on its own);
- a server fault (forced by a database trigger that refuses one user's deposits) logs its
  traceback once, with the error id the caller's error message carries;
- no line holds an API key, a request body or a webhook-secret-looking value sent in the request;
- `--log-level warning` writes no access lines, but still the faults.
"""
from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

import pg
from procs import ServerProcess, child_env, create_key, zapbilling_cmd

TIMEOUT = 30
ACCESS = " INFO aiohttp.access: "
FAULTY = "faulty-user"
"""Deposits to this user fail inside the database (the trigger `force_fault` installs)."""
ERROR_ID = re.compile(r"internal error \(error id ([0-9a-f]{12})\)\Z")


class LoggedServer(ServerProcess):
    """ServerProcess with `--log-format` and `--log-level`."""

    def __init__(self, db: str, log_dir: Path, log_format: str, log_level: str = "info"):
        super().__init__(db, log_dir)
        self.log_format, self.log_level = log_format, log_level

    def start(self) -> "LoggedServer":
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [*zapbilling_cmd(), "serve", "--db", self.db, "--host", "127.0.0.1", "--port", str(self.port),
             "--log-format", self.log_format, "--log-level", self.log_level],
            stdout=subprocess.DEVNULL, stderr=self._log, env=child_env(),
        )
        return self


async def started(db: str, tmp_path: Path, log_format: str, log_level: str = "info") -> LoggedServer:
    server = LoggedServer(db, tmp_path, log_format, log_level)
    await server.start_ready()
    return server


async def lines_with(server: ServerProcess, marker: str, n: int = 1) -> list[str]:
    """The log's lines holding `marker`, once there are `n` (access lines are written in batches
    a tenth of a second apart; the wait is for their arrival, not a timed assertion)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        found = [line for line in server.log().splitlines() if marker in line]
        if len(found) >= n or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


def access_lines(server: ServerProcess, log_format: str) -> list[str]:
    """The access lines of API requests: not the readiness probes' (under load a probe may time
    out on the client's side after the server answered it, and be sent again)."""
    lines = server.log().splitlines()
    if log_format == "json":
        return [line for line in lines if json.loads(line)["logger"] == "aiohttp.access" and json.loads(line)["path"] != "/healthz"]
    return [line for line in lines if ACCESS in line and " /healthz " not in line]


def install_fault(db: str) -> None:
    """Deposits to FAULTY fail in the database with an error the service does not expect."""
    if pg.is_url(db):
        pg.admin().run(_pg_execute(db, """
            CREATE FUNCTION force_fault() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.user_id = 'faulty-user' THEN RAISE EXCEPTION 'forced fault for the test'; END IF;
              RETURN NEW;
            END $$;
            CREATE TRIGGER force_fault BEFORE INSERT ON ledger FOR EACH ROW EXECUTE FUNCTION force_fault();"""))
        return
    import sqlite3

    con = sqlite3.connect(db)
    con.execute("CREATE TRIGGER force_fault BEFORE INSERT ON ledger WHEN NEW.user_id = 'faulty-user'"
                " BEGIN SELECT RAISE(ABORT, 'forced fault for the test'); END")
    con.commit()
    con.close()


async def _pg_execute(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def zap(s: ClientSession, server: ServerProcess, key: str, body: Any) -> tuple[int, Any]:
    async with s.post(server.base + "/api/v1/zap", json=body, headers=auth(key)) as r:
        return r.status, await r.json()


# -- one line per request, with its facts -------------------------------------------------

async def run_the_four_calls(server: ServerProcess, key: str, m: str) -> None:
    """A ZAP call, a ZAP batch, a REST call and a refused call, each marked by `m`."""
    async with ClientSession() as s:
        status, body = await zap(s, server, key, {"method": "billing.getBalance", "id": f"one-{m}", "params": {"user": "u"}})
        assert (status, body["result"]["balance"]) == (200, 0), body
        status, body = await zap(s, server, key, [
            {"method": "billing.getBalance", "id": f"b1-{m}", "params": {"user": "u"}},
            {"method": "billing.deposit", "id": 2, "params": {"user": "u", "amount": 5}},
            {"method": "billing.nope", "id": 3},
            {"method": "billing.deposit", "id": 4, "params": {"user": "u", "amount": 7}},
        ])
        assert status == 200 and [("result" in a) for a in body] == [True, True, False, True], body
        async with s.get(server.base + "/api/v1/billing/balance", params={"user": f"rest-{m}"}, headers=auth(key)) as r:
            assert r.status == 200
        async with s.post(server.base + "/api/v1/zap", json={"method": "billing.getBalance", "id": f"bad-{m}"},
                          headers={**auth("zb_test_notakey"), "X-Marker": f"refused-{m}"}) as r:
            assert r.status == 401


async def test_text_lines_name_each_calls_facts(db_path, tmp_path):
    key = create_key(db_path, "acme", "test")
    server = await started(db_path, tmp_path, "text")
    try:
        m = uuid.uuid4().hex[:8]
        await run_the_four_calls(server, key, m)
        single, = await lines_with(server, f'id="one-{m}"')
        assert single.endswith(f' transport=zap method=billing.getBalance id="one-{m}" org=acme mode=test outcome=ok'), single
        assert '"POST /api/v1/zap HTTP/1.1" 200 ' in single
        batch, = await lines_with(server, f'"b1-{m}"')
        assert batch.endswith(
            f' transport=zap batch=4 methods=billing.getBalance,billing.deposit,?,billing.deposit ids="b1-{m}",2,3,4'
            " org=acme mode=test outcome=method_not_found outcomes=ok*2,method_not_found,ok"), batch
        rest, = await lines_with(server, f"rest-{m}")
        assert rest.endswith(" transport=rest method=billing.getBalance org=acme mode=test outcome=ok"), rest
        assert f'"GET /api/v1/billing/balance?user=rest-{m} HTTP/1.1" 200 ' in rest
        # the refused call's line: the last access line (the requests were sequential)
        await lines_with(server, "/api/v1/", 4)
        lines = access_lines(server, "text")
        assert len(lines) == 4, lines
        refused = lines[-1]
        assert refused.endswith(" transport=zap outcome=unauthorized"), refused
        assert '"POST /api/v1/zap HTTP/1.1" 401 ' in refused and "bad-" not in refused
        for line in lines:
            assert re.search(r'HTTP/1\.1" \d{3} \d+ \d+\.\d{6}s transport=', line), line  # status, bytes, duration
            # the peer, worked out once per connection (the session kept its connection alive)
            assert f'{ACCESS}127.0.0.1 "' in line, line
        # another version of HTTP on another connection: the line says which
        host, port = server.base.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET /api/v1/billing/balance?user=old-{m} HTTP/1.0\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
        assert (await reader.read()).startswith(b"HTTP/1.0 200 ")
        writer.close()
        old, = await lines_with(server, f"old-{m}")
        assert f'{ACCESS}127.0.0.1 "GET /api/v1/billing/balance?user=old-{m} HTTP/1.0" 200 ' in old, old
    finally:
        server.stop()


async def test_json_lines_name_each_calls_facts(db_path, tmp_path):
    key = create_key(db_path, "acme", "live")
    server = await started(db_path, tmp_path, "json")
    try:
        m = uuid.uuid4().hex[:8]
        await run_the_four_calls(server, key, m)
        await lines_with(server, "/api/v1/", 4)
        records = [json.loads(line) for line in server.log().splitlines()]  # every line is one JSON object
        assert records[0]["logger"] == "zapbilling" and records[0]["level"] == "INFO"
        assert records[0]["message"].startswith("serving ")
        access = [r for r in records if r["logger"] == "aiohttp.access"]
        assert len(access) >= 5, access
        for r in access:
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"]), r
            assert r["level"] == "INFO" and r["remote"] == "127.0.0.1"
            assert isinstance(r["duration_ms"], (int, float)) and r["duration_ms"] >= 0
            assert isinstance(r["bytes"], int) and r["bytes"] > 0
        probe, (single, batch, rest, refused) = access[0], [json.loads(line) for line in access_lines(server, "json")]
        assert probe["path"] == "/healthz" and "transport" not in probe and probe["status"] == 200
        common = {"level", "logger", "time", "remote", "duration_ms", "bytes"}
        assert {k: v for k, v in single.items() if k not in common} == {
            "message": "POST /api/v1/zap 200", "http_method": "POST", "path": "/api/v1/zap", "status": 200,
            "transport": "zap", "method": "billing.getBalance", "id": f"one-{m}", "org": "acme", "mode": "live", "outcome": "ok"}
        assert {k: v for k, v in batch.items() if k not in common} == {
            "message": "POST /api/v1/zap 200", "http_method": "POST", "path": "/api/v1/zap", "status": 200,
            "transport": "zap", "batch": 4, "methods": ["billing.getBalance", "billing.deposit", None, "billing.deposit"],
            "ids": [f"b1-{m}", 2, 3, 4], "outcomes": ["ok", "ok", "method_not_found", "ok"],
            "org": "acme", "mode": "live", "outcome": "method_not_found"}
        assert {k: v for k, v in rest.items() if k not in common} == {
            "message": f"GET /api/v1/billing/balance?user=rest-{m} 200", "http_method": "GET",
            "path": f"/api/v1/billing/balance?user=rest-{m}", "status": 200,
            "transport": "rest", "method": "billing.getBalance", "org": "acme", "mode": "live", "outcome": "ok"}
        assert {k: v for k, v in refused.items() if k not in common} == {
            "message": "POST /api/v1/zap 401", "http_method": "POST", "path": "/api/v1/zap", "status": 401,
            "transport": "zap", "outcome": "unauthorized"}
    finally:
        server.stop()


async def test_rest_errors_name_their_kind_and_the_known_caller(db_path, tmp_path):
    """A REST call answered an error: its kind, and the org of a caller whose key was known;
    the same route's successes before and after it still say ok (their facts are shared)."""
    key = create_key(db_path, "globex", "test", scope="read")
    server = await started(db_path, tmp_path, "json")
    try:
        async with ClientSession() as s:
            async with s.post(server.base + "/api/v1/billing/deposit", json={"user": "u", "amount": 1}, headers=auth(key)) as r:
                assert r.status == 403
            for params in ({"user": "x"}, {"usr": "x"}, {"user": "x"}):
                async with s.get(server.base + "/api/v1/billing/balance", params=params, headers=auth(key)) as r:
                    assert r.status == (200 if "user" in params else 400)
        await lines_with(server, "/api/v1/", 4)
        forbidden, before, invalid, after = [json.loads(line) for line in access_lines(server, "json")]
        for ok in (before, after):
            assert (ok["transport"], ok["method"], ok["org"], ok["mode"], ok["outcome"], ok["status"]) \
                == ("rest", "billing.getBalance", "globex", "test", "ok", 200), ok
        assert (forbidden["transport"], forbidden["method"], forbidden["org"], forbidden["mode"], forbidden["outcome"], forbidden["status"]) \
            == ("rest", "billing.deposit", "globex", "test", "forbidden", 403)
        assert (invalid["method"], invalid["outcome"], invalid["status"]) == ("billing.getBalance", "invalid_params", 400)
    finally:
        server.stop()


async def test_concurrent_calls_each_get_their_own_facts(db_path, tmp_path):
    """Facts objects are reused once a request's line is written (transport/facts.py): many calls
    at once, of two orgs, half of them failing, each line still names its own."""
    keys = {org: create_key(db_path, org, "test") for org in ("acme", "globex")}
    server = await started(db_path, tmp_path, "json")
    n = 60
    try:
        async with ClientSession() as s:
            async def one(i: int) -> None:
                org = "acme" if i % 2 else "globex"
                params = {"user": f"u{i}"} if i % 3 else {"usr": "x"}
                status, body = await zap(s, server, keys[org], {"method": "billing.getBalance", "id": f"c{i}", "params": params})
                assert status == 200 and body["id"] == f"c{i}"
            for _ in range(3):
                await asyncio.gather(*(one(i) for i in range(n)))
        await lines_with(server, "/api/v1/", 3 * n)
        seen = [json.loads(line) for line in access_lines(server, "json")]
        assert len(seen) == 3 * n
        for r in seen:
            i = int(r["id"][1:])
            assert (r["org"], r["outcome"], r["method"], r["transport"]) == \
                ("acme" if i % 2 else "globex", "ok" if i % 3 else "invalid_params", "billing.getBalance", "zap"), r
        assert sorted(r["id"] for r in seen) == sorted(f"c{i}" for i in range(n) for _ in range(3))
    finally:
        server.stop()


# -- faults ---------------------------------------------------------------------------------

@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_a_server_fault_logs_its_traceback_once_with_the_error_id_the_caller_got(db_path, tmp_path, log_format):
    key = create_key(db_path, "acme", "test")
    install_fault(db_path)
    server = await started(db_path, tmp_path, log_format)
    try:
        async with ClientSession() as s:
            async with s.post(server.base + "/api/v1/billing/deposit", json={"user": FAULTY, "amount": 5}, headers=auth(key)) as r:
                assert r.status == 500
                error = (await r.json())["error"]
            status, answer = await zap(s, server, key, {"method": "billing.deposit", "id": 9, "params": {"user": FAULTY, "amount": 5}})
            # a deposit to anyone else still works: the fault is the trigger's
            async with s.post(server.base + "/api/v1/billing/deposit", json={"user": "fine", "amount": 5}, headers=auth(key)) as r:
                assert r.status == 201
        assert error["code"] == "internal_error" and error["type"] == "api-error", error
        rest_id = ERROR_ID.match(error["message"]).group(1)  # type: ignore[union-attr]
        assert status == 200 and answer["error"]["code"] == -32000 and answer["error"]["data"] == {"kind": "internal_error"}, answer
        zap_id = ERROR_ID.match(answer["error"]["message"]).group(1)  # type: ignore[union-attr]
        assert rest_id != zap_id
        await lines_with(server, "/api/v1/", 3)
        log = server.log()
        for error_id in (rest_id, zap_id):
            assert log.count("Traceback (most recent call last)") == 2, log
            if log_format == "json":
                records = [json.loads(line) for line in log.splitlines()]
                faults = [r for r in records if r.get("error_id") == error_id]
                assert [r["logger"] for r in faults] == ["zapbilling", "aiohttp.access"], faults
                fault, access = faults
                assert fault["level"] == "ERROR" and fault["message"] == f"billing.deposit failed (error id {error_id})", fault
                assert fault["traceback"].startswith("Traceback (most recent call last)")
                assert "forced fault for the test" in fault["traceback"]
                assert access["outcome"] == "internal_error" and access["method"] == "billing.deposit"
            else:
                at = [i for i, line in enumerate(log.splitlines()) if error_id in line]
                assert len(at) == 2, log  # the fault's line, and its request's access line
                lines = log.splitlines()
                fault, access = lines[at[0]], lines[at[1]]
                assert fault.endswith(f" ERROR zapbilling: billing.deposit failed (error id {error_id})"), fault
                assert lines[at[0] + 1] == "Traceback (most recent call last):"
                assert access.endswith(f" outcome=internal_error error_id={error_id}"), access
        zap_access = [line for line in log.splitlines() if zap_id in line][-1]
        assert ("id=9" if log_format == "text" else '"id": 9') in zap_access
    finally:
        server.stop()


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_log_level_warning_writes_faults_but_no_access_lines(db_path, tmp_path, log_format):
    key = create_key(db_path, "acme", "test")
    install_fault(db_path)
    server = await started(db_path, tmp_path, log_format, "warning")
    try:
        async with ClientSession() as s:
            for _ in range(3):
                async with s.get(server.base + "/api/v1/billing/balance", params={"user": "u"}, headers=auth(key)) as r:
                    assert r.status == 200
            async with s.post(server.base + "/api/v1/billing/deposit", json={"user": FAULTY, "amount": 5}, headers=auth(key)) as r:
                assert r.status == 500
                error_id = ERROR_ID.match((await r.json())["error"]["message"]).group(1)  # type: ignore[union-attr]
        assert server.terminate() == 0
        log = server.log()
        assert error_id in log and log.count("Traceback (most recent call last)") == 1, log
        assert "aiohttp.access" not in log and "serving " not in log, log  # no info records at all
    finally:
        server.stop()


# -- never a key, a secret or a body --------------------------------------------------------

@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_no_line_holds_a_key_a_secret_or_a_body(db_path, tmp_path, log_format):
    key = create_key(db_path, "acme", "test")
    install_fault(db_path)
    server = await started(db_path, tmp_path, log_format)
    body_marker = f"bodymarker{uuid.uuid4().hex}"
    secret = f"whsec_{uuid.uuid4().hex}"
    try:
        async with ClientSession() as s:
            headers = {**auth(key), "X-Webhook-Secret": secret, "Stripe-Signature": f"t=1,v1={secret}"}
            deposit = {"user": "u", "amount": 5, "notes": body_marker, "metadata": {"webhookSecret": secret, "m": body_marker}}
            async with s.post(server.base + "/api/v1/billing/deposit", json=deposit, headers=headers) as r:
                assert r.status == 201
            async with s.post(server.base + "/api/v1/billing/deposit", json={**deposit, "user": FAULTY}, headers=headers) as r:
                assert r.status == 500  # a fault's traceback must not carry the body either
            status, _ = await zap(s, server, key, [{"method": "billing.deposit", "id": 1, "params": deposit},
                                                    {"method": body_marker, "id": 2}])
            assert status == 200
            # the key itself as an envelope id and as a user id, and a key in the query string
            status, _ = await zap(s, server, key, {"method": "billing.getBalance", "id": key, "params": {"user": key}})
            assert status == 200
            async with s.get(server.base + "/api/v1/billing/balance", params={"user": "u", "key": key, "secret": secret}) as r:
                assert r.status == 401
            async with s.post(server.base + "/api/v1/billing/deposit", data=f'{{"user": "u", "amount": 1, "notes": "{body_marker}",',
                              headers={**auth(key), "Content-Type": "application/json"}) as r:
                assert r.status == 400  # a body that does not parse
            # a bad key: the refused key is not logged either
            async with s.get(server.base + "/api/v1/billing/balance", params={"user": "u"}, headers=auth(key + "x")) as r:
                assert r.status == 401
        assert server.terminate() == 0
        log = server.log()
        assert len(access_lines(server, log_format)) == 7, log  # the seven requests: all there is to search
        token = key.split("_", 2)[2]
        for leaked in (token, body_marker, secret):
            assert leaked not in log, f"{leaked!r} reached the log:\n{log}"
        if log_format == "json":
            for line in log.splitlines():
                json.loads(line)
    finally:
        server.stop()
