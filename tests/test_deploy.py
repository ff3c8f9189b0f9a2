"""deploy/: the systemd unit and the Prometheus scrape configuration (issue 20, item 7).

- The unit passes `systemd-analyze verify` with no complaint about it (the tool only warns, and
  exits 0, on a misspelt key or a bad value: so its output is read too), once ExecStart names a
  zapbilling that exists (this venv's, in a temporary copy); a deliberately broken copy fails.
- The unit is hardened as promised, stops within a bound above the graceful shutdown's, and its
  environment is one that `zapbilling serve` takes: started with it (the database under a
  temporary state directory), a server answers /readyz there on the unit's port.
- The scrape configuration scrapes /metrics with a bearer key from a file: read as Prometheus
  reads it, it scrapes a real server.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from aiohttp import ClientSession

from procs import SHUTDOWN_TIMEOUT, TIMEOUT, ServerProcess, child_env, create_key, free_port, zapbilling_cmd
from zapbilling.config import ENV
from zapbilling.limits import env_name, limit_fields

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNIT = DEPLOY / "zapbilling.service"
INSTALLED = "/opt/zapbilling/bin/zapbilling"  # the unit's ExecStart, as shipped
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
KNOWN_VARIABLES = set(ENV.values()) | {env_name(f) for f in limit_fields()}

needs_systemd = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed here")


def directives(text: str) -> dict[str, list[str]]:
    """KEY -> every value it is given, in order (a unit may repeat a key: SystemCallFilter)."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def unit_environment() -> dict[str, str]:
    return dict(v.split("=", 1) for v in directives(UNIT.read_text())["Environment"])


def zapbilling_binary() -> str:
    binary = Path(sys.executable).with_name("zapbilling")
    if not binary.exists():
        pytest.skip("no installed zapbilling script next to this interpreter to point ExecStart at")
    return str(binary)


def verify(tmp_path: Path, text: str) -> tuple[int, list[str]]:
    """systemd-analyze verify on `text` as a unit file: its status and the lines it says about
    this unit (other units of the host may have complaints of their own)."""
    unit = tmp_path / "zapbilling.service"
    unit.write_text(text)
    r = subprocess.run([str(SYSTEMD_ANALYZE), "verify", str(unit)], capture_output=True, text=True, timeout=TIMEOUT)
    return r.returncode, [line for line in (r.stdout + r.stderr).splitlines() if "zapbilling.service" in line]


@needs_systemd
def test_systemd_analyze_verify_passes_the_unit_with_a_real_binary(tmp_path):
    text = UNIT.read_text()
    assert text.count(f"ExecStart={INSTALLED} serve\n") == 1
    assert verify(tmp_path, text.replace(INSTALLED, zapbilling_binary())) == (0, [])


@needs_systemd
@pytest.mark.parametrize("broken, complaint", [
    (("DynamicUser=yes", "DynamcUser=yes"), "Unknown key 'DynamcUser'"),
    (("ProtectSystem=strict", "ProtectSystem=strictest"), "strictest"),
    (("Type=exec", "Type=bogus"), "bogus"),
])
def test_systemd_analyze_verify_finds_a_broken_copy(tmp_path, broken, complaint):
    old, new = broken
    text = UNIT.read_text().replace(INSTALLED, zapbilling_binary())
    assert text.count(old + "\n") == 1
    status, said = verify(tmp_path, text.replace(old + "\n", new + "\n"))
    assert said and complaint in said[0], (status, said)


@needs_systemd
def test_systemd_analyze_verify_refuses_the_shipped_unit_where_zapbilling_is_not_installed(tmp_path):
    if os.path.exists(INSTALLED):
        pytest.skip(f"{INSTALLED} exists here")
    status, said = verify(tmp_path, UNIT.read_text())
    assert status != 0 and any(f"Command {INSTALLED} is not executable" in line for line in said), said


def test_the_unit_is_hardened_and_stops_within_a_bound_above_the_graceful_shutdown():
    d = directives(UNIT.read_text())
    one = {k: v[-1] for k, v in d.items()}
    assert (one["DynamicUser"], one["ProtectSystem"], one["StateDirectory"]) == ("yes", "strict", "zapbilling")
    assert (one["ProtectHome"], one["PrivateTmp"], one["PrivateDevices"], one["NoNewPrivileges"]) == ("yes",) * 4
    assert one["CapabilityBoundingSet"] == "" and one["UMask"] == "0077"
    assert unit_environment()["ZAPBILLING_DB"].startswith("/var/lib/zapbilling/")  # the StateDirectory
    assert one["Restart"] == "on-failure"
    # SIGTERM to the supervisor alone (it passes it to its workers once), SIGKILL only after
    # the stop timeout, which leaves the graceful shutdown its whole bound.
    assert (one["KillMode"], one["KillSignal"]) == ("mixed", "SIGTERM")
    assert int(one["TimeoutStopSec"]) > SHUTDOWN_TIMEOUT


