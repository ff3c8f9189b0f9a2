"""What a handler knows about the call it serves: never the request or the connection."""
from __future__ import annotations

from dataclasses import dataclass

from .limits import Limits
from .store import Idempotency, Principal, Store


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs twice as much, once per call
class Context:
    principal: Principal
    store: Store
    now: int
    """Microseconds since the epoch, read once per call so that one call sees one instant."""
    limits: Limits
    """The deployment's quotas (meters per org and mode, rules per meter, ...)."""
    request_id: object = None
    idempotency: Idempotency | None = None

    @property
    def tenant(self) -> int:
        return self.principal.tenant

    @property
    def key_id(self) -> str:
        """The calling key, recorded on every ledger and credit journal row the call writes."""
        return self.principal.key_id


class Unchanged(dict):  # type: ignore[type-arg]
    """The result of a mutating call that wrote nothing (recordUsage with amount <= 0): REST
    answers it with 200 instead of the route's creation status. Encodes as a plain map."""
