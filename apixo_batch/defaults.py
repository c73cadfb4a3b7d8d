"""Defaults defined once: the CLI, the Python API and the run all read them here."""

from __future__ import annotations

from pathlib import Path

from .location import S3Location
from .retry import Backoff, Patience

__all__ = [
    "DEFAULT_BASE_URL",
    "DOWNLOAD_BACKOFF",
    "GRACE_S",
    "LEASE_S",
    "MAX_CONCURRENT",
    "MAX_WAIT_MIN",
    "ORDERS",
    "PATIENCE",
    "RPM",
    "STATE_FILE",
    "STATE_FOLDER",
    "SUBMIT_BACKOFF",
    "state_path",
]

DEFAULT_BASE_URL = "https://api.apixo.ai/api/v1"
#: tasks in flight and requests a minute: a tenth under the API's documented limits
MAX_CONCURRENT = 900
RPM = 9_000
#: which queued jobs start first: the longest expected generations (so that the last
#: wave is short and slots are not left idle while a long one ends), or file order
ORDERS = ("longest", "file")
#: minutes one task is followed in a run before it is left pending for the next
MAX_WAIT_MIN = 30.0
#: --max-wait as a patience: a task followed, or an outage of the API or a file host
#: waited through, for this long before the run leaves it
PATIENCE = Patience.minutes(MAX_WAIT_MIN)
#: several runners on one PostgreSQL campaign: a runner's lease (renewed every third of
#: it), and the grace a silent runner gets before its work is adopted: longer than a
#: submit's HTTP timeout (30 s) and an interrupt's grace (3 s), so that whatever it had
#: on the wire is answered or timed out by then
LEASE_S = 30.0
GRACE_S = 35.0
#: the journal's file name in the output folder, unless --state says otherwise
STATE_FILE = ".apixo-batch.sqlite"
#: where the journal of a run to object storage lives: this folder beside the job file
STATE_FOLDER = ".apixo-batch"
#: submits and polls: about four minutes of patience before a submit gives up
SUBMIT_BACKOFF = Backoff(base=1.0, cap=60.0, max_attempts=8)
#: file downloads: about a minute of patience before a result is left for `download`
DOWNLOAD_BACKOFF = Backoff(base=0.5, cap=30.0, max_attempts=6)


def state_path(output: Path | S3Location, job_file: Path, name: str) -> Path:
    """Where a campaign's journal lives when --state does not say: in its output folder,
    or, when the output is object storage, in ``.apixo-batch/<name>.sqlite`` beside the
    job file (the journal is always a local file)."""
    if isinstance(output, Path):
        return output / STATE_FILE
    return job_file.parent / STATE_FOLDER / f"{name}.sqlite"
