"""Where results go: a local folder or an S3 location (``s3://BUCKET/PREFIX``).

The one type the job file, the command line, the plan and the run share for the
output: :data:`Destination`. Parsing says what is wrong in one line, before any
request; whether the bucket answers is for :mod:`apixo_batch.outputs.s3`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Destination", "S3Location", "is_s3", "parse_s3"]

SCHEME = "s3://"
# S3's bucket naming rules (AWS; Ceph, MinIO and R2 follow them): 3–63 characters of
# lower-case letters, digits, dots and hyphens, starting and ending with a letter or digit.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True, slots=True)
class S3Location:
    """A bucket and a key prefix ("" or ending in ``/``)."""

    bucket: str
    prefix: str = ""

    def key(self, name: str) -> str:
        """The object key of a file ``name`` (a path relative to the output)."""
        return self.prefix + name

    def url(self, name: str = "") -> str:
        return f"{SCHEME}{self.bucket}/{self.key(name)}"

    def __str__(self) -> str:
        return self.url()


#: a run's output: a local folder (absolute) or an S3 location
Destination = Path | S3Location


def is_s3(text: str) -> bool:
    return text[:5].lower() == SCHEME


def parse_s3(text: str) -> S3Location:
    """``s3://BUCKET[/PREFIX]``; ValueError with one line saying what is wrong."""
    if not is_s3(text):
        raise ValueError(f"{text!r} is not an s3:// URL")
    rest = text[len(SCHEME) :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"{text!r} names no bucket (s3://BUCKET/PREFIX)")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ValueError(
            f"{bucket!r} is not a valid bucket name (3 to 63 lower-case letters, digits, "
            "dots and hyphens)"
        )
    if "?" in prefix or "#" in prefix:
        raise ValueError(f"{text!r}: a prefix cannot hold '?' or '#'")
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"{text!r}: a prefix cannot hold '.' or '..' segments")
    return S3Location(bucket, "".join(p + "/" for p in parts))
