"""HTML out: the templates (Jinja2, autoescaped: a user id holding `<script>` is text), the
security headers every console answer carries, and the static files, read from the package
once at start-up and served from memory (nothing is fetched from elsewhere, ever)."""
from __future__ import annotations

import hashlib
import json
import mimetypes
from importlib import resources
from typing import Any

import jinja2
from aiohttp import web

from .money import major

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self';"
    " form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
"""No inline script or style, nothing from another origin, no framing."""

HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
PAGE_HEADERS = {**HEADERS, "Cache-Control": "no-store"}
"""A page shows a customer's money: no cache keeps it after sign-out."""

_PACKAGE = "zapbilling.transport.console"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(_PACKAGE, "templates"),
        autoescape=True,  # every template is HTML: escape everything not marked safe (nothing is)
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["money"] = major
    env.filters["pretty"] = pretty
    return env


def pretty(value: Any) -> str:
    """JSON for a person (metadata, an event's data): plain text, escaped by the template like
    any other (jinja's tojson would show `<` as `\\u003c`)."""
    return json.dumps(value, indent=1, ensure_ascii=False, sort_keys=True)


class Pages:
    """The templates, compiled once."""

    def __init__(self) -> None:
        self.env = environment()

    def render(self, name: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any) -> web.Response:
        html = self.env.get_template(name).render(**context)
        return web.Response(text=html, status=status, content_type="text/html", charset="utf-8", headers={**PAGE_HEADERS, **(headers or {})})


class Static:
    """The files under static/, by their path there, with an ETag; read once."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str, str]] = {}
        root = resources.files(_PACKAGE) / "static"
        self._walk(root, "")

    def _walk(self, folder: Any, prefix: str) -> None:
        for entry in folder.iterdir():
            name = prefix + entry.name
            if entry.is_dir():
                self._walk(entry, name + "/")
            elif not entry.name.endswith(".md"):
                body = entry.read_bytes()
                kind = mimetypes.guess_type(entry.name)[0] or "text/plain"
                if entry.name == "LICENSE":
                    kind = "text/plain"
                self.files[name] = (body, kind, '"' + hashlib.sha256(body).hexdigest()[:16] + '"')

    async def handle(self, request: web.Request) -> web.StreamResponse:
        found = self.files.get(request.match_info["path"])
        if found is None:
            raise web.HTTPNotFound(headers=HEADERS)
        body, kind, etag = found
        headers = {**HEADERS, "ETag": etag, "Cache-Control": "public, max-age=3600"}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, content_type=kind, charset="utf-8" if kind.startswith("text/") else None,
                            headers=headers)
