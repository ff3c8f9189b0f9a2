"""Scenario 4's line for invoicePreview over many meters (issue 17): what one preview costs when
the user has events on METERS meters (the default quota of an org and mode), against the same
usage read by raw SQL in one grouped query (bench/baselines/raw_sql.py `usage`).

Before the preview read every meter's usage in one statement it ran one aggregate per meter
(5,000 meters: 0.56 s a preview). The prepared database: METERS meters through the API, their
aggregations cycling through all six, a per-unit rule on each, then EVENTS_PER_METER events of
one user on each meter in scenario 4's period written with SQL (bench/populate.py); read back
through the API (a line item per meter, the subtotal) before it is used.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import populate
from .load import zap, zap_batch

if TYPE_CHECKING:
    from .scenarios import Bench, Template

METERS = 1_000
EVENTS_PER_METER = 100
USER = "bench/meters"
AGGREGATIONS = ("sum", "count", "max", "min", "unique_count", "last")


def make_template(bench: "Bench") -> "Template":
    from .scenarios import Template, _tenant, period

    db, key = bench._new("s4meters")
    with bench.zapbilling(db, "prepare-s4meters", durability="normal") as srv:
        meters: list[str] = []
        for first in range(0, METERS, 100):
            made = zap_batch(srv.url, key, [("billing.createMeter", {
                "name": f"Meter {i}", "eventName": f"meter-{i}", "aggregationType": AGGREGATIONS[i % len(AGGREGATIONS)],
            }) for i in range(first, min(first + 100, METERS))])
            meters += [m["id"] for m in made]
            zap_batch(srv.url, key, [("billing.createPricingRule", {"meterId": m["id"], "unitPrice": 1}) for m in made])
    tenant = _tenant(db)
    start, end, start_us, end_us = period()
    for i, meter in enumerate(meters):
        populate.meter_events(str(db), tenant, meter, USER, EVENTS_PER_METER, start_us=start_us, end_us=end_us, seed=i)
    params = {"userId": USER, "periodStart": start, "periodEnd": end}
    with bench.zapbilling(db, "check-s4meters", durability="normal") as srv:
        preview = zap(srv.url, key, "billing.invoicePreview", params)
    items = preview["lineItems"]
    if [item["meterId"] for item in items] != meters or any(item["quantity"] <= 0 for item in items):
        raise RuntimeError(f"populated meters preview as {str(preview)[:300]}")
    populate.checkpoint(str(db))
    return Template(db, key, tenant, {"user": USER, "period": [start, end, start_us, end_us], "meters": METERS,
                                      "subtotal": preview["subtotal"]})


def preview_params(tpl: "Template") -> dict[str, Any]:
    start, end, _, _ = tpl.info["period"]
    return {"userId": tpl.info["user"], "periodStart": start, "periodEnd": end}


def usage_args(bench: "Bench", tpl: "Template") -> list[str]:
    _, _, start_us, end_us = tpl.info["period"]
    return ["usage", "--tenant", str(tpl.tenant), "--user", tpl.info["user"], "--start", str(start_us), "--end", str(end_us)]


def runs() -> list[Any]:
    """The preview over METERS meters and its raw-SQL baseline, p50 at 1 connection."""
    from .scenarios import HttpRun, InprocRun, msgpack_call

    label = f"{METERS:,} meters x {EVENTS_PER_METER} events"
    return [
        HttpRun("s4.invoice_meters", f"invoicePreview over {label}", 4, unit="ms", template="s4meters", copy=False,
                connections=1, threads=1, script="static.lua", body=msgpack_call("billing.invoicePreview", preview_params),
                expect="amountDue"),
        InprocRun("s4.raw_meters", f"raw SQL, every meter's sum and count in one GROUP BY, {label}", 4, unit="ms",
                  template="s4meters", copy=False, args=usage_args),
    ]


def targets() -> list[Any]:
    from .scenarios import Target

    return [Target(f"invoicePreview p50 vs raw SQL, {METERS:,} meters", "s4.invoice_meters", "s4.raw_meters", metric="p50_ms")]
