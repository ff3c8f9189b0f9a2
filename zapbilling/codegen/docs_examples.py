"""The API reference's examples, run for real: each schema method's example call
(schemas/examples/<stem>.json, loaded by examples.py, as the contract tests load it) is sent to
a server running in this process on a temporary SQLite database, once over REST and once over
ZAP, and the answers are what the API reference shows. An answer there is therefore one the
server gave, not one somebody typed.

The output must be byte-identical from run to run (`zapbilling gen docs --check` compares it
with the committed file), so the server runs on a clock that moves only when told: every call of
an example happens at a known instant. Ids are the one thing left random (they hold the
real creation millisecond and random bits); they are replaced, in order of first appearance,
by ids of the same shape. Nothing else is touched.
"""
from __future__ import annotations

import asyncio
import base64
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..config import Config
from ..registry import Command, Registry
from ..schema import Schema
from ..times import SECOND, parse_ts
from .examples import Example, ExamplesError, examples_path, resolve, saved
from .examples import load_examples as _load

START = parse_ts("2026-02-02T09:00:00Z")
"""The instant every example starts at; each call of an example (setup steps included) happens
one second after the one before it."""
ORG, MODE = "docs", "test"
ID = re.compile(r"\b([a-z]+)_([0-9a-f]{24})\b")
"""A server-made id (`tx_`, `hold_`, `mtr_`, ...): the prefix, then 24 hex digits."""
SIGNING_SECRET = re.compile(r"\bwhsec_[A-Za-z0-9+/]{32}")
"""A webhook endpoint's signing secret (random, as an id is): replaced by a stable one too."""


ExampleError = ExamplesError
"""What fails here: the examples file cannot be loaded (raised by .examples) or an example does
not run."""


@dataclass(frozen=True)
class Exchange:
    """One call as sent and as answered, ids already replaced."""
    params: dict[str, Any]
    """What was sent (refs filled in, absent optional params dropped)."""
    idempotency_key: str | None
    rest_status: int
    rest_body: Any
    zap_envelope: dict[str, Any]
    zap_status: int
    zap_body: Any


def load_examples(schema_path: Path, schema: Schema | None = None) -> dict[str, Example]:
    """Method name (without the service prefix, as Command.name) -> its example, setups expanded;
    loaded and checked strictly by .examples, as the contract tests load them."""
    return {wire.rpartition(".")[2]: example for wire, example in _load(schema_path, schema).items()}


class _Clock:
    """Microseconds; set by the runner before each call, never moving on its own."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> int:
        return self.now


def run_examples(registry: Registry, schema_path: Path) -> dict[str, Exchange]:
    """Wire name -> the example's exchange, for every method of the registry."""
    examples = load_examples(schema_path, registry.schema)
    if missing := [c.name for c in registry.commands.values() if c.name not in examples]:
        raise ExampleError(f"{examples_path(schema_path)}: no example for {', '.join(missing)}")
    return asyncio.run(_run_all(registry, examples))


async def _run_all(registry: Registry, examples: dict[str, Example]) -> dict[str, Exchange]:
    from aiohttp import ClientSession
    from aiohttp.test_utils import TestServer

    from ..app import STORE, create_app

    clock = _Clock()
    with tempfile.TemporaryDirectory(prefix="zapbilling-docs-") as tmp:
        config = Config(db=str(Path(tmp) / "docs.db"), durability="normal", sweep_seconds=10 * 86_400, clock=clock)
        app = create_app(config, registry)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            async with ClientSession() as session:
                runner = _Runner(registry, session, str(server.make_url("/")), app[STORE], clock)
                return {wire: await runner.exchange(c, examples[c.name]) for wire, c in registry.commands.items()}
        finally:
            await server.close()


