"""Every error kind the service can answer, with its REST status, ZAP code and the HTTP status
of a ZAP response, in one table. Handlers and the store raise these; transports render them."""
from __future__ import annotations

from typing import NamedTuple


class Kind(NamedTuple):
    rest_status: int
    zap_code: int
    zap_http_status: int


KINDS: dict[str, Kind] = {
    "parse_error": Kind(400, -32700, 400),
    "invalid_request": Kind(400, -32600, 400),
    "method_not_found": Kind(404, -32601, 200),
    "invalid_params": Kind(400, -32602, 200),
    "unauthorized": Kind(401, -32001, 401),
    "forbidden": Kind(403, -32003, 403),
    "not_found": Kind(404, -32004, 200),
    "conflict": Kind(409, -32009, 200),
    "insufficient_funds": Kind(402, -32002, 200),
    "spend_cap_reached": Kind(402, -32005, 200),
    "payload_too_large": Kind(413, -32013, 413),
    "unsupported_media_type": Kind(415, -32015, 415),
    "rate_limited": Kind(429, -32029, 429),
    "internal_error": Kind(500, -32000, 200),
}


class ApiError(Exception):
    """An answer the caller gets instead of a result. `param` names the offending field."""

    kind = "internal_error"

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param

    @property
    def info(self) -> Kind:
        return KINDS[self.kind]


class ParseError(ApiError):
    kind = "parse_error"


class InvalidRequest(ApiError):
    kind = "invalid_request"


class MethodNotFound(ApiError):
    kind = "method_not_found"


class InvalidParams(ApiError):
    kind = "invalid_params"


class Unauthorized(ApiError):
    kind = "unauthorized"


class Forbidden(ApiError):
    kind = "forbidden"


class NotFound(ApiError):
    kind = "not_found"


class Conflict(ApiError):
    kind = "conflict"


class InsufficientFunds(ApiError):
    kind = "insufficient_funds"


class SpendCapReached(ApiError):
    """A hold that would take a user's spending this period past one of their spend caps."""

    kind = "spend_cap_reached"


class PayloadTooLarge(ApiError):
    kind = "payload_too_large"


class UnsupportedMediaType(ApiError):
    kind = "unsupported_media_type"


class RateLimited(ApiError):
    """More requests of one API key than its token bucket allows. The transports send
    `retry_after` (whole seconds, at least 1) as the `Retry-After` header."""

    kind = "rate_limited"

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class InternalError(ApiError):
    kind = "internal_error"
