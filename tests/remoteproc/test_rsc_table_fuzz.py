"""Property tests: build -> parse -> build is stable; hostile tables raise only FirmwareError."""

from __future__ import annotations

import logging
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amplink.errors import FirmwareError
from amplink.remoteproc.rsc_table import (
    Carveout,
    DevMem,
    ResourceTable,
    Trace,
    UnknownResource,
    VendorResource,
)
from amplink.virtio.vdev import VdevEntry, VringEntry

U32 = st.integers(0, 0xFFFF_FFFF)
NAMES = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=31).filter(
    lambda s: len(s.encode()) < 32
)
POW2_ALIGN = st.integers(0, 31).map(lambda k: 1 << k)
POW2_NUM = st.integers(0, 15).map(lambda k: 1 << k)

VRINGS = st.builds(VringEntry, U32, POW2_ALIGN, POW2_NUM, U32, U32)
VDEVS = st.builds(
    lambda words, status, vrings, config: VdevEntry(
        *words, config_len=len(config), status=status, vrings=vrings, config=config
    ),
    st.tuples(U32, U32, U32, U32),
    st.integers(0, 255),
    st.lists(VRINGS, max_size=2),
    st.binary(max_size=24),
)
KNOWN = st.one_of(
    st.builds(Carveout, U32, U32, U32, U32, st.just(0), NAMES),
    st.builds(DevMem, U32, U32, U32, U32, st.just(0), NAMES),
    st.builds(Trace, U32, U32, st.just(0), NAMES),
    VDEVS,
)
OTHER = st.one_of(
    st.builds(VendorResource, st.integers(128, 512), st.binary(max_size=24)),
    st.builds(
        UnknownResource,
        st.integers(4, 127) | st.integers(513, 0xFFFF_FFFF),
        st.binary(max_size=24),
    ),
)
TABLES = st.builds(
    lambda entries, min_size: ResourceTable(entries, min_size=min_size),
    st.lists(KNOWN | OTHER, max_size=8),
    st.integers(0, 700),
)

FAST = settings(
    max_examples=200, derandomize=True, database=None, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(autouse=True)
def _quiet_unknown_types(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="amplink.remoteproc.rsc_table")


@FAST
@given(TABLES)
def test_build_parse_build_is_identical(table: ResourceTable) -> None:
    first = table.build()
    parsed = ResourceTable.parse(first)
    assert parsed.entry_offsets == table.entry_offsets
    assert parsed.build() == first


@FAST
@given(st.lists(KNOWN, max_size=8))
def test_known_entries_parse_back_equal(entries: list) -> None:
    table = ResourceTable(entries)
    assert ResourceTable.parse(table.build()).entries == entries


def _check_hostile(data: bytes) -> None:
    """Parsing either succeeds (and the result is stable) or raises FirmwareError only."""
    start = time.perf_counter()
    try:
        parsed = ResourceTable.parse(data)
    except FirmwareError:
        pass
    else:
        rebuilt = parsed.build()
        assert ResourceTable.parse(rebuilt).build() == rebuilt
    assert time.perf_counter() - start < 0.5


INTERESTING_U32 = st.sampled_from([0, 1, 3, 4, 15, 16, 0x7F, 0x80, 0x200, 0x201, 0xFFFF,
                                   0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFE, 0xFFFF_FFFF])


@FAST
@given(
    TABLES,
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
    st.lists(st.tuples(st.integers(0, 10_000), INTERESTING_U32), max_size=3),
    st.integers(0, 10_000) | st.none(),
)
def test_mutations_only_raise_firmware_error(
    table: ResourceTable,
    byte_flips: list[tuple[int, int]],
    word_sets: list[tuple[int, int]],
    cut: int | None,
) -> None:
    data = bytearray(table.build())
    for pos, value in byte_flips:
        data[pos % len(data)] = value
    for pos, value in word_sets:
        at = pos % max(1, len(data) - 3)
        if at + 4 <= len(data):
            struct.pack_into("<I", data, at, value)
    if cut is not None:
        del data[cut % (len(data) + 1):]
    _check_hostile(bytes(data))


@FAST
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_firmware_error(data: bytes) -> None:
    _check_hostile(b"\x01\0\0\0" + data)  # version 1, so parsing goes further


def test_every_truncation_of_a_full_table() -> None:
    table = ResourceTable([
        Carveout(1, 2, 3, name="c"), DevMem(4, 5, 6, name="d"), Trace(7, 8, name="t"),
        VdevEntry(7, config_len=3, vrings=[VringEntry(0, 16, 8)] * 2, config=b"abc"),
        VendorResource(300, b"vendor"), UnknownResource(50, b"unknown!"),
    ])
    data = table.build()
    for n in range(len(data)):
        _check_hostile(data[:n])


def test_huge_counts_fail_fast() -> None:
    start = time.perf_counter()
    for num in (0x4000_0000, 0xFFFF_FFFF):
        with pytest.raises(FirmwareError, match="field num"):
            ResourceTable.parse(struct.pack("<IIII", 1, num, 0, 0) + bytes(4096))
    assert time.perf_counter() - start < 0.1
