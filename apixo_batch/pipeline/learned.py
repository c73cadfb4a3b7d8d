"""What a run starts from and leaves behind for the next: the account's rate, and the
completion times per clock key, both kept in the journal."""

from __future__ import annotations

import hashlib

from ..apixo.limits import ROUTES, RequestBucket
from ..apixo.secret import ApiKey
from ..journal import Ledger
from ..planning.completion import CompletionModel

__all__ = ["account_of", "remember_rate", "start_informed", "start_rate"]


def account_of(key: ApiKey, base_url: str) -> str:
    """The key and base URL as a digest: what learned limits belong to (never the key)."""
    raw = f"{key.reveal()}\0{base_url}".encode()
    return hashlib.sha256(raw).hexdigest()[:16]


async def start_informed(
    ledger: Ledger, bucket: RequestBucket, completions: CompletionModel, account: str | None
) -> None:
    """Start just under the rate an earlier run found for this account, and with the
    completion times earlier runs saw: today's first polls start informed."""
    if account is not None:
        await start_rate(ledger, bucket, account)
    for key, samples in (await ledger.learned_completions()).items():
        for seconds in samples:
            completions.add(key, seconds)


async def start_rate(ledger: Ledger, bucket: RequestBucket, account: str) -> None:
    """Start just under the rates an earlier run learned for this account: the shared
    one, and each route's that the account limits in a window of its own."""
    bucket.start_under(await ledger.learned_rpm(account))
    routes = {}
    for route in ROUTES:
        rpm = await ledger.learned_rpm(_route_key(account, route))
        if rpm is not None:
            routes[route] = rpm
    bucket.start_routes(routes)


async def remember_rate(ledger: Ledger, bucket: RequestBucket, account: str | None) -> None:
    """Keep what this run learned of the account's rate (a run that met no limit at the
    full rate leaves no ceiling behind)."""
    if account is None or not bucket.statistics().sent:
        return
    bucket.conclude()
    control = bucket.control
    clear = control.episodes == 0 and control.rate >= control.top
    await ledger.remember_rpm(account, None if clear else bucket.learned_rpm)
    # A route limited in a window of its own keeps its rate under its own key (the
    # account's digest and the route): the next run paces it by its gate from the start.
    routes = bucket.learned_routes
    for route in ROUTES:
        key = _route_key(account, route)
        rpm = routes.get(route)
        if rpm is not None or await ledger.learned_rpm(key) is not None:
            await ledger.remember_rpm(key, rpm)


def _route_key(account: str, route: str) -> str:
    return f"{account}/{route}"
