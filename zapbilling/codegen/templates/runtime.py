"""What every generated method stands on: envelopes, codecs, retries and idempotency keys.

A mutating call gets one idempotency key when it is made and sends that same key on every
retry, so a retry after a timeout, a 5xx or an in-band internal error returns the stored
answer instead of charging twice. A call that changes nothing is retried only when the
connection failed, since it is safe to repeat but a slow server should not be hammered.
"""
from __future__ import annotations

import asyncio
import enum
import json
import os
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgpack
from pydantic import BaseModel, TypeAdapter

from .errors import ApiConnectionError, ZapBillingError, error_from_envelope

ZAP_PATH = "/api/v1/zap"
CONTENT_TYPES = {"msgpack": "application/msgpack", "json": "application/json"}
INTERNAL_ERROR = -32000
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
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def make(cls, base_url: str, api_key: str | None, codec: str, timeout: float, max_retries: int,
             backoff: float, max_backoff: float) -> "Settings":
        key = api_key or os.environ.get("ZAPBILLING_API_KEY")
        if not key:
            raise ValueError("no API key: pass api_key= or set ZAPBILLING_API_KEY")
        if codec not in CONTENT_TYPES:
            raise ValueError(f"codec must be one of {', '.join(CONTENT_TYPES)}, not {codec!r}")
        if max_retries < 0:
            raise ValueError("max_retries must be 0 or more")
        ctype = CONTENT_TYPES[codec]
        headers = {"Authorization": f"Bearer {key}", "Content-Type": ctype, "Accept": ctype}
        return cls(base_url.rstrip("/"), key, codec, timeout, max_retries, backoff, max_backoff, headers)

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
        self.refused: ZapBillingError | None = None

    def retry_after_exception(self, exc: Exception) -> float | None:
        """Seconds to wait before retrying, or None to give up."""
        if self.attempt >= self.settings.max_retries:
            return None
        if isinstance(exc, CONNECTION_ERRORS) or (self.mutates and isinstance(exc, httpx.TransportError)):
            return self._next()
        return None

    def retry_after_response(self, status: int, answers: list[Any] | None) -> float | None:
        if not self.mutates or self.attempt >= self.settings.max_retries:
            return None
        if status >= 500 or any(isinstance(a, ZapBillingError) and a.code == INTERNAL_ERROR for a in answers or ()):
            return self._next()
        return None

    def _next(self) -> float:
        self.attempt += 1
        return self.settings.delay(self.attempt - 1)

    def decode(self, response: httpx.Response) -> list[Any] | None:
        """Per-call results or error instances, in call order; None when the answer is not ours."""
        ctype = response.headers.get("Content-Type", "")
        try:
            body = msgpack.unpackb(response.content, raw=False) if "msgpack" in ctype else json.loads(response.content)
        except ValueError:
            return None
        if self.batch and isinstance(body, dict) and isinstance(body.get("error"), dict):
            self.refused = error_from_envelope(body["error"], None, response.status_code)
            return [self.refused] * len(self.calls)  # the whole batch was refused
        answers = body if self.batch else [body]
        if not isinstance(answers, list) or len(answers) != len(self.calls):
            return None
        return [self._one(call, env, answer, response.status_code) for call, env, answer in zip(self.calls, self.envelopes, answers)]

    def _one(self, call: Call, envelope: dict[str, Any], answer: Any, status: int) -> Any:
        if not isinstance(answer, dict):
            return ZapBillingError(f"unexpected answer to {call.method}", request_id=envelope["id"], status=status)
        if "error" in answer:
            return error_from_envelope(answer["error"], envelope["id"], status)
        return parse_result(call.result, answer.get("result"))

    def unusable(self, response: httpx.Response) -> ZapBillingError:
        return ZapBillingError(
            f"HTTP {response.status_code} with a body that is not a ZAP answer",
            request_id=self.envelopes[0]["id"], status=response.status_code,
        )

    def gave_up(self, exc: Exception) -> ApiConnectionError:
        tries = self.attempt + 1
        return ApiConnectionError(f"no answer after {tries} attempt{'s' * (tries > 1)}: {exc!r}", request_id=self.envelopes[0]["id"])


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
            answers = ex.decode(response)
            wait = ex.retry_after_response(response.status_code, answers)
            if wait is not None:
                time.sleep(wait)
                continue
            if answers is None:
                raise ex.unusable(response)
            if ex.refused:
                raise ex.refused
            return answers

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
            answers = ex.decode(response)
            wait = ex.retry_after_response(response.status_code, answers)
            if wait is not None:
                await asyncio.sleep(wait)
                continue
            if answers is None:
                raise ex.unusable(response)
            if ex.refused:
                raise ex.refused
            return answers

    async def aclose(self) -> None:
        await self.http.aclose()
