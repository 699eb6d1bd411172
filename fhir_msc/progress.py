"""How far a job has got: the one progress protocol of fhir-msc's jobs and their loops."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import TypeVar

log = logging.getLogger("fhir_msc")
T = TypeVar("T")


class Progress:
    """Receives a job's stages and how far each has got; this base class only logs each stage.

    A job calls ``start(label, total, unit)`` when a stage begins (``total`` None when it is
    not known) and ``advance(n)`` as units are done. ``active`` says whether anyone watches
    the totals, so that work done only to find one (counting lines) can be skipped.
    """

    active = False

    def start(self, label: str, total: int | None = None, unit: str = "resources") -> None:
        log.info("%s%s", label, f" ({total:,} {unit})" if total is not None else "")

    def advance(self, n: int = 1) -> None:
        """``n`` more units of the current stage are done."""

    def each(self, items: Iterable[T]) -> Iterator[T]:
        """Yield ``items``, advancing by one as the caller finishes with each."""
        for item in items:
            yield item
            self.advance()


NO_PROGRESS = Progress()
