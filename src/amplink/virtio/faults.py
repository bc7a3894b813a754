"""Counting what a misbehaving peer wrote into shared memory."""

from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger("amplink.faults")


class FaultCounter:
    """Counts protocol faults by reason; logs the first of each reason at WARNING."""

    __slots__ = ("counts", "where")

    def __init__(self, where: str) -> None:
        self.where = where
        self.counts: Counter[str] = Counter()

    def __call__(self, reason: str) -> None:
        first = reason not in self.counts
        self.counts[reason] += 1
        if first:
            log.warning("%s: peer protocol fault: %s (further ones are only counted)",
                        self.where, reason)

    @property
    def total(self) -> int:
        return sum(self.counts.values())
