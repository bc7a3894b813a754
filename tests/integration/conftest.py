"""Fixtures of the multi-process tests: simulated processors that are always stopped."""

from __future__ import annotations

import pytest
from sim_kit import stop_quietly

from amplink import SimProcessor


@pytest.fixture
def sim():
    """``sim(firmware, **options)`` starts a SimProcessor; every one is stopped at the end."""
    started: list[SimProcessor] = []

    def start(firmware: str, **options) -> SimProcessor:
        options.setdefault("boot_timeout", 10.0)
        proc = SimProcessor(firmware, **options)
        started.append(proc)
        proc.start()
        return proc

    try:
        yield start
    finally:
        for proc in started:
            stop_quietly(proc)
