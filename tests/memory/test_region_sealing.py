"""A memfd region's size is sealed: the peer that gets its fd cannot shrink it (SIGBUS)."""

from __future__ import annotations

import os

import pytest

from amplink.memory import SharedRegion


def test_memfd_region_cannot_be_shrunk_or_grown_by_whoever_holds_the_fd():
    with SharedRegion.memfd(0x2000) as region:
        for size in (0, 0x1000, 0x4000):
            with pytest.raises(PermissionError):
                os.ftruncate(region.fd, size)
        region.write_u32(0x1ffc, 7)
        assert region.read_u32(0x1ffc) == 7
