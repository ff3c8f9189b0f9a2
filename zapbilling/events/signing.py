"""Standard Webhooks signatures: `v1,<base64 HMAC-SHA256 over "<id>.<timestamp>.<body>">`, keyed
by the bytes the secret's base64 part (after `whsec_`) decodes to, so that any Standard Webhooks
library verifies them (tests/test_webhook_delivery.py verifies with the `standardwebhooks`
package). During a rotation a delivery carries one signature per secret, space-separated: a
receiver still holding the old secret and one holding the new both verify it."""
from __future__ import annotations

import base64
import hashlib
import hmac

PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    """The HMAC key a `whsec_...` secret names (padding added: the libraries accept it unpadded)."""
    text = secret[len(PREFIX):] if secret.startswith(PREFIX) else secret
    return base64.b64decode(text + "=" * (-len(text) % 4))


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def signatures(secrets: list[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: one `v1,...` per secret, space-separated."""
    return " ".join(signature(secret_key(s), msg_id, timestamp, body) for s in secrets)
