"""The limits every API call and every task passes: requests per minute, tasks in flight.

``bucket``: the paced :class:`RequestBucket` (inside the API client) and
``congestion``: how it learns the account's real rate from 429s; ``slots``:
the :class:`ConcurrencyLimit` whose permits admission hands out. Limits share a
small interface (``acquire`` / ``release`` / ``statistics``), aiometer-style.
"""

from __future__ import annotations

from .bucket import ROUTES, BucketStats, Limit, Priority, RequestBucket
from .congestion import RateControl
from .slots import ConcurrencyLimit, ConcurrencyStats, SlotsClosed, SlotsStranded

#: the API allows 1,000 tasks in flight and 10,000 requests a minute: stay strictly under
MAX_CONCURRENT_CAP = 999
RPM_CAP = 9_999

__all__ = [
    "MAX_CONCURRENT_CAP",
    "ROUTES",
    "RPM_CAP",
    "BucketStats",
    "ConcurrencyLimit",
    "ConcurrencyStats",
    "Limit",
    "Priority",
    "RateControl",
    "RequestBucket",
    "SlotsClosed",
    "SlotsStranded",
]
