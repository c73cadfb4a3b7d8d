"""Where a run's results land: a local folder, or S3-compatible object storage.

:mod:`.location` parses and names the destination (no I/O, no optional
dependency); :mod:`.local` and :mod:`.s3` bring a result there whole and verified.
The S3 side needs the ``s3`` extra (aiobotocore), imported only when an
``s3://`` output is used.
"""

from .location import Destination, S3Location, is_s3, parse_s3

__all__ = ["Destination", "S3Location", "is_s3", "parse_s3"]
