"""Server faults: each gets an error id, logged once with its traceback (or its one-line cause)
and carried in the message the caller gets, so that an operator handed the caller's message
finds the log record with one search. The error kind and code stay the contract's
internal_error (-32000, REST 500); only the message grows: "internal error (error id <id>)"."""
from __future__ import annotations

import logging
import secrets

from ..errors import InternalError

log = logging.getLogger("zapbilling")

ERROR_ID_BYTES = 6
"""12 hex digits: unique enough among the faults one deployment logs, short enough to read out."""
MESSAGE = "internal error"


class Fault(InternalError):
    """The contract's internal error, with the id its log record carries."""

    def __init__(self, error_id: str):
        super().__init__(f"{MESSAGE} (error id {error_id})")
        self.error_id = error_id


def new_error_id() -> str:
    return secrets.token_hex(ERROR_ID_BYTES)


def fault(what: str, *args: object, traceback: bool = True) -> Fault:
    """Log the exception being handled as one fault (`what % args`, then its error id; with its
    traceback unless `traceback` is False, for a cause that is one line, such as a database that
    cannot be reached) and answer the Fault to raise. Call it inside the `except` block."""
    error_id = new_error_id()
    if traceback:
        log.exception(what + " (error id %s)", *args, error_id, extra={"error_id": error_id})
    else:
        log.error(what + " (error id %s)", *args, error_id, extra={"error_id": error_id})
    return Fault(error_id)


def error_id_of(exc: BaseException) -> str:
    """The error id of a Fault, "" for any other error."""
    return exc.error_id if isinstance(exc, Fault) else ""
