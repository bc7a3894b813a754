"""Fixtures of the OpenAMP-profile tests: a profile of its own per test, cleaned up after."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openamp_kit import unique_config

from amplink.platforms.openamp import OpenAmpConfig


@pytest.fixture
def config() -> Iterator[OpenAmpConfig]:
    """Unique shared memory name and socket path; both files are removed at teardown."""
    with unique_config() as cfg:
        yield cfg
