"""The journal: one SQLite row per job, the single source of truth across runs.

Every state change lands here first (:meth:`Journal.transition`, which refuses
what :mod:`.states` does not allow). The task id of a submit is committed
durably before the run does anything else with it, so a kill -9, a reboot or a
CI cancel never forgets a paid task. The connection, its lock and durability
are :mod:`.connection`'s; the state changes :mod:`.changes`'; following the job
file is :mod:`.reconcile`'s; completion times are :mod:`.learned`'s. Here: the
reads and spend accounting.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from typing import Any, NamedTuple

from ..planning.kind import Kind
from .learned import LearnedClocks
from .naming import name_owners
from .reconcile import Reconcile
from .rows import OUTPUT_COLUMNS, JobRow, OutputRow, json_list, output_row
from .rows import SELECT as _SELECT
from .states import JobState

__all__ = ["FILE_STAMP", "DoneFiles", "Journal"]

S = JobState
#: the meta key of the job file's stamp at the last sync
FILE_STAMP = "job_file_stamp"


class DoneFiles(NamedTuple):
    """A ``done`` job's files as journaled (paths relative to the output folder)."""

    id: str
    files: tuple[str, ...]
    #: the files' total size
    bytes: int | None
    sha256: tuple[str, ...]


class Journal(Reconcile, LearnedClocks):
    """Synchronous journal on one SQLite connection. Not thread-safe: one thread uses it."""

    # -- reads ----------------------------------------------------------------
    def get(self, job_id: str) -> JobRow | None:
        row = self._db.execute(f"SELECT {_SELECT} FROM jobs WHERE id=?", (job_id,)).fetchone()
        return None if row is None else JobRow.from_sql(row)

    def file_owners(self) -> dict[str, tuple[str, ...]]:
        """{casefolded file name: the jobs it belongs to} for every name a job holds.

        A job holds the files journaled as landed, under whatever template named
        them, and its output name while it may still write there: its paid task may
        still bring a result (submitted or succeeded), gone from the file or not, or
        it is in the job file and not finished (done and expired jobs write nothing
        more: after a template change, their new name is free). A name held by two
        jobs lists both.
        """
        return name_owners(self.output_rows(order=False))

    def output_rows(self, *, order: bool = True, holders: bool = False) -> Iterator[OutputRow]:
        """Every job as the check of names sees it (:data:`~.rows.OutputRow`: the name its
        take lands at, its files with earlier takes'), in file order (``order``).
        ``holders``: only the jobs that may hold a name (files landed now or by an earlier
        take, a task on its way or that brought results), what a check of other jobs'
        names needs."""
        where = (
            " WHERE (files IS NOT NULL AND files NOT IN ('', '[]')) "
            "OR (earlier_files IS NOT NULL AND earlier_files NOT IN ('', '[]')) "
            "OR state IN ('submitting', 'submitted', 'succeeded') "
            "OR (result_urls IS NOT NULL AND result_urls NOT IN ('', '[]'))"
            if holders
            else ""
        )
        by = " ORDER BY idx, id" if order else ""
        for values in self._db.execute(
            f"SELECT {OUTPUT_COLUMNS}, CASE WHEN result_urls IS NULL OR result_urls = '' "
            f"THEN NULL ELSE json_array_length(result_urls) END FROM jobs{where}{by}"
        ):
            yield output_row(*values)

    def by_task(self, task_id: str) -> JobRow | None:
        row = self._db.execute(f"SELECT {_SELECT} FROM jobs WHERE task_id=?", (task_id,)).fetchone()
        return None if row is None else JobRow.from_sql(row)

    def known_task_ids(self, task_ids: Collection[str]) -> set[str]:
        """Those of ``task_ids`` this journal holds: a job's task, or one it had before
        (``--retry-failed`` keeps a first task in ``task_history``)."""
        known: set[str] = set()
        ids = list(task_ids)
        for start in range(0, len(ids), 400):
            part = ids[start : start + 400]
            marks = ",".join("?" * len(part))
            for (task_id,) in self._db.execute(
                f"SELECT task_id FROM task_history WHERE task_id IN ({marks}) "
                f"UNION SELECT task_id FROM jobs WHERE task_id IN ({marks})",
                (*part, *part),
            ):
                known.add(task_id)
        return known

    def page(
        self,
        states: Sequence[JobState],
        after_idx: int,
        limit: int,
        *,
        after_id: str | None = None,
        file_only: bool = True,
    ) -> list[JobRow]:
        """Up to ``limit`` jobs in the given states, in file order, after (``after_idx``,
        ``after_id``). ``file_only=False`` includes jobs no longer in the job file (paid
        work is followed whatever the file says now)."""
        marks = ",".join("?" * len(states))
        scope = "AND in_file=1 " if file_only else ""
        # Without after_id: strictly after the idx. With it: after (idx, id), so that
        # removed jobs sharing an idx with a file job are not skipped.
        tie = "" if after_id is None else "OR (idx = ? AND id > ?)"
        tie_args: tuple[Any, ...] = () if after_id is None else (after_idx, after_id)
        rows = self._db.execute(
            f"SELECT {_SELECT} FROM jobs WHERE state IN ({marks}) "
            f"AND (idx > ? {tie}) {scope}ORDER BY idx, id LIMIT ?",
            (*[s.value for s in states], after_idx, *tie_args, limit),
        ).fetchall()
        return [JobRow.from_sql(r) for r in rows]

    def queued_kinds(self) -> list[Kind]:
        """The kinds of queued file jobs, in the file order of each kind's first job."""
        rows = self._db.execute(
            "SELECT model, json_extract(input_json, '$.duration') AS d, "
            "json_extract(input_json, '$.resolution') AS r FROM jobs "
            "WHERE state=? AND in_file=1 GROUP BY model, d, r ORDER BY MIN(idx)",
            (JobState.QUEUED.value,),
        ).fetchall()
        return [Kind(str(m), d, r) for m, d, r in rows]

    def queued_runs(self) -> list[tuple[Kind, int]]:
        """Queued file jobs in file order as runs of one kind: (kind, jobs in a row).
        What a forecast needs, in little memory."""
        runs: list[tuple[Kind, int]] = []
        last: tuple[Any, ...] | None = None
        for drives in self._db.execute(
            "SELECT model, json_extract(input_json, '$.duration'), "
            "json_extract(input_json, '$.resolution') FROM jobs "
            "WHERE state=? AND in_file=1 ORDER BY idx, id",
            (JobState.QUEUED.value,),
        ):
            if drives == last:  # a Kind only per run: 100k queued jobs are a few runs
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
                continue
            last = drives
            model, duration, resolution = drives
            runs.append((Kind(str(model), duration, resolution), 1))
        return runs

    def queued_brief(self) -> list[tuple[str, str, float | None, Kind]]:
        """(id, model, cost, kind) of every queued file job, in file order: what a selected
        run's estimate needs (``--only``, ``--model``, ``--limit``)."""
        kinds: dict[tuple[Any, ...], Kind] = {}
        out: list[tuple[str, str, float | None, Kind]] = []
        for job_id, model, cost, duration, resolution in self._db.execute(
            "SELECT id, model, cost_usd, json_extract(input_json, '$.duration'), "
            "json_extract(input_json, '$.resolution') FROM jobs "
            "WHERE state=? AND in_file=1 ORDER BY idx, id",
            (JobState.QUEUED.value,),
        ):
            key = (model, duration, resolution)
            kind = kinds.get(key)
            if kind is None:
                kind = kinds[key] = Kind(str(model), duration, resolution)
            out.append((str(job_id), str(model), cost, kind))
        return out

    def queued_page_of_kind(
        self, kind: Kind, after_idx: int, after_id: str, limit: int
    ) -> list[JobRow]:
        """Up to ``limit`` queued file jobs of one kind (``queued_kinds``), in file order,
        after (``after_idx``, ``after_id``)."""
        model, duration, resolution = kind.model, kind.duration, kind.resolution
        rows = self._db.execute(
            f"SELECT {_SELECT} FROM jobs WHERE state=? AND in_file=1 AND model=? "
            "AND json_extract(input_json, '$.duration') IS ? "
            "AND json_extract(input_json, '$.resolution') IS ? "
            "AND (idx > ? OR (idx = ? AND id > ?)) ORDER BY idx, id LIMIT ?",
            (JobState.QUEUED.value, model, duration, resolution, after_idx, after_idx, after_id,
             limit),
        ).fetchall()  # fmt: skip
        return [JobRow.from_sql(r) for r in rows]

    def in_states(self, states: Sequence[JobState]) -> list[JobRow]:
        """Every job in these states, file jobs first (bounded by what is in flight)."""
        marks = ",".join("?" * len(states))
        rows = self._db.execute(
            f"SELECT {_SELECT} FROM jobs WHERE state IN ({marks}) ORDER BY in_file DESC, idx",
            tuple(s.value for s in states),
        ).fetchall()
        return [JobRow.from_sql(r) for r in rows]

    def iter_done_files(self) -> Iterator[DoneFiles]:
        """Every ``done`` job's journaled files, file jobs first, in file order: only the
        columns a check of the disk needs (100k rows in a fraction of a second)."""
        for job_id, files, size, sha256 in self._db.execute(
            "SELECT id, files, bytes, sha256 FROM jobs WHERE state='done' "
            "ORDER BY in_file DESC, idx, id"
        ):
            yield DoneFiles(job_id, json_list(files), size, json_list(sha256))

    def iter_all(self, batch: int = 2000) -> Iterator[JobRow]:
        """Every job, file jobs in file order first, then jobs no longer in the file."""
        for in_file in (1, 0):
            # Page on (idx, id): jobs dropped from different versions of the file may
            # share an idx, and a tie on a page boundary must not be skipped.
            last_idx, last_id = -1, ""
            while True:
                rows = self._db.execute(
                    f"SELECT {_SELECT} FROM jobs WHERE in_file=? AND "
                    "(idx > ? OR (idx = ? AND id > ?)) ORDER BY idx, id LIMIT ?",
                    (in_file, last_idx, last_idx, last_id, batch),
                ).fetchall()
                if not rows:
                    break
                for r in rows:
                    yield JobRow.from_sql(r)
                last_idx, last_id = int(rows[-1][1]), str(rows[-1][0])

    def file_stamp(self) -> str | None:
        """The stamp of the job file the journal was last synced from (``Campaign.stamp``)."""
        return self.get_meta(FILE_STAMP)

    def file_ids(self) -> set[str]:
        """The ids of the jobs the job file held when last synced in."""
        return {str(r[0]) for r in self._db.execute("SELECT id FROM jobs WHERE in_file=1")}

    def plan_rows(self) -> Iterator[tuple[Any, ...]]:
        """What ``plan`` compares with the job file, in one SELECT, file jobs in file order:
        (id, state, input hash, has a task id, fail code, cost, in the file, kind, filename,
        the inputs price and clock read, take)."""
        kinds: dict[tuple[Any, ...], tuple[Kind, dict[str, Any]]] = {}
        for jid, state, h, task, code, cost, in_file, filename, take, *drives in self._db.execute(
            "SELECT id, state, input_hash, task_id IS NOT NULL, fail_code, cost_usd, in_file, "
            "filename, take, model, json_extract(input_json, '$.duration'), "
            "json_extract(input_json, '$.resolution'), json_extract(input_json, '$.mode'), "
            "json_extract(input_json, '$.sound') FROM jobs ORDER BY in_file DESC, idx, id"
        ):
            key = tuple(drives)
            known = kinds.get(key)
            if known is None:
                model, duration, resolution, mode, sound = drives
                kind = Kind(str(model), duration, resolution)
                sample = dict(kind.drives)
                if mode is not None:
                    sample["mode"] = mode
                if sound is not None:
                    sample["sound"] = bool(sound)  # SQLite's JSON reads a boolean as 0 or 1
                known = kinds[key] = (kind, sample)
            yield (
                str(jid),
                str(state),
                str(h),
                bool(task),
                code,
                cost,
                bool(in_file),
                known[0],
                str(filename),
                known[1],
                int(take),
            )

    def counts(self) -> dict[str, int]:
        return {
            str(state): int(n)
            for state, n in self._db.execute(
                "SELECT state, count(*) FROM jobs WHERE in_file=1 OR task_id IS NOT NULL "
                "GROUP BY state"
            )
        }

    def queued_cut_off(self) -> int:
        """Queued file jobs flagged possibly duplicated: a submit of theirs was cut off."""
        row = self._db.execute(
            "SELECT count(*) FROM jobs WHERE state='queued' AND possibly_duplicated=1 "
            "AND (in_file=1 OR task_id IS NOT NULL)"
        ).fetchone()
        return int(row[0])

    def counts_by_model(self) -> dict[str, dict[str, int]]:
        """Jobs per model and state (for progress rows)."""
        out: dict[str, dict[str, int]] = {}
        for model, state, n in self._db.execute(
            "SELECT model, state, count(*) FROM jobs WHERE in_file=1 OR task_id IS NOT NULL "
            "GROUP BY model, state"
        ):
            out.setdefault(str(model), {})[str(state)] = int(n)
        return out

    def totals(self) -> dict[str, float]:
        row = self._db.execute(
            "SELECT count(*), coalesce(sum(possibly_duplicated), 0) FROM jobs"
        ).fetchone()
        # Every task ever journaled was paid for, also the first task of a job that
        # --retry-failed sent again (its task_id is cleared; its history row stays).
        paid = self._db.execute(
            "SELECT coalesce(sum(coalesce(j.cost_usd, 0)), 0), "
            "count(DISTINCT CASE WHEN j.cost_usd IS NULL THEN j.id END) "
            "FROM task_history h JOIN jobs j ON j.id = h.job_id"
        ).fetchone()
        return {
            "jobs": float(row[0]),
            "possibly_duplicated": float(row[1]),
            "spent_known_usd": float(paid[0]),
            "spent_unknown_jobs": float(paid[1]),
        }

    def queued_cost(self) -> tuple[float, int, int]:
        """(known estimated USD, jobs of unknown price, jobs) of what is left to submit."""
        row = self._db.execute(
            "SELECT coalesce(sum(cost_usd), 0), "
            "coalesce(sum(CASE WHEN cost_usd IS NULL THEN 1 END), 0), count(*) "
            "FROM jobs WHERE state=? AND in_file=1",
            (S.QUEUED.value,),
        ).fetchone()
        return float(row[0]), int(row[1]), int(row[2])
