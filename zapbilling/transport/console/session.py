"""The console's session and its CSRF tokens.

Where the key lives. The operator signs in with an API key; every later page must call the API's
handlers as that key, checked as the API checks it (`store.authenticate`: its org, its mode, its
scope, not revoked). The key is not kept in the clear anywhere outside this process's memory
for the request: the session cookie holds it *encrypted and authenticated* (Fernet, from the
`cryptography` package: AES-128-CBC and HMAC-SHA256, with its issue time inside), so

- any worker of `serve --workers N` (and any server sharing the secret) can answer any page:
  nothing is kept per process, nothing is added to the database;
- the browser holds only ciphertext: the key cannot be read from the cookie, the page, the
  access log (which writes no header and no body) or the browser's storage;
- every page authenticates the key again, so revoking it (`zapbilling keys revoke`) ends every
  console session of that key at its next page;
- a session lasts at most SESSION_SECONDS from sign-in (the issue time is checked on every
  request), whatever the cookie's own expiry says.

Signing out deletes the cookie, and with it the only copy the browser had. The server keeps no
list of sessions, so a copy of the cookie taken before sign-out would work until its
SESSION_SECONDS are up (or the key is revoked, or the secret changes): the cookie is HttpOnly
(no script can read it), SameSite=Strict and scoped to /console, and Secure when the request
came over TLS.

The secret. `ZAPBILLING_CONSOLE_SECRET` when set (any text; servers behind one load balancer
share it, and sessions then survive restarts). Otherwise a random one made when the process
starts; `serve --workers N` makes it once in the supervisor and hands it to its workers through
their environment (`share_with_workers`, in __init__.py), so all workers read the same cookies. A restart then
signs everyone out, which is safe.

CSRF. Sign-in and sign-out are the only POSTs. The sign-in form carries HMAC(secret, a random
value) whose value is also in a short-lived HttpOnly SameSite=Strict cookie (a signed double
submit: a page of another site can neither read the cookie nor compute the HMAC); the sign-out
form carries HMAC(secret, a random value kept inside the encrypted session). Both compared in
constant time.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken

from . import SECRET_ENV

SESSION_COOKIE = "zb_console"
CSRF_COOKIE = "zb_console_signin"
SESSION_SECONDS = 8 * 3600
"""A session ends 8 hours after sign-in: a working day, then the key is asked for again."""
SIGNIN_FORM_SECONDS = 3600
"""How long a sign-in form may be left open before it is submitted."""


@dataclass(frozen=True)
class Session:
    key: str
    """The API key the operator signed in with: never rendered, never logged."""
    nonce: str
    """Random, per session: what the sign-out form's token is made from."""


class Sessions:
    """Makes and reads session cookies and CSRF tokens with one secret."""

    def __init__(self, secret: str | None = None) -> None:
        text = secret if secret is not None else os.environ.get(SECRET_ENV) or secrets.token_urlsafe(32)
        material = hashlib.sha256(b"zapbilling console\x00" + text.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(material))
        self._mac_key = hashlib.sha256(b"zapbilling console csrf\x00" + text.encode()).digest()

    # -- the session -------------------------------------------------------------------------
    def seal(self, key: str) -> tuple[str, Session]:
        session = Session(key, secrets.token_urlsafe(16))
        token = self._fernet.encrypt(json.dumps({"k": session.key, "n": session.nonce}).encode())
        return token.decode("ascii"), session

    def open(self, cookie: str | None) -> Session | None:
        """The session in a cookie, or None when it is absent, forged, made with another
        secret or older than SESSION_SECONDS."""
        if not cookie:
            return None
        try:
            data = json.loads(self._fernet.decrypt(cookie.encode("ascii"), ttl=SESSION_SECONDS))
            return Session(str(data["k"]), str(data["n"]))
        except (InvalidToken, UnicodeError, ValueError, KeyError, TypeError):
            return None

    # -- CSRF --------------------------------------------------------------------------------
    def _mac(self, purpose: str, value: str) -> str:
        return hmac.new(self._mac_key, f"{purpose}\x00{value}".encode(), hashlib.sha256).hexdigest()

    def signin_token(self, cookie_value: str) -> str:
        return self._mac("signin", cookie_value)

    def signout_token(self, session: Session) -> str:
        return self._mac("signout", session.nonce)

    @staticmethod
    def same(expected: str, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(expected.encode(), given.encode())
