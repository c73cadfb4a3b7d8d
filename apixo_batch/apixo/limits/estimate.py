"""What the account's rate limiter is, inferred from which requests it accepted and refused.

APIXO says only that limits "vary by account, API key and route"; gateways
count over sliding or fixed windows of 1 to 60 s, some count refused requests
too, and their Retry-After may tell the truth, be absent, or be too short. So
the rate is not read from a 429's moment (a burst over a short window
overshoots far above the account's rate) nor from a ramp's average: it is
inferred from the log of answers. Each request is kept with the moment it left
and whether it was accepted; for each candidate limiter (a window length,
sliding or fixed, counting refused requests or not, over every route or the
refused one alone) the log says how many counted requests preceded each answer
in its window. A limiter that fits refuses at some count ``L`` and accepts below
it: the candidate whose threshold separates accepted from refused best is the
account's, and ``L`` is what it was seen to accept over its window (the count an
accepted request reached, plus one: a lower bound, never a guess above).

While several candidates fit equally (the first 429 of a run fits them all), the
fastest is taken: waiting for its window to drain is short, and the next refusal
rules it out if it was wrong (a refusal at a count it would have accepted).
The Retry-After, when present, is a lower bound on the wait: a candidate whose
window would have room well before it is ruled out.
"""

from __future__ import annotations

import bisect
import collections
import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["WINDOWS", "AccountLimiter", "Fit"]

#: the window lengths gateways use (seconds)
WINDOWS = (1.0, 2.0, 3.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0)
#: answers older than this teach nothing about a window of at most 60 s
HISTORY_S = 65.0
#: at most this many answers kept (the oldest go first): the fit's cost stays bounded
MAX_EVENTS = 6_000
#: fits within this much of the best one are as good (timing jitter at window edges)
TOLERANCE = 0.05
#: a route's own window is taken only when it explains the answers by this much better
#: than every shared one: fewer answers (and a fixed window's phase) fit more easily
ROUTE_MARGIN = 0.3
#: a refusal at a count under this share of a candidate's limit rules the candidate out
HARD = 0.98


@dataclass(frozen=True, slots=True)
class Fit:
    """One candidate limiter that explains the answers."""

    window_s: float
    #: requests the account accepted per window (what it was seen to accept)
    limit: int
    fixed: bool
    counts_refused: bool
    #: the route it limits alone (status polls, say), or None for every route
    route: str | None
    #: how badly it explains the answers: refusals it would have accepted (share of the
    #: refusals) plus acceptances it would have refused (share of the acceptances)
    misfit: float
    #: the boundary of a fixed window (seconds, modulo ``window_s``)
    phase: float = 0.0

    @property
    def rate(self) -> float:
        """Requests a second the limiter lets through, sustained."""
        return self.limit / self.window_s

    def describe(self) -> str:
        """``450 per 10 s, sliding window`` (and what else was learned of it)."""
        kind = "fixed" if self.fixed else "sliding"
        refused = " counting refused requests" if self.counts_refused else ""
        route = f"{self.route} requests: " if self.route else ""
        return f"{route}{self.limit:,} per {self.window_s:g} s, {kind} window{refused}"


