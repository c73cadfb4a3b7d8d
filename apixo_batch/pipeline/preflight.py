"""Before the first submit: read the balance, refuse when it cannot cover what is left."""

from __future__ import annotations

from ..apixo.client import ApixoClient
from ..errors import ApiError, ApixoError, Forbidden, TransportError
from ..events import Emitter, Preflight, Warned
from .stop import Stop, StopKind, no_access, refusal_step

__all__ = ["preflight"]


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
