"""Settings, from command-line flags or environment variables, in one place."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .limits import Limits
from .store.base import DURABILITY as DURABILITY  # re-exported: the CLI offers these
from .times import Clock, system_clock

MAX_BATCH = 100
"""Envelopes in one ZAP batch (transport/zap.py). Kept here, with no aiohttp import, so that
the settings can be checked against it where they are made (the supervisor of workers loads no
aiohttp): a rate burst smaller than a full batch would refuse a legal batch for ever."""

ENV = {
    "db": "ZAPBILLING_DB",
    "host": "ZAPBILLING_HOST",
    "port": "ZAPBILLING_PORT",
    "durability": "ZAPBILLING_DURABILITY",
    "workers": "ZAPBILLING_WORKERS",
    "log_format": "ZAPBILLING_LOG_FORMAT",
    "log_level": "ZAPBILLING_LOG_LEVEL",
}
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
"""`--log-format` and `--log-level` (logs.py)."""


@dataclass(frozen=True)
class Config:
    db: str = "zapbilling.db"
    host: str = "127.0.0.1"
    port: int = 8080
    durability: str = "full"
    """full: a commit survives a power cut (synchronous=FULL); normal: it survives a crash of
    the process but not of the machine (synchronous=NORMAL), for more writes per second."""
    workers: int = 1
    """Server processes sharing the port (SO_REUSEPORT) and the database file."""
    log_format: str = "text"
    """text: the usual log lines; json: one JSON object per line (logs.py, access_log.py)."""
    log_level: str = "info"
    """The least severe records written; above info, no access lines either."""
    sweep_seconds: float = 60.0
    """How often expired credit is forfeited and idempotency keys older than a day are dropped."""
    webhook_poll_seconds: float = 0.5
    """How often an idle webhook sender looks for events to deliver (events/sender.py)."""
    deliver: bool = True
    """Whether the app's own process runs the webhook sender. `serve` sets it False in the
    processes that answer requests and delivers from a process of its own (sender_process.py);
    an app built in-process (the tests) delivers itself, on its injected clock."""
    limits: Limits = field(default_factory=Limits)
    """Bounds and quotas (limits.py): each has its own flag and environment variable. A request
    takes a slot of `max_inflight` only once its body is all here (transport/admission.py): a
    slow body holds a slot of its own key's bound (inflight_per_key) instead, so the bodies held
    in memory at once are at most that bound times body_bytes per key."""
    clock: Clock = field(default=system_clock, repr=False)
    """Microseconds since the epoch; tests pass a clock they can move."""

    def __post_init__(self) -> None:
        """Refuse settings the server cannot keep (ValueError, worded for the command line)."""
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"--log-format must be text or json, not {self.log_format!r}")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}")
        if self.limits.max_inflight < 1:
            raise ValueError(f"--max-inflight must be at least 1, not {self.limits.max_inflight}")
        if self.limits.body_bytes < 1 or self.limits.body_timeout <= 0 or self.limits.idle_timeout <= 0:
            raise ValueError("--body-bytes, --body-timeout and --idle-timeout must be positive")
        if self.limits.inflight_per_key < 1:
            raise ValueError(f"--inflight-per-key must be at least 1, not {self.limits.inflight_per_key}")
        if self.limits.rate_per_second < 0:
            raise ValueError(f"--rate-per-second must not be negative, not {self.limits.rate_per_second:g}")
        if self.limits.rate_per_second and self.limits.rate_burst < MAX_BATCH:
            raise ValueError(f"--rate-burst must be at least {MAX_BATCH} (a full batch) when rates are limited, not {self.limits.rate_burst}")


def server_options(config: Config) -> dict[str, Any]:
    """aiohttp server settings that come from the config (for run_app and test servers alike).
    lingering_time bounds how long the unread rest of a refused body is drained before close."""
    return {"keepalive_timeout": config.limits.idle_timeout, "lingering_time": config.limits.body_timeout}


def env_default(name: str) -> str:
    """The default for a flag: its environment variable, else the built-in default."""
    return os.environ.get(ENV[name], str(getattr(Config, name)))