class AccountLimiter:
    """The log of answers, and the limiter that explains it best."""

    def __init__(self) -> None:
        # (sent at, accepted, route), in the order the answers came
        self._log: collections.deque[tuple[float, bool, str]] = collections.deque()
        self.fit: Fit | None = None
        self._refusals = 0
        # the last Retry-After, and when the request it answered left
        self._last_retry: tuple[float, float] | None = None

    def answered(self, sent_at: float, accepted: bool, route: str) -> None:
        """A request that left at ``sent_at`` was accepted or refused (429) by the rate limit."""
        log = self._log
        log.append((sent_at, accepted, route))
        if not accepted:
            self._refusals += 1
        horizon = sent_at - HISTORY_S
        while log and (log[0][0] < horizon or len(log) > MAX_EVENTS):
            if not log.popleft()[1]:
                self._refusals -= 1

    def split(self, route: str) -> AccountLimiter:
        """The answers of ``route``, taken out of this log into one of their own: the
        route is limited in a window of its own, and its answers no longer say anything
        about the others' (nor theirs about it)."""
        own = AccountLimiter()
        kept: collections.deque[tuple[float, bool, str]] = collections.deque()
        for event in self._log:
            if event[2] == route:
                own.answered(*event)
            else:
                kept.append(event)
        self._log = kept
        self._refusals = sum(1 for _, ok, _ in kept if not ok)
        own._last_retry = self._last_retry
        return own

    def join(self, other: AccountLimiter) -> None:
        """Take ``other``'s answers back (a route's own window was a shared one after all)."""
        merged = sorted([*self._log, *other._log], key=lambda e: e[0])
        self._log = collections.deque(merged[-MAX_EVENTS:])
        self._refusals = sum(1 for _, ok, _ in self._log if not ok)

    def refit(
        self,
        now: float,
        retry_after: float | None = None,
        refused_at: float | None = None,
        *,
        conclude: bool = False,
    ) -> Fit | None:
        """The limiter that explains the log best (after a refusal); None until one does.

        ``retry_after``: the Retry-After of the refusal of the request sent at
        ``refused_at`` (else ``now``): a lower bound on when room comes.

        ``conclude``: the run is over. While it went on the fastest fit was tried (the
        next refusal rules it out if wrong); what is left undecided at its end (a fixed
        window's boundary seen once: the same count fits a window half as long) should
        not send the next run into a 429, so of the fits that explain the answers as
        well with the same count, the one over the longest window is kept."""
        if retry_after is not None:
            self._last_retry = (retry_after, now if refused_at is None else refused_at)
        elif conclude and self._last_retry is not None:
            retry_after, refused_at = self._last_retry
        if not self._refusals:
            return self.fit
        # By send time; answers to requests sent at the same instant keep the order they
        # came in (the server's, near enough): a refusal is not counted before the
        # acceptances that preceded it.
        events = sorted(self._log, key=lambda e: e[0])
        refused_routes = {route for _, ok, route in events if not ok}
        fits: list[Fit] = []
        scopes: list[str | None] = [None]
        if len({route for _, _, route in events}) > 1:
            scopes += sorted(refused_routes)
        for scope in scopes:
            chosen = events if scope is None else [e for e in events if e[2] == scope]
            times = [e[0] for e in chosen]
            oks = [e[1] for e in chosen]
            phases = _phases(times, oks)
            for window in WINDOWS:
                for counts_refused in (False, True):
                    fit = _sliding(times, oks, window, counts_refused, scope)
                    if fit is not None:
                        fits.append(fit)
                    for phase in phases:
                        fit = _fixed(times, oks, window, counts_refused, scope, phase)
                        if fit is not None:
                            fits.append(fit)
        if retry_after is not None and fits:
            # Room no sooner than Retry-After says, counted from when the server answered
            # (about when the request left): whole seconds rounded up (the wait is over
            # RA - 1), and a tenth of a second for the clocks' jitter.
            at = now if refused_at is None else refused_at
            late = [f for f in fits if self.room_at(f, at) >= at + retry_after - 1.1]
            fits = late or fits
        if not fits:
            return self.fit
        # One route's own window only when it explains the answers clearly better than a
        # window every route shares: fewer answers always fit more easily.
        shared = [f for f in fits if f.route is None]
        if shared:
            shared_best = min(f.misfit for f in shared)
            fits = [f for f in fits if f.route is None or f.misfit < shared_best - ROUTE_MARGIN]
        best = min(f.misfit for f in fits)
        good = [f for f in fits if f.misfit <= best + TOLERANCE]
        if conclude and self.fit is not None:
            # Only the ambiguity of a window seen once: the same count over a longer window
            # (the log keeps a minute: older answers cannot rule the slower ones out).
            current = self.fit
            same = [
                f
                for f in good
                if f.misfit <= best + TOLERANCE / 10
                and abs(f.limit - current.limit) <= 0.02 * current.limit
                and f.window_s >= current.window_s
            ]
            self.fit = min(same, key=lambda f: (round(f.rate, 6), f.misfit), default=current)
            return self.fit
        # The fastest of those that fit as well: the cheapest to try, and the next refusal
        # rules it out if wrong. Equal rates: the shorter window (its room comes sooner).
        self.fit = max(good, key=lambda f: (round(f.rate, 6), -f.window_s, -f.misfit))
        return self.fit

    def room_at(self, fit: Fit, now: float) -> float:
        """When the window has room again under ``fit``, if nothing more is sent."""
        if fit.fixed:
            start = fit.phase + math.floor((now - fit.phase) / fit.window_s) * fit.window_s
            counted = sum(
                1
                for at, ok, route in self._log
                if start <= at <= now and (ok or fit.counts_refused) and _in(route, fit.route)
            )
            return now if counted < fit.limit else start + fit.window_s
        times = sorted(
            at
            for at, ok, route in self._log
            if now - fit.window_s < at <= now
            and (ok or fit.counts_refused)
            and _in(route, fit.route)
        )
        if len(times) < fit.limit:
            return now
        # Room when all but limit - 1 of them have left the window.
        return times[len(times) - fit.limit] + fit.window_s

    def share(self, route: str, now: float, span: float = 10.0) -> float:
        """The share of the requests of the last ``span`` seconds that went to ``route``."""
        recent = [r for at, _, r in self._log if at > now - span]
        if not recent:
            return 1.0
        return sum(1 for r in recent if r == route) / len(recent)


