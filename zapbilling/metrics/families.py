"""Every metric `/metrics` shows, defined once per process (importing prometheus_client: see
directory.py for why that must come after `serve` set PROMETHEUS_MULTIPROC_DIR).

In multiprocess mode each value lives in a file of that directory, per process; a scrape sums
the processes: counters and histograms over every process that has run since the server
started, gauges over the live ones (`livesum`). Without the variable (an app built in a test
process) the values live in this process and REGISTRY shows them alone.
"""
from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .directory import ENV

MULTIPROCESS = bool(os.environ.get(ENV))
"""Whether prometheus_client keeps its values in files (it decided when it was imported, above)."""
REGISTRY = CollectorRegistry(auto_describe=True)
"""Ours alone: no process_* or python_* collectors, so that one process answers the same
families as a server of several workers does."""

REQUEST_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""From half a millisecond (a getBalance's own time is ~0.1 ms) to the 10 s a request may be cut at."""
COMMIT_SECONDS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
"""Up to the SQLite writer's largest batch (writer.MAX_BATCH)."""

MONEY_KINDS = ("deposit", "usage", "refund", "capture", "forfeit")
EVENT_OUTCOMES = ("created", "duplicate")

REQUESTS = Counter(
    "zapbilling_requests", "API calls answered, by method (its wire name; empty for a request refused before any"
    " method was read), transport (rest, zap) and outcome (ok, or the error kind); a ZAP batch counts each entry.",
    ("method", "transport", "outcome"), registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "zapbilling_request_duration_seconds", "Seconds from a request's arrival to its answer written, by method and"
    " transport; each entry of a ZAP batch is observed with the batch's time.",
    ("method", "transport"), buckets=REQUEST_SECONDS_BUCKETS, registry=REGISTRY,
)
INFLIGHT = Gauge(
    "zapbilling_inflight_requests", "Requests being handled now (holding a slot of the shared in-flight bound),"
    " sampled twice a second and at each scrape.", registry=REGISTRY, multiprocess_mode="livesum",
)
COMMIT_SECONDS = Histogram(
    "zapbilling_db_commit_seconds", "Seconds of each committed write transaction, BEGIN to COMMIT done (SQLite: one"
    " writer batch; PostgreSQL: one write).", buckets=COMMIT_SECONDS_BUCKETS, registry=REGISTRY,
)
COMMIT_BATCH = Histogram(
    "zapbilling_db_commit_batch_size", "Writes per committed transaction (SQLite's group commit; always 1 on PostgreSQL).",
    buckets=BATCH_SIZE_BUCKETS, registry=REGISTRY,
)
MONEY = Counter(
    "zapbilling_money_cents", "Cents moved by committed ledger rows, by the account's currency and kind (deposit:"
    " deposits and starter credit; usage: recordUsage; refund; capture: a hold's capture; forfeit: expired credit)."
    " An idempotent replay or a refused call moves nothing.",
    ("currency", "kind"), registry=REGISTRY,
)
METER_EVENTS = Counter(
    "zapbilling_meter_events", "Meter events sent by callers (recordMeterEvents) and committed, by outcome (created,"
    " or duplicate: an idempotency key already seen).", ("outcome",), registry=REGISTRY,
)
WEBHOOK_DELIVERIES = Counter(
    "zapbilling_webhook_deliveries", "Webhook delivery attempts by outcome (ok: answered 2xx; failed: anything else,"
    " retried on the schedule unless it was the last).",
    ("outcome",), registry=REGISTRY,
)
WRITER_QUEUE = Gauge(
    "zapbilling_db_writer_queue_depth", "Writes waiting for SQLite's single writer (0 on PostgreSQL).",
    registry=REGISTRY, multiprocess_mode="livesum",
)
POOL_SIZE = Gauge(
    "zapbilling_db_pool_size", "Connections the PostgreSQL pools may open, summed over the server's processes (0 on SQLite).",
    registry=REGISTRY, multiprocess_mode="livesum",
)
POOL_OPEN = Gauge(
    "zapbilling_db_pool_connections_open", "PostgreSQL connections open (idle or lent out).",
    registry=REGISTRY, multiprocess_mode="livesum",
)
POOL_IN_USE = Gauge(
    "zapbilling_db_pool_connections_in_use", "PostgreSQL connections lent out to a call now.",
    registry=REGISTRY, multiprocess_mode="livesum",
)
POOL_WAITS = Counter(
    "zapbilling_db_pool_waits", "Calls that found every pooled PostgreSQL connection lent out and waited for one.",
    registry=REGISTRY,
)
POOL_WAIT_SECONDS = Counter(
    "zapbilling_db_pool_wait_seconds", "Seconds those calls waited, summed.", registry=REGISTRY,
)

for _outcome in EVENT_OUTCOMES:
    METER_EVENTS.labels(_outcome)  # every outcome shown from the start, at 0
for _outcome in ("ok", "failed"):
    WEBHOOK_DELIVERIES.labels(_outcome)


def add_observations(histogram: Histogram, labels: tuple[str, ...], total: float, counts: list[int]) -> None:
    """Many observations at once: `counts[i]` of them in bucket i (the library's bounds, +Inf
    last), summing to `total`. prometheus_client has no bulk observe and its observe costs
    ~3 us in multiprocess mode (a lock and an mmap write each for the sum and the bucket), so
    this adds to the histogram's own bucket and sum values (its `_buckets`, `_sum`): one
    write per bucket touched per flush. `check_library` fails at start-up if a release renames them."""
    child = histogram.labels(*labels) if labels else histogram
    child._sum.inc(total)
    buckets = child._buckets
    for i, n in enumerate(counts):
        if n:
            buckets[i].inc(n)


def check_library() -> None:
    """Fail loudly, at start-up, if prometheus_client no longer keeps a histogram's values
    where add_observations writes them."""
    for name in ("_sum", "_buckets", "_upper_bounds"):
        if not hasattr(COMMIT_SECONDS, name):
            raise RuntimeError(f"prometheus_client's Histogram has no {name}: zapbilling/metrics/families.add_observations needs another way")


check_library()
