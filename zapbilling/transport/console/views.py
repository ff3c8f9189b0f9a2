"""The console's pages: each one a handful of API calls (api.py) with the signed-in key, rendered
server-side. Read-only: the only POSTs are sign-in and sign-out (session.py)."""
from __future__ import annotations

import functools
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Any, Awaitable, Callable
from urllib.parse import urlencode

from aiohttp import web

from ...errors import ApiError, RateLimited
from ...store import KeyRevoked, Principal, Store
from ...times import DAY, SECOND, format_ts
from ..admission import Admission
from ..calls import Caller
from . import COOKIE_PATH
from .api import Api, NotAvailable
from .money import MINOR_DIGITS
from .render import PAGE_HEADERS, Pages
from .session import CSRF_COOKIE, SESSION_COOKIE, SESSION_SECONDS, SIGNIN_FORM_SECONDS, Sessions

log = logging.getLogger("zapbilling")

LEDGER_PAGE = 50
"""Ledger rows per page of the account page (listTransactions' `limit`)."""
ACCOUNTS_PAGE = 50
SMALL_PAGE = 20
"""Holds, journal rows and events per page."""
WINDOWS = ("day", "hour")
PERIOD_DAYS = (1, 7, 30, 90)
"""The chart's period picker: the last N days up to the end of the current window."""
DEFAULT_DAYS = {"day": 30, "hour": 1}

LEDGER_FILTERS = ("currency", "type", "tag", "createdAfter", "createdBefore")

SIGNIN = COOKIE_PATH + "/signin"


@dataclass(frozen=True)
class Visit:
    """One signed-in page request: the API as its key, and what the layout needs."""

    api: Api
    principal: Principal
    signout_token: str
    now: int

    def layout(self, section: str) -> dict[str, Any]:
        return {"org": self.principal.org, "mode": self.principal.mode, "scope": self.principal.scope,
                "signout_token": self.signout_token, "section": section}


View = Callable[[web.Request, Visit], Awaitable[web.StreamResponse]]


def _cookie(response: web.StreamResponse, request: web.Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, path=COOKIE_PATH, httponly=True, samesite="Strict", secure=request.secure)


def _forget(response: web.StreamResponse, request: web.Request) -> None:
    response.del_cookie(SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="Strict", secure=request.secure)


def _redirect(location: str) -> web.Response:
    """A 303 to `location` (a Response, not aiohttp's HTTPSeeOther: cookies are set on it)."""
    return web.Response(status=303, headers={**PAGE_HEADERS, "Location": location})


def _link(path: str, **params: Any) -> str:
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return path + ("?" + urlencode(kept) if kept else "")


