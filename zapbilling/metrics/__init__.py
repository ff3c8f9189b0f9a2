"""Prometheus metrics: `GET /metrics`, one view over every worker process of a server.

- directory.py: prometheus_client's multiprocess mode, which keeps each process's values in
  files of one directory; `serve` makes (or cleans) that directory before any worker starts.
  Imports no prometheus_client: the supervisor stays small.
- families.py: every metric, defined once.
- tally.py: where the numbers come from. Requests and their durations are tallied in plain
  dicts as they end (the access logger's call, once per request) and the store's commits, money
  and meter events in its StoreStats lists; a sampler moves them into the Prometheus values
  twice a second and just before this process answers a scrape, and samples the gauges then.
- exposition.py: the route's answer.

No label holds an org, a user or a key: the labels are method names, transports, error kinds,
currencies and the fixed kinds and outcomes the families list.
"""
