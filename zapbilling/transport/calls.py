"""The one call path both transports share: permission, params, idempotency, handler.

REST and ZAP differ only in how they find the command and its raw params and how they render
the answer; everything that decides the answer happens here, so the two cannot disagree.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..context import Context
from ..errors import ApiError, Conflict, Forbidden, InvalidRequest
from ..models import NUL_REFUSED, params_error
from ..registry import Command, Registry
from ..store import Idempotency, KeyReused, KeyRevoked, Principal, Store
from ..limits import Limits
from ..times import Clock
from .auth import key_refused
from .faults import fault

log = logging.getLogger("zapbilling")

MAX_IDEMPOTENCY_KEY = 255
KEY_REUSED = "idempotency key was already used with different parameters"


@dataclass(frozen=True)
class Caller:
    registry: Registry
    store: Store
    clock: Clock
    limits: Limits = Limits()

    async def call(
        self,
        command: Command,
        principal: Principal,
        raw: dict[str, Any],
        *,
        query: bool = False,
        idempotency_key: str | None = None,
        request_id: Any = None,
    ) -> dict[str, Any]:
        """Run one command. Raises ApiError for every failure a caller may see; anything else
        is a server fault: logged once with its traceback and an error id, and answered as the
        internal error whose message carries that id (faults.py). The log names the method, not
        the request id (the caller's text): the access line of the request carries both."""
        try:
            if command.mutates and principal.scope != "admin":  # authorize, written out: it runs per call
                authorize(command, principal)
            try:
                params = command.validate(raw)
            except ValidationError:  # the first pass refused it: the full model answers (models.py: the first pass)
                try:
                    params = command.validate_fully(raw)
                except ValidationError as exc:
                    raise params_error(exc, query=query, raw=raw) from None
            idempotency = None
            if idempotency_key and command.mutates:
                idempotency = await self._idempotency(command, principal, params, idempotency_key)
            ctx = Context(principal, self.store, self.clock(), self.limits, request_id, idempotency)
            return await command.handler(ctx, params)
        except ApiError:
            raise
        except KeyReused:  # a concurrent first use of the key, with other params, claimed it first
            raise Conflict(KEY_REUSED, param="idempotencyKey") from None
        except KeyRevoked:  # the key, let in from a cache, was found revoked (store.authenticate)
            raise key_refused() from None
        except Exception:
            raise fault("%s failed", command.wire) from None

    async def _idempotency(self, command: Command, principal: Principal, params: Any, key: str) -> Idempotency:
        if len(key) > MAX_IDEMPOTENCY_KEY:
            raise InvalidRequest(f"idempotency key must be at most {MAX_IDEMPOTENCY_KEY} characters", param="idempotencyKey")
        if "\x00" in key:  # as every text a call carries (models.NO_NUL): PostgreSQL stores none
            raise InvalidRequest(NUL_REFUSED.format("idempotency key"), param="idempotencyKey")
        canonical = json.dumps([command.wire, params.model_dump(mode="json")], sort_keys=True, separators=(",", ":"))
        idempotency = Idempotency(key, hashlib.sha256(canonical.encode()).hexdigest())
        # The store claims the key atomically with the write; this early look also covers a
        # call that ends up writing nothing, which must still not reuse a key with other params.
        seen = await self.store.idempotency_fingerprint(principal.tenant, key)
        if seen is not None and seen != idempotency.fingerprint:
            raise Conflict(KEY_REUSED, param="idempotencyKey")
        return idempotency


def authorize(command: Command, principal: Principal) -> None:
    """A read-only key may not call a command that changes data. Caller.call tests this same
    condition before calling (it runs per call): a rule added here goes there too."""
    if command.mutates and principal.scope != "admin":
        raise Forbidden(f"this API key is read-only and {command.wire} changes data: use an admin key")
