"""What the simulator saw: counters that tests and benchmarks assert on.

Everything is kept incrementally (no scans per request), so reading the stats
is cheap and recording them costs a few dictionary updates.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any

__all__ = ["API_ROUTES", "SimStats", "input_key"]

#: route labels of the API proper (the ones the rpm limit and API faults apply to)
API_ROUTES = frozenset(
    {"POST /generateTask", "GET /statusTask", "GET /apikeys/current-balance", "API /other"}
)


def input_key(model: str, inp: Mapping[str, Any]) -> str:
    """A canonical form of (model, input): equal inputs give equal keys."""
    return model + " " + json.dumps(inp, sort_keys=True, separators=(",", ":"), default=str)


class SimStats:
    """Counters of one simulator instance."""

    def __init__(self) -> None:
        self.requests: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.requests_total = 0
        self.api_requests_total = 0
        self.submits_accepted = 0
        self.tasks_succeeded = 0
        self.tasks_failed = 0
        self.max_concurrent_tasks = 0
        self.rate_limited_rpm = 0
        self.rate_limited_concurrency = 0
        self.submits_by_input: Counter[str] = Counter()
        self.duplicate_submits = 0
        self.max_submits_per_input = 0
        self.callbacks_attempted = 0
        self.callbacks_delivered = 0
        self.callbacks_failed = 0
        self.callbacks_dropped = 0
        self.callbacks_duplicated = 0
        self.file_requests = 0
        self.file_bytes_sent = 0
        self.faults: Counter[str] = Counter()
        #: accepted submits by their top-level ``source`` tag ("" when none was sent)
        self.sources: Counter[str] = Counter()

    def record(self, route: str, status: str) -> None:
        """One request answered on ``route`` ("POST /generateTask") with ``status``."""
        self.requests[route][status] += 1
        self.requests_total += 1
        if route in API_ROUTES:
            self.api_requests_total += 1

    def note_submit(self, key: str) -> None:
        """One accepted submit (a task was created) for the input ``key``."""
        self.submits_accepted += 1
        count = self.submits_by_input[key] + 1
        self.submits_by_input[key] = count
        if count > 1:
            self.duplicate_submits += 1
        self.max_submits_per_input = max(self.max_submits_per_input, count)

    def note_source(self, source: str | None) -> None:
        """The ``source`` tag of a submit that will be accepted (None: none sent)."""
        self.sources[source or ""] += 1

    def snapshot(self, **live: Any) -> dict[str, Any]:
        """A JSON-able copy; ``live`` adds values owned elsewhere (balance, concurrency)."""
        return {
            "requests": {route: dict(codes) for route, codes in self.requests.items()},
            "requests_total": self.requests_total,
            "api_requests_total": self.api_requests_total,
            "submits_accepted": self.submits_accepted,
            "tasks_created": self.submits_accepted,
            "tasks_succeeded": self.tasks_succeeded,
            "tasks_failed": self.tasks_failed,
            "max_concurrent_tasks": self.max_concurrent_tasks,
            "rate_limited": self.rate_limited_rpm + self.rate_limited_concurrency,
            "rate_limited_rpm": self.rate_limited_rpm,
            "rate_limited_concurrency": self.rate_limited_concurrency,
            "distinct_inputs": len(self.submits_by_input),
            "duplicate_submits": self.duplicate_submits,
            "max_submits_per_input": self.max_submits_per_input,
            "callbacks_attempted": self.callbacks_attempted,
            "callbacks_delivered": self.callbacks_delivered,
            "callbacks_failed": self.callbacks_failed,
            "callbacks_dropped": self.callbacks_dropped,
            "callbacks_duplicated": self.callbacks_duplicated,
            "file_requests": self.file_requests,
            "file_bytes_sent": self.file_bytes_sent,
            "faults": dict(self.faults),
            "sources": dict(self.sources),
            **live,
        }
