"""`GET /metrics`: the Prometheus text exposition (format 0.0.4) of every worker of this server.

The route is behind the admission gates like every other but /healthz and /readyz: any valid
key, of either scope, may read it (Prometheus sends it as `authorization: Bearer ...`). This
process flushes its own tallies first, so what it counted up to this request is in the answer;
the other workers' numbers are as of their last flush (tally.FLUSH_SECONDS).
"""
from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from . import families
from .tally import Sampler

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def metrics_route(sampler: Sampler) -> Any:
    """The route's own work (an admission.Admitted): flush, then expose."""

    async def metrics(request: web.Request, principal: Any, body: bytes) -> web.Response:
        sampler.flush()
        if families.MULTIPROCESS:
            # A registry per scrape, as prometheus_client's multiprocess guide does: the
            # collector reads the directory's files (a few KB per worker) when asked.
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            text = generate_latest(registry)
        else:
            text = generate_latest(families.REGISTRY)
        return web.Response(body=text, headers={"Content-Type": CONTENT_TYPE})

    return metrics
