"""What every generated method stands on: envelopes, codecs, retries and idempotency keys.

A mutating call gets one idempotency key when it is made and sends that same key on every
retry, so a retry after a timeout, a 5xx or an in-band internal error returns the stored
answer instead of charging twice. A call that changes nothing is retried only when the
connection failed, since it is safe to repeat but a slow server should not be hammered.
Any call refused as rate_limited (HTTP 429: nothing of it ran) is retried after the seconds of
its `Retry-After` header, within the same bound on retries; a wait longer than
`max_retry_after` is not taken: the RateLimited error is raised at once instead.
"""
from __future__ import annotations

import asyncio
import enum
import json
import math
import os
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgpack
from pydantic import BaseModel, TypeAdapter, ValidationError

from .errors import ApiConnectionError, ZapBillingError, error_from_envelope

ZAP_PATH = "/api/v1/zap"
CONTENT_TYPES = {"msgpack": "application/msgpack", "json": "application/json"}
INTERNAL_ERROR = -32000
RATE_LIMITED_STATUS = 429
# Failures where the request never reached a handler: safe to retry any call.
CONNECTION_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)


@dataclass(frozen=True)
class Call:
    """One logical method call; its idempotency key outlives every retry of it."""

    method: str
    params: dict[str, Any]
    result: Any
    mutates: bool
    idempotency_key: str | None = None

    def envelope(self) -> dict[str, Any]:
        env: dict[str, Any] = {"method": self.method, "id": uuid.uuid4().hex, "params": self.params}
        if self.idempotency_key:
            env["idempotencyKey"] = self.idempotency_key
        return env


def make_call(method: str, params: dict[str, Any], result: Any, mutates: bool, idempotency_key: str | None) -> Call:
    if mutates and idempotency_key is None:
        idempotency_key = uuid.uuid4().hex
    return Call(method, {k: plain(v) for k, v in params.items() if v is not None}, result, mutates, idempotency_key)


