"""The served OpenAPI document works with the generators people feed it to (issue 15, item 9):
`openapi-python-client` (PyPI) builds a client from it with no complaint but the one it always
makes about msgpack bodies, and that client deposits, reads the balance and reports errors against
a live server, over REST and ZAP; `openapi-typescript` (npm, pinned in tests/node) turns it into
types without a warning, and they type-check.

The tools are installed by the test command (the `test` extra; `npm ci --prefix tests/node`).
Where one is missing the test fails in CI (CI=true) and skips elsewhere."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import REGISTRY

pytestmark = pytest.mark.sqlite_only("the OpenAPI document; no store")

ROOT = Path(__file__).resolve().parent.parent
NODE = ROOT / "tests" / "node"
IN_CI = os.environ.get("CI", "").lower() in ("true", "1")
PACKAGE = "zapbilling_openapi_client"
"""Not `zapbilling_client`: that is the repository's own client, installed alongside."""


def require(ok: bool, why: str) -> None:
    """CI installs every tool this module runs, so a missing one there is a broken test command."""
    if ok:
        return
    if IN_CI:
        pytest.fail(why)
    pytest.skip(why)


async def run(*cmd: str | Path, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """In a thread: the server under test answers on this test's event loop meanwhile."""
    return await asyncio.to_thread(subprocess.run, [str(c) for c in cmd], capture_output=True, text=True,
                                   env=env, timeout=timeout, cwd=ROOT)


@pytest.fixture
async def document(api, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """The document as the server serves it, saved where the generators can read it."""
    status, doc = await api.rest("GET", "/api/v1/openapi.json")
    assert status == 200, doc
    path = tmp_path / "openapi.json"
    path.write_text(json.dumps(doc))
    return path, doc


# -- openapi-python-client --------------------------------------------------------------------------

CONFIG = {"project_name_override": "zapbilling-openapi-client", "package_name_override": PACKAGE, "post_hooks": []}
"""No post hooks: they would run ruff from PATH, which formats the code and tests nothing."""

MSGPACK_WARNING = re.compile(r"WARNING parsing (?P<verb>[A-Z]+) (?P<path>\S+) within \S+\.\n\nUnsupported content type application/msgpack\n")
BANNERS = ("Generating ", "Warning(s) encountered while generating. Client was generated, but some pieces may be missing",
           "If you believe this was a mistake or this tool is missing a feature you need, please open an issue at ")


def bodied_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    """(VERB, path) of every operation with a request body: each offers msgpack, which the
    generator does not support and says so, once per operation."""
    return {(verb.upper(), path) for path, ops in doc["paths"].items() for verb, op in ops.items() if "requestBody" in op}


def generator_complaints(output: str, doc: dict[str, Any]) -> list[str]:
    """What openapi-python-client printed besides its banners and the expected msgpack warnings.
    A message (header, detail) starts at column 0; the JSON it quotes starts with a brace and is
    indented inside, so every other column-0 line is a message nobody expected."""
    warned = [(m["verb"], m["path"]) for m in MSGPACK_WARNING.finditer(output)]
    complaints = [] if sorted(warned) == sorted(bodied_operations(doc)) else [f"msgpack warnings for {sorted(warned)}"]
    rest = MSGPACK_WARNING.sub("", output)
    return complaints + [line for line in rest.splitlines()
                         if line and not line[0].isspace() and line[0] not in "{}[]" and not line.startswith(BANNERS)]


CLIENT_SCRIPT = """
import json, sys
from zapbilling_openapi_client import AuthenticatedClient
from zapbilling_openapi_client.api.billing import deposit, get_balance, get_hold
from zapbilling_openapi_client.api.zap import zap
from zapbilling_openapi_client.models import (
    DepositJsonBody, GetBalanceEnvelope, GetBalanceParams, GetMeterEnvelope, GetMeterParams)

base, key, user = sys.argv[1:4]
out = {}
with AuthenticatedClient(base_url=base, token=key) as client:
    made = deposit.sync_detailed(client=client, body=DepositJsonBody(user=user, amount=1000), idempotency_key="gen-1")
    out["deposit"] = [made.status_code, type(made.parsed).__name__, made.parsed.to_dict()]
    balance = get_balance.sync(client=client, user=user)
    out["balance"] = [type(balance).__name__, balance.to_dict()]
    missing = get_hold.sync_detailed(client=client, id="hold_nope")
    out["missing"] = [missing.status_code, type(missing.parsed).__name__, missing.parsed.to_dict()]
    answer = zap.sync(client=client, body=GetBalanceEnvelope(method="billing.getBalance", id=1, params=GetBalanceParams(user=user)))
    out["zap"] = [type(answer).__name__, answer.to_dict()]
    batch = zap.sync(client=client, body=[
        GetBalanceEnvelope(method="billing.getBalance", id="a", params=GetBalanceParams(user=user, currency="eur")),
        GetMeterEnvelope(method="billing.getMeter", id="b", params=GetMeterParams(id="mtr_nope")),
    ])
    out["batch"] = [[type(a).__name__, type(a.error).__name__, a.to_dict()] for a in batch]
print(json.dumps(out))
"""


async def test_openapi_python_client_builds_a_client_that_works_against_the_server(api, document, tmp_path: Path):
    require(importlib.util.find_spec("openapi_python_client") is not None,
            "openapi-python-client is not installed (pip install -e '.[test]')")
    path, doc = document
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    gen = tmp_path / "gen"
    r = await run(sys.executable, "-m", "openapi_python_client", "generate", "--path", path, "--meta", "none",
                  "--output-path", gen / PACKAGE, "--config", config)
    output = r.stdout + r.stderr
    assert r.returncode == 0, output[-6000:]
    assert not generator_complaints(output, doc), "\n".join(generator_complaints(output, doc)) + "\n\n" + output[-6000:]

    user = "gen/alice"
    env = {**os.environ, "PYTHONPATH": str(gen)}
    r = await run(sys.executable, "-c", CLIENT_SCRIPT, api.base, api.key, user, env=env, timeout=60)
    assert r.returncode == 0, r.stderr[-6000:]
    out = json.loads(r.stdout)

    status, kind, made = out["deposit"]
    assert (status, kind, made["amount"], made["user"], made["type"]) == (201, "DepositResult", 1000, user, "deposit")
    assert out["balance"] == ["Balance", {"user": user, "currency": "usd", "balance": 1000, "holds": 0, "available": 1000}]
    status, kind, missing = out["missing"]
    assert (status, kind) == (404, "Error")
    assert missing["error"] | {"message": ""} == {"type": "api-error", "code": "not_found", "message": "", "param": "id"}
    kind, answer = out["zap"]
    assert kind == "ZapAnswer" and answer["id"] == 1 and answer["result"]["balance"] == 1000 and "error" not in answer
    (k1, e1, first), (k2, e2, second) = out["batch"]
    assert (k1, e1, first["id"], first["result"]["currency"], first["result"]["balance"]) == ("ZapAnswer", "Unset", "a", "eur", 0)
    assert (k2, e2, second["id"], "result" in second) == ("ZapAnswer", "ZapErrorObject", "b", False)
    assert second["error"]["code"] == -32004 and second["error"]["data"] == {"kind": "not_found", "param": "id"}


# -- openapi-typescript -----------------------------------------------------------------------------

TS_BIN = NODE / "node_modules" / ".bin" / "openapi-typescript"
TSC = NODE / "node_modules" / ".bin" / "tsc"
TS_BANNERS = ("✨ openapi-typescript ", "🚀 ")


def installed_matches_pins() -> bool:
    """node_modules is installed only when missing: one from an older package.json is stale."""
    pins = json.loads((NODE / "package.json").read_text())["devDependencies"]
    for name, version in pins.items():
        manifest = NODE / "node_modules" / name / "package.json"
        if not manifest.exists() or json.loads(manifest.read_text())["version"] != version:
            return False
    return True


def envelope_name(method: str) -> str:
    return f"{method[0].upper()}{method[1:]}Envelope"


async def test_openapi_typescript_generates_types_without_a_warning(document, tmp_path: Path):
    require(shutil.which("node") is not None, "node is not installed")
    require(TS_BIN.exists() and TSC.exists(), "tests/node is not installed (npm ci --prefix tests/node)")
    require(installed_matches_pins(), "tests/node/node_modules is not what package.json pins (npm ci --prefix tests/node)")
    path, _ = document
    out = tmp_path / "zapbilling.ts"
    r = await run(TS_BIN, path, "-o", out, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    unexpected = [line for line in (r.stdout + r.stderr).splitlines() if line.strip() and not line.startswith(TS_BANNERS)]
    assert not unexpected, r.stdout + r.stderr
    types = out.read_text()
    for c in REGISTRY.commands.values():
        assert f'operations["{c.name}"]' in types, c.name
        assert f"{envelope_name(c.name)}: {{" in types and f"params?: components[\"schemas\"][\"{c.name[0].upper()}{c.name[1:]}Params\"]" in types, c.name
    assert 'error: components["schemas"]["ZapErrorObject"]' in types

    r = await run(TSC, "--noEmit", "--strict", "--target", "es2022", out, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
