"""The layers import only downwards: the storage interface and the domain handlers load no
database driver and no backend (a second backend must be pluggable without them), and the
store and billing/ know nothing of HTTP."""
from __future__ import annotations

import pytest

import json
import subprocess
import sys

pytestmark = pytest.mark.sqlite_only("imports; no store")

BACKENDS = ("zapbilling.store.sqlite", "zapbilling.store.connection", "aiosqlite", "sqlite3", "asyncpg")
TRANSPORT = ("aiohttp", "zapbilling.transport")


def loaded_after(*modules: str) -> set[str]:
    """Modules loaded by importing `modules` in a fresh interpreter."""
    code = f"import sys; import {', '.join(modules)}; print(__import__('json').dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out))


def under(names: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes))


def test_importing_the_store_interface_and_billing_loads_no_backend():
    loaded = loaded_after("zapbilling.store", "zapbilling.billing")
    assert under(loaded, BACKENDS) == []


def test_billing_and_the_store_know_nothing_of_http():
    assert under(loaded_after("zapbilling.billing"), TRANSPORT) == []
    assert under(loaded_after("zapbilling.store.sqlite"), TRANSPORT) == []


def test_the_backend_loads_when_named():
    import zapbilling.store as store

    assert store.SqliteStore.__module__ == "zapbilling.store.sqlite"
