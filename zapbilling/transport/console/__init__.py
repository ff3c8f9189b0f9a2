"""The console: `GET /console`, a read-only web page where an operator signs in with an API key
(a read key is enough) and looks at a customer's money and usage.

Every number on a page comes from the API's own handlers through the shared call path
(api.py -> transport/calls.py) with the signed-in key's principal: what the console shows is
exactly what REST and ZAP answer, scoped and validated the same way (another org's id is 404).
The session is an encrypted cookie (session.py: why, and how workers share it); pages are
rendered on the server from Jinja2 templates (render.py), work without JavaScript; the usage
chart is uPlot, vendored under static/uplot (its README says how it was obtained).

The console's pages meet the signed-in key's bounds as its API calls do (transport/admission.py
`holding` and `spend`): a page holds one of the key's in-flight slots and one shared slot while it
is made, and every API call on it takes a token from the key's bucket, so a key cannot pass its
rate limit or in-flight bound by asking through the console. A page over the rate is a 429 page
with Retry-After. Sign-in and sign-out take no slot (see views.py `signin`).

Modules: mount.py (the routes), session.py (cookie, CSRF), api.py (the call path), views.py (routes), render.py
(templates, headers, static files), money.py (minor units -> major units, exactly).
"""
from __future__ import annotations

import os
import secrets

COOKIE_PATH = "/console"
"""Where the console is mounted, and the path its cookies are scoped to."""
SECRET_ENV = "ZAPBILLING_CONSOLE_SECRET"
"""The secret the session cookies are encrypted with (session.py); random per `serve` when unset."""


def share_with_workers() -> None:
    """Called by a supervisor before it starts its workers: one secret for all of them (they
    inherit its environment), so that a cookie made by one worker is read by every other. Here,
    not in session.py, so that the supervisor imports nothing of the console (nor aiohttp)."""
    os.environ.setdefault(SECRET_ENV, secrets.token_urlsafe(32))
