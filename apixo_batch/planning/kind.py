"""The kind of a task: its model and the inputs its clock reads.

The catalog's clocks read nothing but ``duration`` and ``resolution``, so tasks of one
kind take alike: completion times are learned per kind (:attr:`Kind.key`, the key the
journal stores them under), the start order ranks kinds (:mod:`.order`), and the
journal groups queued jobs by kind to read them in that order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..catalog.models import Clock, get_model

__all__ = ["Kind"]


@dataclass(frozen=True, slots=True)
class Kind:
    """A model and what drives its generation time; None where the input leaves it out."""

    model: str
    #: as the job's JSON holds them (an int, a string such as "1080p"), compared as such
    duration: Any = None
    resolution: Any = None

    @classmethod
    def of(cls, model: str, inp: Mapping[str, Any]) -> Kind:
        return cls(model, inp.get("duration"), inp.get("resolution"))

    @property
    def key(self) -> str:
        """The learned-completion key (``kling-2-6:5:``): journaled, so its form stays."""
        duration = "" if self.duration is None else self.duration
        resolution = "" if self.resolution is None else self.resolution
        return f"{self.model}:{duration}:{resolution}"

    @property
    def drives(self) -> dict[str, Any]:
        """The inputs the model's clock reads, absent ones left out."""
        drives = {"duration": self.duration, "resolution": self.resolution}
        return {k: v for k, v in drives.items() if v is not None}

    def clock(self) -> Clock | None:
        """The catalog's clock of this kind (None for a model not in the catalog)."""
        spec = get_model(self.model)
        return None if spec is None else spec.clock(self.drives)
