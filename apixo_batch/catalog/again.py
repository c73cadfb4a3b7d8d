"""What a job sent again needs from the catalog: which fail codes say APIXO refused the
input itself (sending it unchanged would pay for the same refusal), and the seed of a
new take of a model that takes one. No I/O."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from .failcodes import FailClass, classify
from .models import get_model

__all__ = ["INPUT_REJECTED", "input_refused", "take_input"]

#: our own code for a submit answered 400 (the request's input refused before any task)
INPUT_REJECTED = "INPUT_REJECTED"


def input_refused(fail_code: str | None) -> bool:
    """The one rule for "the input itself was refused": a code of the ``input`` or
    ``content`` class (:mod:`.failcodes`: a bad image, a flagged prompt...) or a submit
    answered 400. The same input sent again is refused again (and paid again), so
    ``--retry-failed`` skips it unless it changed. A transient or undocumented code may
    pass on a second try."""
    if fail_code == INPUT_REJECTED:
        return True
    return classify(fail_code) in (FailClass.INPUT, FailClass.CONTENT)


def take_input(model: str, job_id: str, inp: Mapping[str, Any], take: int) -> dict[str, Any]:
    """The input of take number ``take`` (from 1) of a job: the job file's own for take 1;
    for a later take of a model that takes a ``seed``, a new seed derived from the job's
    id and the take, so the take is a new draw and the same take is the same draw again."""
    out = dict(inp)
    spec = get_model(model)
    if take <= 1 or spec is None or "seed" not in spec.input_keys:
        return out
    digest = hashlib.sha256(f"{job_id}:take{take}".encode()).digest()
    out["seed"] = int.from_bytes(digest[:4], "big") % 2**31
    return out
