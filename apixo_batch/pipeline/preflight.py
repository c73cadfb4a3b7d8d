"""Before the first submit: read the balance, refuse when it cannot cover what is left."""

from __future__ import annotations

from ..apixo.client import ApixoClient
from ..errors import ApiError, ApixoError, Forbidden, TransportError
from ..events import Emitter, Preflight, Warned
from .keypool import KeyAccount, KeyPool
from .stop import Stop, StopKind, no_access, refusal_step

__all__ = ["preflight", "preflight_pool"]


async def preflight(
    client: ApixoClient,
    emit: Emitter,
    *,
    cost: float,
    unknown: int,
    queued: int,
    budget_left: float | None,
    allow_partial: bool,
    read: float | ApixoError | None = None,
) -> Stop | None:
    """The stop that keeps every submit from leaving (told when the run requests it), or
    None to go on.

    ``cost`` is the estimated USD of the ``queued`` jobs of known price; ``budget_left``
    caps what this run may spend; ``read``, when given, is the balance (or why it could not
    be read) read already, before a first run created its journal: never asked twice. A
    balance that cannot be read is said and ignored."""
    try:
        if isinstance(read, ApixoError):
            raise read
        balance = await client.balance() if read is None else read
    except Forbidden as exc:
        # The balance route alone may be closed to a key that can submit: the check is
        # skipped, and a submit refused the same way stops the run then.
        emit(Warned(message=f"{no_access('balance')} ({exc}); going on without the balance"))
        return None
    except ApiError as exc:
        if exc.fatal:
            reason = f"the API refused: {exc}"
            return Stop(StopKind.FATAL, reason, fatal=str(exc), next_step=refusal_step(exc))
        emit(Warned(message=f"could not read the balance ({exc}); going on"))
        return None
    except (TransportError, ApixoError) as exc:
        emit(Warned(message=f"could not read the balance ({exc}); going on"))
        return None
    note = f" (+{unknown} job(s) of unknown price)" if unknown else ""
    if budget_left is not None:
        cost = min(cost, max(0.0, budget_left))
    if cost > balance + 1e-9 and not allow_partial:
        reason = (
            f"balance ${balance:.2f} cannot cover the estimated ${cost:.2f}{note} of the "
            f"{queued} job(s) left; nothing submitted"
        )
        step = (
            "top up the APIXO account and run the same command, or run it with "
            "--allow-partial to submit what the balance covers"
        )
        return Stop(StopKind.REFUSED, reason, balance_usd=balance, next_step=step)
    emit(
        Preflight(
            message=f"balance ${balance:.2f}, estimated ${cost:.2f}{note} for {queued} job(s)",
            balance_usd=balance,
            estimated_usd=round(cost, 4),
            unknown_price_jobs=unknown,
        )
    )
    return None


async def preflight_pool(
    pool: KeyPool,
    emit: Emitter,
    *,
    cost: float,
    unknown: int,
    queued: int,
    budget_left: float | None,
    allow_partial: bool,
) -> Stop | None:
    """:func:`preflight` over a pool: each key's balance read; a key refused (401/403) or
    with nothing left is retired with one line; the others' balances together must
    cover the estimate. Stops only when no key can submit."""
    total = 0.0
    unread = False
    for account in pool.accounts:
        assert account.client is not None
        fp = account.fingerprint
        try:
            balance = await account.client.balance()
        except ApiError as exc:
            if exc.fatal and not isinstance(exc, Forbidden):
                _retire(pool, account, f"{exc.status}: {exc.api_message or exc}", emit)
                continue
            emit(Warned(key=fp, message=f"key {fp}: could not read its balance ({exc}); going on"))
            unread = True
            continue
        except ApixoError as exc:
            emit(Warned(key=fp, message=f"key {fp}: could not read its balance ({exc}); going on"))
            unread = True
            continue
        if balance <= 0.0:
            _retire(pool, account, f"balance ${balance:.2f}", emit)
            continue
        total += balance
    if not pool.submitting():
        reason = "every key of the pool was refused or has no balance left; nothing submitted"
        step = "fix or top up the pool's keys (see the lines above), then run the same command"
        return Stop(StopKind.FATAL, reason, fatal=reason, next_step=step)
    if unread:
        return None  # what the unread keys hold is unknown: the estimate is not weighed
    main = pool.main.client
    assert main is not None
    # The pool's balances together, weighed as one account's (``read``: nothing asked).
    return await preflight(
        main,
        emit,
        cost=cost,
        unknown=unknown,
        queued=queued,
        budget_left=budget_left,
        allow_partial=allow_partial,
        read=total,
    )


def _retire(pool: KeyPool, account: KeyAccount, why: str, emit: Emitter) -> None:
    if pool.retire(account, why):
        fp = account.fingerprint
        emit(
            Warned(
                key=fp,
                message=f"key {fp} retired from submitting before the first submit ({why}); "
                f"{len(pool.submitting())} key(s) left",
            )
        )
