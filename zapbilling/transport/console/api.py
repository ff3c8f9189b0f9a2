"""The console's one way to read data: the API's own call path (transport/calls.py) with the
signed-in key's principal, so that every number on a page is what the same call over REST or
ZAP answers, with the API's validation, org and mode scoping and errors. Never the store
directly."""
from __future__ import annotations

from typing import Any, Mapping

from ...errors import ApiError
from ...store import Principal
from ..admission import Admission
from ..calls import Caller
from ..rest import text_params


class NotAvailable(Exception):
    """An operation whose handler does not answer yet (it raises the internal error 'not built
    yet' until its part of the service lands): the page says so instead of failing."""


class Api:
    def __init__(self, caller: Caller, principal: Principal, admission: Admission) -> None:
        self.caller = caller
        self.principal = principal
        self.admission = admission

    async def call(self, wire: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """`billing.<name>` with typed params, as the API would run it; raises its ApiError
        (RateLimited too: each call is paid from the key's bucket as a batch entry is)."""
        command = self.caller.registry.commands[wire]
        self.admission.spend(self.principal.key_id)
        return await self.caller.call(command, self.principal, dict(params or {}), query=True)

    async def call_text(self, wire: str, text: Mapping[str, str], **typed: Any) -> dict[str, Any]:
        """As `call`, with the params a form sent as text parsed as a REST query string is (an
        empty field is absent), plus `typed` ones."""
        command = self.caller.registry.commands[wire]
        wanted = {f.name for f in command.fields}
        raw = text_params(command.fields, {k: v for k, v in text.items() if k in wanted and k not in typed}, {})
        self.admission.spend(self.principal.key_id)
        return await self.caller.call(command, self.principal, raw | typed, query=True)

    async def optional(self, wire: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """As `call`, for an operation that may not be built yet: NotAvailable when its handler
        answers the internal error (the only internal error a read answers by design)."""
        try:
            return await self.call(wire, params)
        except ApiError as exc:
            if exc.kind == "internal_error":
                raise NotAvailable(exc.message) from None
            raise
