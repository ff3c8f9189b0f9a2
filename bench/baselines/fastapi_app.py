"""Peer baseline: the getBalance read as a FastAPI team would write it, on uvicorn with uvloop
and httptools, one worker, no access log: typed query parameters, the key checked by a
dependency (one dict lookup), a pydantic response model, one aiosqlite execute_fetchall.

    python -m bench.baselines.fastapi_app --db PATH --port N --key KEY
"""
# No `from __future__ import annotations`: FastAPI reads these annotations at run time.
import argparse
from contextlib import asynccontextmanager
from typing import Annotated, AsyncIterator, Optional

import aiosqlite
import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from pydantic import BaseModel

from .common import BALANCE_SQL, balance_answer, bearer, key_table

KEYS: dict = {}
DB_PATH = ""


class Balance(BaseModel):
    user: str
    currency: str
    balance: int
    holds: int
    available: int


def tenant_of(authorization: Annotated[Optional[str], Header()] = None) -> int:
    found = KEYS.get(bearer(authorization))
    if found is None:
        raise HTTPException(status_code=401, detail="unauthorized")
    return found


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    db = await aiosqlite.connect(DB_PATH, isolation_level=None)
    await db.execute("PRAGMA busy_timeout = 10000")
    app.state.db = db
    yield
    await db.close()


app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)


@app.get("/api/v1/billing/balance", response_model=Balance)
async def get_balance(request: Request, user: str, tenant: Annotated[int, Depends(tenant_of)], currency: str = "usd"):
    rows = await request.app.state.db.execute_fetchall(BALANCE_SQL, (tenant, user, currency))
    return balance_answer(user, currency, rows)


@app.get("/healthz")
async def health() -> dict:
    return {"ok": True}


def main() -> None:
    global DB_PATH
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--key", required=True)
    args = ap.parse_args()
    DB_PATH = args.db
    KEYS.update(key_table(args.db, args.key))
    uvicorn.run(app, host="127.0.0.1", port=args.port, loop="uvloop", http="httptools", workers=1, access_log=False,
                log_level="warning")


if __name__ == "__main__":
    main()