def plain(value: Any) -> Any:
    """Models and enums as the wire wants them; None inside a model means absent."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def parse_result(tp: Any, value: Any) -> Any:
    adapter = _ADAPTERS.get(tp)
    if adapter is None:
        adapter = _ADAPTERS[tp] = TypeAdapter(tp)
    return adapter.validate_python(value)


@dataclass
class Settings:
    base_url: str
    api_key: str
    codec: str
    timeout: float
    max_retries: int
    backoff: float
    max_backoff: float
    max_retry_after: float = 60.0
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def make(cls, base_url: str, api_key: str | None, codec: str, timeout: float, max_retries: int,
             backoff: float, max_backoff: float, max_retry_after: float = 60.0) -> "Settings":
        key = api_key or os.environ.get("ZAPBILLING_API_KEY")
        if not key:
            raise ValueError("no API key: pass api_key= or set ZAPBILLING_API_KEY")
        if codec not in CONTENT_TYPES:
            raise ValueError(f"codec must be one of {', '.join(CONTENT_TYPES)}, not {codec!r}")
        if max_retries < 0:
            raise ValueError("max_retries must be 0 or more")
        if max_retry_after < 0:
            raise ValueError("max_retry_after must be 0 or more")
        ctype = CONTENT_TYPES[codec]
        headers = {"Authorization": f"Bearer {key}", "Content-Type": ctype, "Accept": ctype}
        return cls(base_url.rstrip("/"), key, codec, timeout, max_retries, backoff, max_backoff, max_retry_after, headers)

    def encode(self, body: Any) -> bytes:
        if self.codec == "msgpack":
            return msgpack.packb(body, use_bin_type=True)
        return json.dumps(body, separators=(",", ":")).encode()

    def delay(self, attempt: int) -> float:
        """Exponential backoff with jitter: half fixed, half random, so clients that failed
        together do not all come back at the same instant."""
        ceiling = min(self.max_backoff, self.backoff * 2**attempt)
        return ceiling / 2 + random.uniform(0, ceiling / 2)


class Exchange:
    """One request (a call or a batch) and what its answer means, independent of sync or async."""

    def __init__(self, settings: Settings, calls: list[Call], batch: bool):
        self.settings = settings
        self.calls = calls
        self.batch = batch
        self.mutates = any(c.mutates for c in calls)
        self.envelopes = [c.envelope() for c in calls]
        self.body = settings.encode(self.envelopes if batch else self.envelopes[0])
        self.attempt = 0

    def retry_after_exception(self, exc: Exception) -> float | None:
        """Seconds to wait before retrying, or None to give up."""
        if self.attempt >= self.settings.max_retries:
            return None
        if isinstance(exc, CONNECTION_ERRORS) or (self.mutates and isinstance(exc, httpx.TransportError)):
            return self._next()
        return None

    def retry_after_response(self, response: httpx.Response) -> float | None:
        """Any call refused as rate limited is retried after its Retry-After (nothing of it
        ran). A mutating call is retried after a 5xx or an in-band internal error (its key
        makes the retry safe); anything else is the answer."""
        if response.status_code == RATE_LIMITED_STATUS and self.attempt < self.settings.max_retries:
            wait = _retry_after(response)
            if wait is None:  # no usable header (a proxy's 429, say): back off as after a failure
                return self._next()
            if wait > self.settings.max_retry_after:
                return None
            self.attempt += 1
            return wait
        if not self.mutates or self.attempt >= self.settings.max_retries:
            return None
        if response.status_code >= 500:
            return self._next()
        entries = self._entries(self._body(response))
        if entries and any(_error_code(e) == INTERNAL_ERROR for e in entries):
            return self._next()
        return None

    def _next(self) -> float:
        self.attempt += 1
        return self.settings.delay(self.attempt - 1)

    def answers(self, response: httpx.Response) -> list[Any]:
        """Per-call results or error instances, in call order. Raises when the whole request
        was refused, or when the body is not a ZAP answer (a proxy's error page, say)."""
        body = self._body(response)
        if self.batch and isinstance(body, dict) and isinstance(body.get("error"), dict):
            raise error_from_envelope(body["error"], None, response.status_code)  # the whole batch was refused
        entries = self._entries(body)
        if entries is None:
            raise self._tagged(ZapBillingError(
                f"HTTP {response.status_code} with a body that is not a ZAP answer",
                request_id=self.envelopes[0]["id"], status=response.status_code,
            ))
        return [self._one(call, env, entry, response.status_code) for call, env, entry in zip(self.calls, self.envelopes, entries)]

    @staticmethod
    def _body(response: httpx.Response) -> Any:
        ctype = response.headers.get("Content-Type", "")
        try:
            return msgpack.unpackb(response.content, raw=False) if "msgpack" in ctype else json.loads(response.content)
        except ValueError:
            return None

    def _entries(self, body: Any) -> list[dict[str, Any]] | None:
        """The per-call answers, or None when `body` is not shaped like a ZAP answer."""
        entries = body if self.batch else [body]
        if not isinstance(entries, list) or len(entries) != len(self.calls):
            return None
        if not all(isinstance(e, dict) and ("result" in e or isinstance(e.get("error"), dict)) for e in entries):
            return None
        return entries

    def _one(self, call: Call, envelope: dict[str, Any], answer: dict[str, Any], status: int) -> Any:
        if "error" in answer:
            return error_from_envelope(answer["error"], envelope["id"], status)
        try:
            return parse_result(call.result, answer.get("result"))
        except ValidationError as exc:
            return ZapBillingError(f"the answer to {call.method} does not match the schema: {exc}", request_id=envelope["id"], status=status)

    def _tagged(self, err: ZapBillingError) -> ZapBillingError:
        """Give the caller the key of a single mutating call whose outcome is unknown, so that
        it can retry the same logical call later without risking a second charge."""
        if not self.batch:
            err.idempotency_key = self.calls[0].idempotency_key
        return err

    def gave_up(self, exc: Exception) -> ApiConnectionError:
        tries = self.attempt + 1
        err = ApiConnectionError(f"no answer after {tries} attempt{'s' * (tries > 1)}: {exc!r}", request_id=self.envelopes[0]["id"])
        return self._tagged(err)  # type: ignore[return-value]


def _retry_after(response: httpx.Response) -> float | None:
    """The Retry-After header's seconds (the service sends whole seconds; an HTTP date is not
    understood and counts as absent)."""
    try:
        seconds = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _error_code(entry: dict[str, Any]) -> Any:
    error = entry.get("error")
    return error.get("code") if isinstance(error, dict) else None


def first_or_raise(answers: list[Any]) -> Any:
    if isinstance(answers[0], ZapBillingError):
        raise answers[0]
    return answers[0]


class SyncTransport:
    def __init__(self, settings: Settings, http: httpx.Client | None = None):
        self.settings = settings
        self.http = http or httpx.Client(base_url=settings.base_url, timeout=settings.timeout)

    def call(self, call: Call) -> Any:
        return first_or_raise(self.send([call], batch=False))

    def send(self, calls: list[Call], batch: bool = True) -> list[Any]:
        ex = Exchange(self.settings, calls, batch)
        while True:
            try:
                response = self.http.post(ZAP_PATH, content=ex.body, headers=self.settings.headers)
            except httpx.TransportError as exc:
                wait = ex.retry_after_exception(exc)
                if wait is None:
                    raise ex.gave_up(exc) from exc
                time.sleep(wait)
                continue
            wait = ex.retry_after_response(response)
            if wait is not None:
                time.sleep(wait)
                continue
            return ex.answers(response)

    def close(self) -> None:
        self.http.close()


class AsyncTransport:
    def __init__(self, settings: Settings, http: httpx.AsyncClient | None = None):
        self.settings = settings
        self.http = http or httpx.AsyncClient(base_url=settings.base_url, timeout=settings.timeout)

    async def call(self, call: Call) -> Any:
        return first_or_raise(await self.send([call], batch=False))

    async def send(self, calls: list[Call], batch: bool = True) -> list[Any]:
        ex = Exchange(self.settings, calls, batch)
        while True:
            try:
                response = await self.http.post(ZAP_PATH, content=ex.body, headers=self.settings.headers)
            except httpx.TransportError as exc:
                wait = ex.retry_after_exception(exc)
                if wait is None:
                    raise ex.gave_up(exc) from exc
                await asyncio.sleep(wait)
                continue
            wait = ex.retry_after_response(response)
            if wait is not None:
                await asyncio.sleep(wait)
                continue
            return ex.answers(response)

    async def aclose(self) -> None:
        await self.http.aclose()
