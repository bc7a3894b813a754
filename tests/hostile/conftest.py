"""Fixtures of the hostile-peer tests: an in-process link with one bound channel."""

from __future__ import annotations

import pytest
from hostile_kit import close_link, open_link

from amplink.platforms.sim.layout import LinkConfig


@pytest.fixture
def link():
    lk = open_link(LinkConfig(num_buffers=8))
    try:
        yield lk
    finally:
        close_link(lk)