def test_every_variable_the_deploy_files_set_is_one_zapbilling_reads():
    env_file = (DEPLOY / "zapbilling.env").read_text()
    named = set(unit_environment()) | {line.lstrip("#").split("=", 1)[0] for line in env_file.splitlines()
                                       if line.lstrip("#").startswith("ZAPBILLING_")}
    assert named and named <= KNOWN_VARIABLES, named - KNOWN_VARIABLES
    assert "EnvironmentFile=-/etc/zapbilling/zapbilling.env" in UNIT.read_text().splitlines()


async def test_serve_takes_the_units_environment(tmp_path):
    """The unit's Environment= lines given to `zapbilling serve` (the state directory moved
    under tmp_path, and a free port if the unit's is taken): it creates its database there and
    answers /readyz on the unit's host and port, with the unit's log format."""
    env = unit_environment()
    state = tmp_path / "var-lib-zapbilling"
    state.mkdir(mode=0o700)
    env["ZAPBILLING_DB"] = env["ZAPBILLING_DB"].replace("/var/lib/zapbilling", str(state))
    env["ZAPBILLING_PORT"] = str(free_port())
    log = tmp_path / "serve.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([*zapbilling_cmd(), "serve"], env=child_env(**env), stdout=subprocess.DEVNULL, stderr=err)
    try:
        async with ClientSession() as s:
            for _ in range(int(TIMEOUT / 0.05)):
                assert proc.poll() is None, log.read_text()
                try:
                    async with s.get(f"http://{env['ZAPBILLING_HOST']}:{env['ZAPBILLING_PORT']}/readyz") as r:
                        assert (r.status, await r.json()) == (200, {"ok": True})
                        break
                except OSError:
                    await asyncio.sleep(0.05)
            else:
                pytest.fail(f"serve did not answer with the unit's environment:\n{log.read_text()}")
        assert os.path.isfile(env["ZAPBILLING_DB"])
    finally:
        proc.terminate()
        assert proc.wait(timeout=TIMEOUT) == 0, log.read_text()
    if env.get("ZAPBILLING_LOG_FORMAT") == "json":
        import json

        lines = [line for line in log.read_text().splitlines() if line.strip()]
        assert lines and all(isinstance(json.loads(line), dict) for line in lines), lines


def scrape_job() -> dict:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    return job


def test_the_scrape_configuration_reads_metrics_with_a_bearer_key_from_a_file():
    job = scrape_job()
    assert (job["job_name"], job["scheme"], job["metrics_path"]) == ("zapbilling", "http", "/metrics")
    auth = job["authorization"]
    assert auth["type"] == "Bearer" and set(auth) == {"type", "credentials_file"}  # never the key itself
    assert os.path.isabs(auth["credentials_file"])
    env = unit_environment()
    assert job["static_configs"] == [{"targets": [f"{env['ZAPBILLING_HOST']}:{env['ZAPBILLING_PORT']}"]}]


@pytest.mark.sqlite_only("one server on a file is enough to scrape; the store does not matter")
async def test_a_scrape_as_configured_gets_the_metrics_of_a_real_server(tmp_path):
    """What Prometheus does with the configuration: the key read from credentials_file (a read
    key, as the file's comment makes), `Authorization: Bearer <key>`, GET metrics_path."""
    job = scrape_job()
    db = str(tmp_path / "zapbilling.db")
    key_file = tmp_path / "zapbilling.key"
    key_file.write_text(create_key(db, "ops", "live", scope="read") + "\n")
    server = await ServerProcess(db, tmp_path).start_ready()
    try:
        credentials = key_file.read_text().strip()  # Prometheus trims the file's trailing newline
        url = f"{job['scheme']}://127.0.0.1:{server.port}{job['metrics_path']}"
        async with ClientSession() as s:
            async with s.get(server.base + "/api/v1/billing/balance", params={"user": "u", "currency": "usd"},
                             headers={"Authorization": f"Bearer {credentials}"}) as r:
                assert r.status == 200  # a request for the scrape to count
            async with s.get(url, headers={"Authorization": f"{job['authorization']['type']} {credentials}"}) as r:
                body = await r.text()
                assert r.status == 200, body
                assert r.headers["Content-Type"].startswith("text/plain"), r.headers
                assert "\nzapbilling_requests_total{" in body, body[:500]
            async with s.get(url) as r:  # and without the key, nothing
                assert r.status == 401
    finally:
        assert server.terminate() == 0, server.log()
