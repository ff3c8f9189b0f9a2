"""For tests/test_console.py: a headless Chromium from Debian's packages driven by Selenium
through Debian's chromium-driver, an HTTP client that signs in to the console as a browser
does (cookies, the form's CSRF token), and money written out independently of the console's
own code (Decimal, and the minor digits of the few currencies the tests use, from ISO 4217)."""
from __future__ import annotations

import re
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, CookieJar

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
)
"""The background connections Chromium makes by itself are refused on a closed network (and are
not wanted in a test): these flags turn them off."""

DIGITS = {"usd": 2, "eur": 2, "jpy": 0, "bhd": 3}
"""ISO 4217 minor digits of the currencies the tests use (written here, not read from the console)."""


def money(amount: int, currency: str) -> str:
    """What the console must show for `amount` minor units: 1,234.56 USD."""
    digits = DIGITS[currency]
    return f"{Decimal(amount).scaleb(-digits):,.{digits}f} {currency.upper()}"


def chromium(profile: Path, width: int = 1280, height: int = 900) -> Any:
    """A headless Chromium with a fresh profile in `profile`. Raises, never skips, when the
    browser or its driver is missing or cannot start: `.ci/run` installs both."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            raise RuntimeError(f"{path} is missing: install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    except Exception as exc:
        shutil.rmtree(profile, ignore_errors=True)
        raise RuntimeError(f"headless Chromium did not start ({CHROMIUM}, {CHROMEDRIVER}): {exc}") from exc


CSRF = re.compile(r'name="csrf" value="([^"]*)"')


def csrf_of(html: str) -> str:
    m = CSRF.search(html)
    assert m, f"no CSRF token in the page:\n{html[:2000]}"
    return m.group(1)


class Browserless:
    """The console over plain HTTP, as a browser without JavaScript uses it."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.session = ClientSession(cookie_jar=CookieJar(unsafe=True))  # unsafe: keep cookies of 127.0.0.1

    async def close(self) -> None:
        await self.session.close()

    async def get(self, path: str, **kw: Any) -> tuple[int, str, Any]:
        async with self.session.get(self.base + path, allow_redirects=False, **kw) as r:
            return r.status, await r.text(), r

    async def post(self, path: str, data: dict[str, str], **kw: Any) -> tuple[int, str, Any]:
        async with self.session.post(self.base + path, data=data, allow_redirects=False, **kw) as r:
            return r.status, await r.text(), r

    async def sign_in(self, key: str) -> Any:
        status, html, _ = await self.get("/console/signin")
        assert status == 200, html
        status, body, r = await self.post("/console/signin", {"key": key, "csrf": csrf_of(html)})
        assert status == 303 and r.headers["Location"] == "/console/accounts", (status, body)
        return r

    def cookie(self, name: str) -> str | None:
        for c in self.session.cookie_jar:
            if c.key == name:
                return c.value
        return None