def _in(route: str, scope: str | None) -> bool:
    return scope is None or route == scope


def _phases(times: Sequence[float], oks: Sequence[bool]) -> list[float]:
    """Where a fixed window may start: at the first acceptances after refusals (the last
    three), when the window emptied at once."""
    found: list[float] = []
    refused = False
    for at, ok in zip(times, oks, strict=True):
        if not ok:
            refused = True
        elif refused:
            found.append(at - 1e-3)
            refused = False
    return found[-3:]


def _threshold(accepted: list[int], refused: list[int]) -> tuple[int, float] | None:
    """The count ``L`` that best separates acceptances (count < L) from refusals
    (count >= L), and its misfit; the lowest such ``L`` (what was seen accepted)."""
    if not refused or not accepted:
        return None
    accepted.sort()
    refused.sort()
    best: tuple[float, int] | None = None
    for limit in sorted({a + 1 for a in accepted} | set(refused)):
        if limit < 1:
            continue
        wrong_ok = len(accepted) - bisect.bisect_left(accepted, limit)
        wrong_no = bisect.bisect_left(refused, limit)
        # A refusal well under the limit is no timing jitter at the window's edge: the
        # candidate is wrong (each such refusal costs a whole misfit).
        far = bisect.bisect_left(refused, HARD * limit - 1)
        misfit = far + wrong_no / len(refused) + wrong_ok / len(accepted)
        if best is None or misfit < best[0] - 1e-12:
            best = (misfit, limit)
    if best is None:
        return None
    return best[1], best[0]


def _sliding(
    times: Sequence[float],
    oks: Sequence[bool],
    window: float,
    counts_refused: bool,
    scope: str | None,
) -> Fit | None:
    accepted: list[int] = []
    refused: list[int] = []
    counted = [0]  # counted requests among the first i
    for ok in oks:
        counted.append(counted[-1] + (1 if ok or counts_refused else 0))
    lo = 0
    for i, at in enumerate(times):
        while times[lo] <= at - window:
            lo += 1
        n = counted[i] - counted[lo]
        (accepted if oks[i] else refused).append(n)
    found = _threshold(accepted, refused)
    if found is None:
        return None
    return Fit(window, found[0], False, counts_refused, scope, found[1])


def _fixed(
    times: Sequence[float],
    oks: Sequence[bool],
    window: float,
    counts_refused: bool,
    scope: str | None,
    phase: float,
) -> Fit | None:
    accepted: list[int] = []
    refused: list[int] = []
    current, n = None, 0
    for at, ok in zip(times, oks, strict=True):
        slot = math.floor((at - phase) / window)
        if slot != current:
            current, n = slot, 0
        (accepted if ok else refused).append(n)
        if ok or counts_refused:
            n += 1
    found = _threshold(accepted, refused)
    if found is None:
        return None
    return Fit(window, found[0], True, counts_refused, scope, found[1], phase % window)
