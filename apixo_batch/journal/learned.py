"""Learned clocks: how long generations took, per clock key, kept across runs."""

from __future__ import annotations

from .connection import Connection

__all__ = ["LearnedClocks"]


class LearnedClocks(Connection):
    """Completion times (unscaled seconds) per clock key (model, duration, resolution)."""

    def record_completion(self, clock_key: str, seconds: float, now: float) -> None:
        self._db.execute(
            "INSERT INTO completions(clock_key, seconds, at) VALUES (?,?,?)",
            (clock_key, seconds, now),
        )

    def recent_completions(self, clock_key: str, limit: int = 500) -> list[float]:
        rows = self._db.execute(
            "SELECT seconds FROM completions WHERE clock_key=? ORDER BY at DESC LIMIT ?",
            (clock_key, limit),
        ).fetchall()
        return [float(r[0]) for r in rows]

    def learned_completions(self, keep: int = 500) -> dict[str, list[float]]:
        """The latest completion times per clock key (oldest first); older ones are pruned
        (a write: it runs in a transaction, never in :meth:`~.Connection.reading`)."""
        out: dict[str, list[float]] = {}
        keys = [r[0] for r in self._db.execute("SELECT DISTINCT clock_key FROM completions")]
        with self.transaction() as db:
            for key in keys:
                rows = db.execute(
                    "SELECT seconds, at FROM completions WHERE clock_key=? "
                    "ORDER BY at DESC, rowid DESC LIMIT ?",
                    (key, keep),
                ).fetchall()
                out[key] = [float(r[0]) for r in reversed(rows)]
                if len(rows) == keep:
                    db.execute(
                        "DELETE FROM completions WHERE clock_key=? AND rowid NOT IN "
                        "(SELECT rowid FROM completions WHERE clock_key=? "
                        "ORDER BY at DESC, rowid DESC LIMIT ?)",
                        (key, key, keep),
                    )
        return out