class _Runner:
    def __init__(self, registry: Registry, session: Any, base: str, store: Any, clock: _Clock):
        self.registry, self.session, self.base, self.store, self.clock = registry, session, base, store, clock
        self.tenants = 0
        self.headers: dict[str, str] = {}

    async def exchange(self, command: Command, example: Example) -> Exchange:
        """The example run twice, each time in a fresh org of its own: over REST, then over ZAP."""
        key = f"example-{command.name}" if command.mutates else None
        params, rest_status, rest_body = await self._run(example, lambda p: self._rest(command, p, key))
        envelope: dict[str, Any] = {"method": command.wire, "id": 1, "params": params}
        if key:
            envelope["idempotencyKey"] = key
        zap_params, zap_status, zap_body = await self._run(example, lambda p: self._zap(dict(envelope, params=p)))
        rest_ids, zap_ids = _Ids(), _Ids()
        sent, rest_result = rest_ids.replace(params), rest_ids.replace(rest_body)
        zap_sent, zap_answer = zap_ids.replace(zap_params), zap_ids.replace(zap_body)
        if sent != zap_sent or zap_answer.get("result") != rest_result:
            raise ExampleError(f"{command.wire}: REST and ZAP answered the example differently: {rest_result!r} vs {zap_answer!r}")
        return Exchange(sent, key, rest_status, rest_result, dict(envelope, params=sent), zap_status, zap_answer)

    async def _run(self, example: Example, send: Any) -> tuple[dict[str, Any], int, Any]:
        self.tenants += 1
        self.clock.now = START
        _, secret = await self.store.create_key(f"{ORG}-{self.tenants}", MODE, "admin", self.clock.now)
        self.headers = {"Authorization": f"Bearer {secret}"}
        refs: dict[str, str] = {}
        for n, step in enumerate(example.setup, start=1):
            self.clock.now = START + n * SECOND
            envelope = {"method": f"{self._wire(step.method)}", "id": n, "params": resolve(step.params, refs)}
            status, body = await self._zap(envelope)
            if "result" not in body:
                raise ExampleError(f"setup step {step.method} {envelope['params']} failed: {body}")
            refs.update({name: saved(body["result"], f) for name, f in step.save.items()})
        self.clock.now = START + (len(example.setup) + 1) * SECOND
        params = resolve(example.params, refs)
        status, body = await send(params)
        failed = "error" in body if isinstance(body, dict) else False
        if failed or not 200 <= status < 300:
            raise ExampleError(f"the example call with {params} failed: {status} {body}")
        return params, status, body

    def _wire(self, method: str) -> str:
        return next(wire for wire, c in self.registry.commands.items() if c.name == method)

    async def _zap(self, envelope: dict[str, Any]) -> tuple[int, Any]:
        headers = dict(self.headers, **{"Content-Type": "application/json"})
        async with self.session.post(self.base + "api/v1/zap", data=json.dumps(envelope), headers=headers) as r:
            return r.status, json.loads(await r.read())

    async def _rest(self, command: Command, params: dict[str, Any], key: str | None) -> tuple[int, Any]:
        method, url, body = rest_request(command, params)
        headers = dict(self.headers)
        if key:
            headers["Idempotency-Key"] = key
        if body is not None:
            headers["Content-Type"] = "application/json"
        data = json.dumps(body) if body is not None else None
        async with self.session.request(method, self.base + url.lstrip("/"), data=data, headers=headers) as r:
            return r.status, json.loads(await r.read())


def rest_request(command: Command, params: dict[str, Any]) -> tuple[str, str, dict[str, Any] | None]:
    """(verb, path with its query string, JSON body or None) of a call on the method's route."""
    assert command.http is not None, f"{command.wire} has no REST route"
    http = command.http
    path, rest = http.path, dict(params)
    for name in http.path_params:
        path = path.replace("{" + name + "}", quote(str(rest.pop(name)), safe=""))
    if http.verb not in ("GET", "DELETE"):
        return http.verb, path, rest
    query = [(k, item) for k, v in rest.items() for item in (v if isinstance(v, list) else [v])]
    if query:
        path += "?" + "&".join(f"{quote(k)}={quote(_text(v), safe='/:')}" for k, v in query)
    return http.verb, path, None


def _text(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


class _Ids:
    """Server-made ids -> stable ids of the same shape (prefix, 11 hex digits of START's
    millisecond, 13 of a counter), numbered in the order they first appear."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def replace(self, value: Any) -> Any:
        text = json.dumps(value)
        return json.loads(SIGNING_SECRET.sub(self._stable, ID.sub(self._stable, text)))

    def _stable(self, m: re.Match[str]) -> str:
        if m.group(0) not in self.seen:
            n = len(self.seen) + 1
            if m.group(0).startswith("whsec_"):  # 24 bytes, as a real one: base64 of the counter's digits
                self.seen[m.group(0)] = "whsec_" + base64.b64encode(f"{n:024d}".encode()).decode()
            else:
                self.seen[m.group(0)] = f"{m.group(1)}_{START // 1000:011x}{n:013x}"
        return self.seen[m.group(0)]


__all__ = ["Exchange", "ExampleError", "START", "rest_request", "run_examples"]
