"""The journal: one SQLite row per job, the single source of truth across runs.

===============  ==========================================================
module           what it holds
===============  ==========================================================
``states``       the job states and the one table of legal changes
``rows``         the tables, and :class:`JobRow`
``connection``   the SQLite connection: lock, transactions, durability
``reconcile``    the journal brought in line with the job file
``learned``      completion times per clock key, kept across runs
``store``        :class:`Journal`: reads, spend, the state change itself
``naming``       result file names and the registry of their owners
``thread``       :class:`AsyncJournal`: the thread that owns the connection
``ledger``       :class:`Ledger`: what the stages of a run may ask, by name
===============  ==========================================================
"""

from __future__ import annotations

from .ledger import Landed, Ledger, Totals
from .naming import FileRegistry, hold_name, result_filename
from .reconcile import NewJob, SyncResult, jobs_of
from .rows import JobRow
from .states import TRANSITIONS, JobState
from .store import Journal
from .thread import AsyncJournal, InlineJournal, JournalExecutor

__all__ = [
    "TRANSITIONS",
    "AsyncJournal",
    "FileRegistry",
    "InlineJournal",
    "JobRow",
    "JobState",
    "Journal",
    "JournalExecutor",
    "Landed",
    "Ledger",
    "NewJob",
    "SyncResult",
    "Totals",
    "hold_name",
    "jobs_of",
    "result_filename",
]