class Console:
    def __init__(self, caller: Caller, store: Store, admission: Admission, sessions: Sessions, pages: Pages) -> None:
        self.caller, self.store, self.admission, self.sessions, self.pages = caller, store, admission, sessions, pages

    # -- signing in and out ------------------------------------------------------------------
    async def signin_form(self, request: web.Request, message: str = "", status: int = 200) -> web.Response:
        if self.sessions.open(request.cookies.get(SESSION_COOKIE)) and not message:
            return _redirect(COOKIE_PATH + "/accounts")
        value = secrets.token_urlsafe(24)
        notice = {"expired": "Your session ended: sign in again.", "out": "Signed out."}.get(request.query.get("why", ""), "")
        response = self.pages.render("signin.html", status=status, token=self.sessions.signin_token(value), message=message,
                                     notice=notice)
        _cookie(response, request, CSRF_COOKIE, value, SIGNIN_FORM_SECONDS)
        return response

    async def signin(self, request: web.Request) -> web.StreamResponse:
        """No rate limit of its own: a key is 192 random bits (store keys.py), so guessing one
        is hopeless at any rate, and a wrong key here costs what the API's own call with a wrong
        key costs (one digest and one indexed lookup)."""
        form = await request.post()
        value = request.cookies.get(CSRF_COOKIE)
        token = form.get("csrf")
        if not value or not isinstance(token, str) or not self.sessions.same(self.sessions.signin_token(value), token):
            return await self.signin_form(request, "The sign-in form expired or did not come from this console: try again.", 403)
        key = form.get("key")
        key = key.strip() if isinstance(key, str) else ""
        try:
            principal = await self._principal(key) if key else None
        except Exception as exc:
            return self._unavailable(exc)
        if principal is None:
            return await self.signin_form(request, "That API key is not valid (unknown or revoked).", 401)
        cookie, _ = self.sessions.seal(key)
        response = _redirect(COOKIE_PATH + "/accounts")
        _cookie(response, request, SESSION_COOKIE, cookie, SESSION_SECONDS)
        response.del_cookie(CSRF_COOKIE, path=COOKIE_PATH)
        return response

    async def signout(self, request: web.Request) -> web.StreamResponse:
        session = self.sessions.open(request.cookies.get(SESSION_COOKIE))
        form = await request.post()
        token = form.get("csrf")
        if session is None:
            return _redirect(SIGNIN + "?why=out")
        if not isinstance(token, str) or not self.sessions.same(self.sessions.signout_token(session), token):
            return self.pages.render("error.html", status=403, title="Forbidden", message="The sign-out form did not come from this console.",
                                     org="", section="")
        response = _redirect(SIGNIN + "?why=out")
        _forget(response, request)
        return response

    async def _principal(self, key: str) -> Principal | None:
        """The key's principal as the API sees it, checked against the database now (a key
        remembered by a server's cache may have been revoked by another)."""
        principal = await self.store.authenticate(key)
        if principal is not None and self.store.key_unchecked():
            try:
                await self.store.check_key()
            except KeyRevoked:
                return None
        return principal

    # -- the signed-in pages -----------------------------------------------------------------
    def page(self, view: View) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        @functools.wraps(view)
        async def signed_in(request: web.Request) -> web.StreamResponse:
            session = self.sessions.open(request.cookies.get(SESSION_COOKIE))
            if session is None:
                return _redirect(SIGNIN)
            try:
                principal = await self.store.authenticate(session.key)
            except Exception as exc:  # the database cannot be read (PostgreSQL down): say so, as /readyz would
                return self._unavailable(exc)
            if principal is None:
                return self._expired(request)
            visit = Visit(Api(self.caller, principal, self.admission), principal, self.sessions.signout_token(session), self.caller.clock())
            try:
                async with self.admission.holding(principal.key_id):
                    response = await view(request, visit)
                    if self.store.key_unchecked():
                        await self.store.check_key()
                return response
            except KeyRevoked:
                return self._expired(request)
            except ApiError as exc:
                if exc.info.rest_status == 401:
                    return self._expired(request)
                status = exc.info.rest_status
                headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
                return self.pages.render("error.html", status=status, headers=headers,
                                         title="Not found" if status == 404 else "Cannot show this", message=exc.message,
                                         **visit.layout(""))

        return signed_in

    def _unavailable(self, exc: Exception) -> web.Response:
        """A key that cannot be checked: 503, one log line naming the cause (never the key)."""
        log.error("console: an API key could not be checked: %s: %s", type(exc).__name__, exc)
        return self.pages.render("error.html", status=503, title="Unavailable", message="The database cannot be read just now: try again shortly.",
                                 org="", section="")

    def _expired(self, request: web.Request) -> web.StreamResponse:
        response = _redirect(SIGNIN + "?why=expired")
        _forget(response, request)
        return response

    async def home(self, request: web.Request) -> web.StreamResponse:
        return _redirect(COOKIE_PATH + "/accounts")

    async def accounts(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        q = request.query
        currency = (q.get("currency") or "usd").strip().lower()
        message = ""
        typed: dict[str, Any] = {"limit": ACCOUNTS_PAGE}
        running_out = q.get("maxAvailable", "").strip()
        if running_out:
            amount = minor_units(running_out, currency)
            if amount is None:
                message = f"“available at most” must be an amount in {currency.upper()}, such as 10 or 10.50"
            else:
                typed["maxAvailable"] = amount
        answer = await visit.api.call_text("billing.listAccounts", {"currency": currency, "startingAfter": q.get("startingAfter", "")}, **typed)
        accounts = answer["accounts"]
        next_link = _link(COOKIE_PATH + "/accounts", currency=currency, maxAvailable=running_out,
                          startingAfter=accounts[-1]["user"]) if answer["hasMore"] and accounts else ""
        return self.pages.render("accounts.html", answer=answer, accounts=accounts, currency=currency, running_out=running_out,
                                 message=message, next_link=next_link, paged=bool(q.get("startingAfter")),
                                 first_link=_link(COOKIE_PATH + "/accounts", currency=currency, maxAvailable=running_out),
                                 **visit.layout("accounts"))

    async def account(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        q = request.query
        user = q.get("user", "")
        if not user:
            return _redirect(COOKIE_PATH + "/accounts")
        api = visit.api
        balances = await api.call("billing.getBalanceAll", {"user": user})
        filters = {name: q.get(name, "").strip() for name in LEDGER_FILTERS}
        ledger = await api.call_text("billing.listTransactions", {**filters, "startingAfter": q.get("startingAfter", "")},
                                     user=user, limit=LEDGER_PAGE)
        rows = ledger["transactions"]
        base = {"user": user, **filters}
        ledger_next = _link(COOKIE_PATH + "/account", **base, startingAfter=rows[-1]["transactionId"]) if ledger["hasMore"] and rows else ""
        holds = await api.call_text("billing.listHolds", {"startingAfter": q.get("holdsAfter", "")}, user=user, limit=SMALL_PAGE)
        grants = await api.call("billing.listCreditGrants", {"userId": user})
        journal = await api.call_text("billing.listCreditTransactions", {"startingAfter": q.get("journalAfter", "")},
                                      userId=user, limit=SMALL_PAGE)
        usage = await self._usage(q, visit, user)
        currencies = [b["currency"] for b in balances["balances"]] or ["usd"]
        preview_currency = q.get("invoiceCurrency") or ("usd" if "usd" in currencies else currencies[0])
        month_start = format_ts(visit.now)[:8] + "01"
        today = format_ts(visit.now)[:10]
        preview = await api.call("billing.invoicePreview", {"userId": user, "periodStart": month_start, "periodEnd": today,
                                                             "currency": preview_currency})
        preview_links = {c: _link(COOKIE_PATH + "/account", user=user, invoiceCurrency=c) for c in currencies if c != preview["currency"]}
        deliveries = await self._deliveries(q, visit, user)
        return self.pages.render(
            "account.html", user=user, balances=balances["balances"], ledger=ledger, rows=rows, filters=filters,
            ledger_next=ledger_next, ledger_first=_link(COOKIE_PATH + "/account", **base) if q.get("startingAfter") else "",
            holds=holds, grants=grants["grants"], journal=journal, usage=usage, preview=preview, preview_links=preview_links, month_start=month_start, today=today,
            holds_next=_link(COOKIE_PATH + "/account", user=user, holdsAfter=holds["holds"][-1]["holdId"]) if holds["hasMore"] else "",
            journal_next=_link(COOKIE_PATH + "/account", user=user, journalAfter=journal["transactions"][-1]["id"]) if journal["hasMore"] else "",
            deliveries=deliveries, **visit.layout("accounts"),
        )

    async def _deliveries(self, q: Any, visit: Visit, user: str) -> dict[str, Any] | None:
        """The webhook deliveries about this account: its newest events (listEvents' userId, a page
        of SMALL_PAGE, older ones by `eventsAfter`), each with where it stands at each endpoint
        (getEvent's log, its latest entry per endpoint; the event's page has the whole log).
        None while those operations do not answer (the section says so)."""
        params: dict[str, Any] = {"userId": user, "limit": SMALL_PAGE}
        if q.get("eventsAfter"):
            params["startingAfter"] = q["eventsAfter"]
        status: dict[str, list[dict[str, Any]]] = {}
        try:
            page = await visit.api.optional("billing.listEvents", params)
            for e in page["events"]:
                try:
                    status[e["id"]] = latest_per_endpoint((await visit.api.optional("billing.getEvent", {"id": e["id"]}))["deliveries"])
                except ApiError as exc:
                    if exc.info.rest_status != 404:
                        raise  # 404: purged past its retention since listEvents answered; left out
        except NotAvailable:
            return None
        events = [e for e in page["events"] if e["id"] in status]
        return {"events": events, "status": status,
                "next": _link(COOKIE_PATH + "/account", user=user, eventsAfter=events[-1]["id"]) if page["hasMore"] and events else "",
                "first": _link(COOKIE_PATH + "/account", user=user) if q.get("eventsAfter") else ""}

    async def _usage(self, q: Any, visit: Visit, user: str) -> dict[str, Any]:
        """The usage chart's data: one meter's series for this user over the picked period."""
        meters = (await visit.api.call("billing.listMeters", {"limit": 1000}))["meters"]
        window = q.get("window") if q.get("window") in WINDOWS else "day"
        try:
            days = int(q.get("days", ""))
        except ValueError:
            days = DEFAULT_DAYS[window]
        days = days if days in PERIOD_DAYS else DEFAULT_DAYS[window]
        chosen = q.get("meter") or (meters[0]["id"] if meters else "")
        out: dict[str, Any] = {"meters": meters, "meter": chosen, "window": window, "days": days, "windows": WINDOWS,
                               "periods": PERIOD_DAYS, "series": None, "message": ""}
        if not chosen:
            return out
        size = DAY if window == "day" else 3600 * SECOND
        end = (visit.now // size + 1) * size  # the end of the current window: its events are in
        start = end - days * DAY
        try:
            series = await visit.api.call("billing.getMeterEventsSeries", {
                "meterId": chosen, "userId": user, "periodStart": format_ts(start), "periodEnd": format_ts(end), "windowSize": window})
        except ApiError as exc:
            if exc.info.rest_status != 400:
                raise  # an unknown meter id (or another org's) is 404, as in the API
            out["message"] = exc.message
            return out
        out["series"] = series
        out["points"] = {"start": [w["start"] for w in series["windows"]], "value": [w["value"] for w in series["windows"]],
                         "count": [w["eventCount"] for w in series["windows"]], "meter": series["meterName"],
                         "aggregation": series["aggregationType"]}
        return out

    async def meters(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        q = request.query
        meters = await visit.api.call_text("billing.listMeters", {"startingAfter": q.get("startingAfter", "")}, limit=100)
        rules = await visit.api.call("billing.listPricingRules", {})
        names = {m["id"]: m["name"] for m in meters["meters"]}
        listed = meters["meters"]
        return self.pages.render("meters.html", meters=listed, rules=rules["rules"], names=names,
                                 next_link=_link(COOKIE_PATH + "/meters", startingAfter=listed[-1]["id"]) if meters["hasMore"] else "",
                                 **visit.layout("meters"))

    async def webhooks(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        q = request.query
        endpoints: dict[str, Any] | None
        events: dict[str, Any] | None
        unavailable = []
        try:
            endpoints = await visit.api.optional("billing.listWebhookEndpoints")
        except NotAvailable:
            endpoints = None
            unavailable.append("endpoints")
        try:
            params: dict[str, Any] = {"limit": SMALL_PAGE}
            if q.get("startingAfter"):
                params["startingAfter"] = q["startingAfter"]
            events = await visit.api.optional("billing.listEvents", params)
        except NotAvailable:
            events = None
            unavailable.append("events")
        listed = events["events"] if events else []
        deliveries: dict[str, list[dict[str, Any]]] = {}
        for event in listed:
            try:
                deliveries[event["id"]] = (await visit.api.optional("billing.getEvent", {"id": event["id"]}))["deliveries"]
            except NotAvailable:
                break
        return self.pages.render("webhooks.html", endpoints=endpoints, events=listed if events is not None else None, deliveries=deliveries,
                                 next_link=_link(COOKIE_PATH + "/webhooks", startingAfter=listed[-1]["id"]) if events and events.get("hasMore") else "",
                                 **visit.layout("webhooks"))

    async def event(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        try:
            event = await visit.api.optional("billing.getEvent", {"id": request.match_info["id"]})
        except NotAvailable:
            event = None
        return self.pages.render("event.html", event=event, **visit.layout("webhooks"))


def latest_per_endpoint(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An event's delivery log (getEvent's `deliveries`, oldest first, a pending delivery's next
    attempt last) as where it stands at each endpoint: the last entry of each, in the order the
    endpoints first appear."""
    latest: dict[str, dict[str, Any]] = {}
    for entry in log:
        latest[entry["endpointId"]] = entry  # a key keeps its first place when its value is replaced
    return list(latest.values())


_AMOUNT = re.compile(r"(-?)(\d{1,19})(?:\.(\d*))?\Z")


def minor_units(text: str, currency: str) -> int | None:
    """"10.50" USD -> 1050, exactly (no float); None when it is not an amount in that currency
    (more decimals than its minor unit has, or not a number)."""
    digits = MINOR_DIGITS.get(currency, 2)
    m = _AMOUNT.match(text.replace(",", "").strip())
    if m is None or len(m.group(3) or "") > digits:
        return None
    value: int = int(m.group(2)) * 10**digits + int((m.group(3) or "").ljust(digits, "0") or 0)
    return -value if m.group(1) else value
