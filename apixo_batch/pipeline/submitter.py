"""The submitter: each admitted job's submit on the wire, its task id made durable at once.

For one job: the bucket grants a request (inside the client), the job is
marked ``submitting`` (durable: from here a crash leaves doubt), the request
leaves, and the task id it answers is committed before anything else happens
with it (invariant 1), then handed to the follower. Transient trouble (429,
5xx, resets) is retried with backoff; a reset or a gateway timeout may hide a
created task, so the job is flagged *possibly duplicated*. An answer that
refuses the input fails the job; a fatal answer (key, balance, access) stops
the run's submits and hands the job back to the queue.

Stopping: once submits must stop, every submit not on the wire goes back to
the queue at once; a submit on the wire gets its answer journaled (the
supervisor gives those the grace of an interrupt). The stream to the follower
closes when the admission stream has closed and every submit has ended.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Literal

from anyio.abc import ObjectReceiveStream, ObjectSendStream

from ..apixo.client import ApixoClient, Grant
from ..apixo.limits import Priority, SlotsClosed
from ..clock import Clock, wait_until
from ..defaults import PATIENCE
from ..errors import (
    ApiError,
    Forbidden,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServerError,
    TransportError,
)
from ..events import Emitter, Failed, Retried, Throttled, Warned
from ..events import Submitted as Journaled
from ..journal import JobRow, Ledger, MarkRefused
from ..journal.unrecorded import SideFile
from ..outputs.paths import storage_failure
from ..retry import Backoff, Deadline, Patience
from .admission import Admitted, Permit
from .keypool import KeyAccount, KeyPool
from .stop import (
    UNREACHABLE_STEP,
    Level,
    Stop,
    StopKind,
    Stops,
    no_access,
    refusal_step,
    storage_stop,
)
from .turnaround import Turnaround

__all__ = ["Submitted", "Submitter"]

RequestType = Literal["async", "callback"]


@dataclass(frozen=True, slots=True)
class Submitted:
    """A job whose task id is journaled; its permit now belongs to the follower."""

    row: JobRow
    permit: Permit
    at_mono: float


class _NotSent(Exception):
    """Raised before a request leaves, when submits have stopped: nothing was sent."""


class _Refused(Exception):
    """The journal refused the mark (several runners): nothing was sent. ``retry``: this
    runner's lease is not live now (the mark is tried again once it may be); else the
    row is another runner's, and this one drops it."""

    def __init__(self, retry: bool) -> None:
        super().__init__()
        self.retry = retry


