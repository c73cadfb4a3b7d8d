"""A run on a journal in PostgreSQL shares its outputs with the campaign's other runners.

Wired once the stages exist, before the first result lands (and so before the S3
start-up sweep): the lander reserves its file names where every runner sees them,
and an ``s3://`` output records its multipart uploads with their runner, so that a
runner starting later aborts only the uploads of runners that are gone
(``journal/pg/outputs.py``). A journal file needs neither: one run holds it.
"""

from __future__ import annotations

from collections.abc import Callable

from ..journal import Ledger
from ..outputs.output import Output, S3Output
from .lander import Lander

__all__ = ["share_outputs"]


def share_outputs(
    ledger: Ledger,
    lander: Lander,
    output: Output,
    runner: Callable[[], int | None] = lambda: None,
) -> None:
    """With ``ledger`` in PostgreSQL: names reserved in the shared journal, uploads
    recorded with ``runner`` (this run's ``runners`` row; None while it holds the
    campaign alone). Nothing for a journal file."""
    from ..journal.pg.ledger import PgLedger
    from ..journal.pg.outputs import PgUploads, SharedNames

    if not isinstance(ledger, PgLedger):
        return
    lander.names = SharedNames(ledger.executor, ledger.campaign)
    if isinstance(output, S3Output):
        output.store.uploads = PgUploads(ledger.executor, ledger.campaign, runner)
