"""The journal: one SQLite row per job, the single source of truth across runs.

===============  ==========================================================
module           what it holds
===============  ==========================================================
``states``       the job states and the one table of legal changes
``rows``         the jobs table declared once (:class:`JobRow`), :class:`Change`
``schema``       the schema's versions and the migrations between them
``connection``   the SQLite connection: lock, transactions, durability, reads
``changes``      the state changes, of one job or in bulk, as the table allows
``reconcile``    the start of a run: leftovers requeued, the job file synced in
``learned``      completion times per clock key, kept across runs
``store``        :class:`Journal`: reads and spend
``naming``       result file names and the registry of their owners
``thread``       :class:`AsyncJournal`: the thread that owns the connection
``ledger``       :class:`Ledger`: what the stages of a run may ask, by name
``local``        :class:`SqliteLedger`: the ledger on the journal's thread
``pg``           the journal in PostgreSQL (``--state postgresql://…``)
``runs``         the latest run and the latest that did work, for the review page
``decisions``    keep or reject from the review page, with a note, who and when
===============  ==========================================================
"""

from __future__ import annotations

from pathlib import Path

from ..clock import Clock
from .clash import OUTPUT_EXISTS, Clash, output_clashes
from .decisions import KEEP, REJECT, Decision
from .ledger import Adoption, Landed, Lease, Ledger, MarkRefused, RunnerSpec, Totals, this_node
from .local import SqliteLedger
from .naming import FileRegistry, NameBook, hold_name, result_filename
from .pg.url import is_database, needs_driver
from .reconcile import NewJob, SyncResult, jobs_of
from .rows import Change, JobRow
from .runs import LastRuns, RunRecord, last_runs
from .states import TRANSITIONS, JobState
from .store import DoneFiles, Journal
from .thread import AsyncJournal, InlineJournal, JournalExecutor

__all__ = [
    "KEEP",
    "OUTPUT_EXISTS",
    "REJECT",
    "TRANSITIONS",
    "Adoption",
    "AsyncJournal",
    "Change",
    "Clash",
    "Decision",
    "DoneFiles",
    "FileRegistry",
    "InlineJournal",
    "JobRow",
    "JobState",
    "Journal",
    "JournalExecutor",
    "Landed",
    "LastRuns",
    "Lease",
    "Ledger",
    "MarkRefused",
    "NameBook",
    "NewJob",
    "RunRecord",
    "RunnerSpec",
    "SqliteLedger",
    "SyncResult",
    "Totals",
    "hold_name",
    "jobs_of",
    "journal_exists",
    "last_runs",
    "open_ledger",
    "output_clashes",
    "result_filename",
    "this_node",
]


async def open_ledger(
    state: Path | str,
    campaign: str,
    clock: Clock,
    *,
    anchor: Path,
    commit_delay: float = 0.0,
    runner: RunnerSpec | None = None,
) -> Ledger:
    """The run's ledger: a ``postgresql://`` URL is a :class:`~.pg.ledger.PgLedger`
    (``anchor``: the local path beside which its side file lives; ``runner``: this
    process registered as one of the campaign's runners), a path a
    :class:`SqliteLedger` on the journal's thread."""
    if isinstance(state, str) and is_database(state):
        needs_driver(state)
        from .pg.ledger import open_pg_ledger  # psycopg: only with the pg extra

        return await open_pg_ledger(
            state, campaign, clock, anchor, commit_delay=commit_delay, runner=runner
        )
    journal = AsyncJournal(Journal(Path(state)), commit_delay=commit_delay)
    return SqliteLedger(journal, clock)


async def journal_exists(url: str) -> bool:
    """True if the database at ``url`` may hold a journal already (a campaign in it, or it
    cannot be asked): nothing is created to find out."""
    needs_driver(url)
    from .pg.transfer import holds_campaign

    return await holds_campaign(url)