class Submitter:
    """Submits admitted jobs, each in a task of its own, and passes on their task ids."""

    def __init__(
        self,
        client: ApixoClient,
        ledger: Ledger,
        *,
        clock: Clock,
        stops: Stops,
        emit: Emitter,
        backoff: Backoff,
        callback_url: str | None,
        patience: Patience = PATIENCE,
        turnaround: Turnaround | None = None,
        pool: KeyPool | None = None,
    ) -> None:
        self._client = client
        #: several keys: each job is sent with the key admission gave it, and a refused
        #: key hands its job to another
        self._pool = pool if pool is not None and pool.pooled else None
        self._ledger = ledger
        self._clock = clock
        self._stops = stops
        self._emit = emit
        self._backoff = backoff
        #: how long a submit may get no answer at all before submits stop (exit 75)
        self._patience = patience
        self._callback_url = callback_url
        self._turnaround = turnaround or Turnaround()
        self._request_type: RequestType = "callback" if callback_url else "async"
        self._waiting: set[asyncio.Task[None]] = set()  # nothing of theirs is on the wire
        self._sending: set[asyncio.Task[None]] = set()  # request out, answer not journaled
        self.submitted = 0
        self.retries = 0
        self.spent_usd = 0.0
        stops.on(Level.SUBMITS, self._halt)

    @property
    def under_way(self) -> int:
        """Submits admitted and not yet ended (a callback may come before their task id)."""
        return len(self._waiting) + len(self._sending)

    async def run(
        self, admitted: ObjectReceiveStream[Admitted], out: ObjectSendStream[Submitted]
    ) -> None:
        async with out, admitted, asyncio.TaskGroup() as tg:
            async for item in admitted:
                task = tg.create_task(self._submit(item, out))
                self._waiting.add(task)
                task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._waiting.discard(task)
        self._sending.discard(task)

    def _halt(self) -> None:
        """Submits must stop: those not on the wire go back to the queue now."""
        for task in list(self._waiting):
            task.cancel()

    async def drain(self, grace: float) -> None:
        """Wait up to ``grace`` seconds (injected clock) for the submits on the wire."""
        deadline = self._clock.monotonic() + grace
        on_wire = sum(1 for t in self._sending if not t.done())
        if on_wire:
            # The run seems to hang after Ctrl-C otherwise: say what it waits for, and how long.
            self._emit(
                Warned(
                    message=f"stopping: waiting up to {grace:g} s for {on_wire} submit(s) on "
                    "the wire to be answered and journaled…"
                )
            )
        while True:
            # A task just done is still in the set until its done-callback has run.
            out: set[asyncio.Future[Any]] = {t for t in self._sending if not t.done()}
            if not out or not await wait_until(self._clock, out, deadline):
                return

    # -- one submit -------------------------------------------------------
    async def _submit(self, item: Admitted, out: ObjectSendStream[Submitted]) -> None:
        row, permit = item.row, item.permit
        task = asyncio.current_task()
        assert task is not None
        state = _Attempt(row)
        state.permit, state.account = permit, item.account
        try:
            task_id = await self._send_until_answered(state, task)
            permit = state.permit  # another key's, should its own have been refused
            if task_id is None:  # the job failed: its slot is free
                permit.release()
                return
            # Invariant 1: nothing happens with the id before it is committed. Shielded:
            # an interrupt now still lets the commit land (it runs regardless).
            assert state.recording is not None
            try:
                await asyncio.shield(state.recording)
            except Exception as exc:
                self._unrecorded(row, task_id, exc)
                why = storage_failure(exc)
                if why is None:
                    raise
                # A stop, not an exception: the submits still on the wire get their
                # answers (and their ids told) instead of being cancelled with this one.
                self._stops.request(storage_stop(why, paid_untold=True))
                permit.release()
                return
            permit.running()
        except _NotSent:
            await self._handed_back(state, state.permit)
            return
        except _Refused:
            state.permit.release()  # another runner's row: nothing sent, nothing to undo
            return
        except asyncio.CancelledError:
            if state.recording is not None:
                # The id is paid and its commit queued (it lands even now): say so, and
                # should the commit fail after all, say that too.
                self._announce(row, state)
                paid = state.task_id or ""
                state.recording.add_done_callback(partial(self._told_if_unrecorded, row, paid))
            elif not state.failed:
                # Awaited, so that its failure is told (see _handed_back); cancelled again
                # meanwhile, the write still lands (the journal runs what was queued).
                await self._handed_back(state, state.permit)
            raise
        self._announce(row, state)
        now = self._clock.wall()
        fresh = replace(
            row,
            task_id=task_id,
            submitted_at=now,
            request_type=self._request_type,
            key_fp=self._key_fp(state),
        )
        await out.send(Submitted(fresh, permit, self._clock.monotonic()))

    def _announce(self, row: JobRow, state: _Attempt) -> None:
        self.submitted += 1
        self.spent_usd += row.cost_usd or 0.0
        if state.account is not None:
            state.account.submitted += 1
            state.account.spent_usd += row.cost_usd or 0.0
        assert state.task_id is not None  # announced once its commit is queued
        self._emit(
            Journaled(row.id, task_id=state.task_id, model=row.model, key=self._key_fp(state))
        )

    def _key_fp(self, state: _Attempt) -> str | None:
        """The fingerprint the task is journaled under: a pool's key (None: the one key)."""
        if self._pool is None or state.account is None:
            return None
        return state.account.fingerprint

    def _client_of(self, state: _Attempt) -> ApixoClient:
        account = state.account
        if self._pool is None or account is None or account.client is None:
            return self._client
        return account.client

    def _retire(self, state: _Attempt, exc: ApiError) -> bool:
        """A pool's key refused (401/403, no balance): retired from submitting, told once;
        True when another key may take the job."""
        account = state.account
        if self._pool is None or account is None:
            return False
        why = f"{exc.status}: {exc.api_message or exc}"
        if self._pool.retire(account, why):
            self._emit(
                Warned(
                    key=account.fingerprint,
                    message=f"key {account.fingerprint} retired from submitting ({why}); "
                    f"its {account.slots.in_flight - 1} task(s) in flight are still followed, "
                    f"the other keys go on ({len(self._pool.submitting())} left)",
                )
            )
        return bool(self._pool.submitting())

    async def _other_key(self, state: _Attempt, task: asyncio.Task[None]) -> None:
        """The job's key was retired: its slot back, and a slot of another key taken."""
        assert self._pool is not None
        state.permit.release()
        self._sending.discard(task)
        self._waiting.add(task)
        if self._stops.reached(Level.SUBMITS):
            raise _NotSent()
        try:
            account = await self._pool.take()
        except SlotsClosed:
            raise _NotSent() from None
        state.account, state.permit = account, Permit(account.slots)

    async def _send_until_answered(self, state: _Attempt, task: asyncio.Task[None]) -> str | None:
        """The task id (its commit queued: ``state.recording``), or None once the job failed.

        Raises :class:`_NotSent` when submits have stopped and the job goes back."""
        row = state.row
        while True:
            send: asyncio.Future[str] | None = None
            client = self._client_of(state)
            try:
                grant = await client.grant(Priority.SUBMIT)
                state.send_began = False
                send = asyncio.ensure_future(self._send(state, task, grant, client))
                task_id = await send
            except asyncio.CancelledError:
                if send is not None and not state.send_began:
                    # Cancelled before the send began: the grant was never spent.
                    client.unused(grant)
                if (
                    send is not None
                    and send.done()
                    and not send.cancelled()
                    and send.exception() is None
                ):
                    # The answer came in the same turn as the cancel: keep the paid id.
                    self._record(state, send.result())
                raise
            except _Refused as exc:
                if not exc.retry:
                    raise
                # This runner's lease is not live (the database is away, or slow to
                # renew): nothing was sent; the same mark once it may be live again.
                await self._pause(task, self._backoff.delay(1))
                continue
            except RateLimited as exc:
                # Nothing was created. The client has slowed and paused the bucket for a
                # rate 429, which paces the next attempt; for the account's slot limit the
                # submit waits in line until a slot frees.
                state.on_wire = False
                state.outage = None
                state.attempt += 1
                self.retries += 1
                self._emit(Throttled(row.id, retry_after=exc.retry_after, slots=exc.slots))
                if exc.slots:
                    await self._wait_for_a_slot(state, task)
                continue
            except (ServerError, TransportError) as exc:
                # A reset or a gateway timeout may hide a created task; a refused
                # connection sent nothing.
                unclear = exc.sent if isinstance(exc, TransportError) else exc.status in (502, 504)
                if state.on_wire and unclear:
                    state.ambiguous = True
                state.on_wire = False
                state.attempt += 1
                self.retries += 1
                if not isinstance(exc, TransportError):
                    state.outage = None  # the API answered (an error)
                if isinstance(exc, TransportError):
                    # No answer at all: the API (or the way there) is down. That is no
                    # reason of the job's own: it waits, with capped backoff, for as
                    # long as the run's patience lasts, then the run stops (exit 75).
                    self._unreachable(state)
                elif self._backoff.gives_up(state.attempt):
                    await self._fail(state, "SUBMIT_ERROR", str(exc))
                    return None
                self._emit(Retried(row.id, call="submit", attempt=state.attempt, error=str(exc)))
                attempt = min(state.attempt, self._backoff.max_attempts)
                after = exc.retry_after if isinstance(exc, ServerError) else None
                await self._pause(task, self._backoff.delay(attempt, after))
                continue
            except ApiError as exc:
                state.on_wire = False
                if exc.fatal and self._retire(state, exc):
                    # Nothing was created: the job goes to a key that may still submit.
                    await self._other_key(state, task)
                    continue
                if exc.fatal:
                    reason = f"the API refused a submit: {exc}"
                    if self._pool is not None:
                        reason = f"every key is retired; the last refused a submit: {exc}"
                    if isinstance(exc, Forbidden):
                        # One route is closed to this key: say which (the next step says
                        # what to do about it).
                        reason = (
                            f"the API refused a submit: {no_access('submit', row.model)} ({exc})"
                        )
                    self._stops.request(
                        Stop(StopKind.FATAL, reason, fatal=str(exc), next_step=refusal_step(exc))
                    )
                    raise _NotSent() from None
                await self._fail(state, _fail_code(exc), exc.api_message)
                return None
            self._record(state, task_id)
            return task_id

    def _unreachable(self, state: _Attempt) -> None:
        """Count this submit's time without an answer; past the patience, stop submits."""
        if state.outage is None:
            state.outage = self._patience.start(self._clock)
        if not state.outage.expired():
            return
        reason = (
            f"the API gave no answer for {self._patience.in_minutes:g} min; nothing was lost: "
            "the same command resumes"
        )
        self._stops.request(Stop(StopKind.UNREACHABLE, reason, next_step=UNREACHABLE_STEP))
        raise _NotSent()

    async def _send(
        self, state: _Attempt, task: asyncio.Task[None], grant: Grant, client: ApixoClient
    ) -> str:
        """The submit itself, once granted: marked, checked against the stops and sent in
        one step of one task, so no stop can come between the last look and the request
        leaving. The grant is handed back if it is not sent."""
        state.send_began = True
        try:
            await self._ready_to_send(state, task)
        except BaseException:
            client.unused(grant)  # nothing was sent
            raise
        row = state.row
        return await client.submit(
            row.model,
            row.input,
            request_type=self._request_type,
            callback_url=self._callback_url,
            provider=row.provider,
            grant=grant,
        )

    async def _ready_to_send(self, state: _Attempt, task: asyncio.Task[None]) -> None:
        """Granted by the bucket, about to leave: stopped means not sent; else mark it."""
        if self._stops.reached(Level.SUBMITS):
            raise _NotSent()
        if not state.marked:
            # Marked before the await: the write is queued now and lands even if a stop
            # cancels this wait, so the hand-back (queued after it) must undo it.
            state.marked = True
            try:
                await self._ledger.mark_submitting(state.row.id, state.row.attempts + 1)
            except MarkRefused as exc:
                state.marked = False  # refused in the same statement: still queued
                raise _Refused(exc.retry) from None
            except Exception as exc:
                why = storage_failure(exc)
                if why is None:
                    raise
                state.marked = False  # the mark did not land: the job is still queued
                self._stops.request(storage_stop(why))
                raise _NotSent() from None
            if self._stops.reached(Level.SUBMITS):
                raise _NotSent()  # stopped while the mark was written: nothing sent yet
        elif self._ledger.runner is not None:
            # A resend (the last try got no usable answer), maybe long after the mark: it
            # too leaves only under a live lease and for a row still this runner's, or an
            # adopter's requeue of the row and this resend would both be paid.
            try:
                await self._ledger.mark_submitting(state.row.id, state.row.attempts + 1)
            except MarkRefused as exc:
                raise _Refused(exc.retry) from None
            except Exception as exc:
                why = storage_failure(exc)
                if why is None:
                    raise
                self._stops.request(storage_stop(why))
                raise _NotSent() from None
            if self._stops.reached(Level.SUBMITS):
                raise _NotSent()
        # From here the request is on the wire: a stop waits for its answer.
        if not state.on_wire_before:
            state.on_wire_before = True
            self._turnaround.left(self._clock.monotonic())
        state.on_wire = True
        self._waiting.discard(task)
        self._sending.add(task)

    async def _pause(self, task: asyncio.Task[None], seconds: float) -> None:
        """A backoff: nothing of this submit is on the wire meanwhile."""
        self._sending.discard(task)
        self._waiting.add(task)
        if self._stops.reached(Level.SUBMITS):
            raise _NotSent()
        await self._clock.sleep(seconds)

    async def _wait_for_a_slot(self, state: _Attempt, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self._waiting.add(task)
        if self._stops.reached(Level.SUBMITS):
            raise _NotSent()
        try:
            await state.permit.wait_for_a_slot()
        except SlotsClosed:
            if self._pool is None or self._stops.reached(Level.SUBMITS):
                raise _NotSent() from None
            # This key will free no slot (retired, or its tasks are left unfollowed):
            # the job goes to another key rather than back to the queue.
            await self._other_key(state, task)

    def _record(self, state: _Attempt, task_id: str) -> None:
        # Queued at once and committed even if this task is cancelled (AsyncJournal); a
        # durable write is never held back to gather company.
        state.on_wire = False
        state.task_id = task_id
        state.recording = self._ledger.record_task_id(
            state.row.id,
            task_id,
            self._request_type,
            state.possibly_duplicated,
            self._key_fp(state),
        )

    def _unrecorded(self, row: JobRow, task_id: str, exc: BaseException) -> None:
        """The journal refused a paid task's id (its disk is full): kept in the side file
        beside it (the next run adopts it: followed, never paid twice); should that fail
        too, the warning is the one place left, and says so."""
        side = SideFile(self._ledger.path)
        try:
            side.keep(row.id, task_id, self._request_type, self._clock.wall())
        except OSError as kept_exc:
            where = (
                f"nor could {side.path} keep it ({kept_exc.strerror or kept_exc}); keep this "
                f"line: the task is paid (`apixo-batch adopt JOBFILE {row.id} {task_id}` "
                "journals it)"
            )
        else:
            where = f"it is kept in {side.path}: the next run follows it"
        self._emit(
            Warned(
                row.id,
                task_id=task_id,
                message=f"job {row.id}: task {task_id} was created, but the journal "
                f"could not record it ({exc}); {where}",
            )
        )

    def _told_if_unrecorded(
        self, row: JobRow, task_id: str, recording: asyncio.Future[None]
    ) -> None:
        """A paid id's commit, left to land by a cancelled submit, failed: told all the same
        (a cancelled task has no caller left to raise it to)."""
        failed = None if recording.cancelled() else recording.exception()
        if failed is None:
            return
        self._unrecorded(row, task_id, failed)
        why = storage_failure(failed)
        if why is not None:
            self._stops.request(storage_stop(why, paid_untold=True))

    async def _handed_back(self, state: _Attempt, permit: Permit) -> None:
        """The job back in the queue; that write's failure is told: the journal's disk
        failing is the storage stop (the job stays `submitting`: the next run sends it
        again, counted as possibly duplicated), anything else goes on as it is."""
        try:
            await self._hand_back(state, permit)
        except Exception as exc:
            why = storage_failure(exc)
            if why is None:
                raise
            self._stops.request(storage_stop(why))

    def _hand_back(self, state: _Attempt, permit: Permit) -> asyncio.Future[None]:
        """An admitted job goes back to the queue unsent (or sent with no answer known)."""
        permit.release()
        if state.marked:
            # Cut off on the wire (an interrupt past the grace): a task may exist.
            dup = state.possibly_duplicated or state.on_wire
            return self._ledger.hand_back(state.row.id, dup)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def _fail(self, state: _Attempt, code: str, message: str) -> None:
        row = state.row
        state.failed = True  # queued now: a cancel from here on must not hand it back
        await self._ledger.fail_submit(row.id, code, message[:500], state.possibly_duplicated)
        self._emit(Failed(row.id, model=row.model, fail_code=code, fail_msg=message[:500]))


class _Attempt:
    """What one job's submit has been through so far."""

    __slots__ = (
        "account",
        "ambiguous",
        "attempt",
        "failed",
        "marked",
        "on_wire",
        "on_wire_before",
        "outage",
        "permit",
        "recording",
        "row",
        "send_began",
        "task_id",
    )

    def __init__(self, row: JobRow) -> None:
        self.row = row
        self.attempt = 0
        self.ambiguous = False  # an earlier attempt may have created a task
        self.marked = False  # `submitting` is (being) journaled
        self.on_wire = False  # a request is out and its answer not read
        self.on_wire_before = False  # its first attempt left (a slot's turnaround ended)
        self.recording: asyncio.Future[None] | None = None  # the task id's commit
        self.task_id: str | None = None
        self.send_began = False  # this attempt's send task ran (it hands its grant back)
        self.failed = False  # its failure is (being) journaled
        self.outage: Deadline | None = None  # from its first attempt in a row with no answer
        self.permit: Permit  # its slot (another key's, once its own key was retired)
        self.account: KeyAccount | None = None  # the pool's key it is sent with

    @property
    def possibly_duplicated(self) -> bool:
        return self.row.possibly_duplicated or self.ambiguous


def _fail_code(exc: ApiError) -> str:
    if isinstance(exc, InvalidRequest):
        return "INPUT_REJECTED"
    if isinstance(exc, NotFound):
        return "MODEL_NOT_FOUND"
    return f"HTTP_{exc.status}"
