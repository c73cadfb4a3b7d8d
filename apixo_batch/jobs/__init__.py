"""The job file: a YAML campaign, optional CSV/JSONL rows, validated into jobs.

:func:`load_campaign` checks everything in one streaming pass (file shape,
every job against its model, unique ids and output file names) and raises
:class:`~apixo_batch.errors.JobFileError` listing every problem. The
:class:`Campaign` it returns keeps only what it takes to stream the jobs
again with :meth:`Campaign.iter_jobs`, so a 100,000-row CSV never sits in
memory as 100,000 objects. ``docs/jobfile.md`` is the user's reference.
"""

from ._base import Job, JobGroup, input_hash
from ._campaign import Campaign, load_campaign

__all__ = ["Campaign", "Job", "JobGroup", "input_hash", "load_campaign"]
