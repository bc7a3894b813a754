"""Keem Bay's wire: the header and FIFO-entry codecs and the receiver's checks, with
property tests over every value a peer could write."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amplink.transports.keembay.wire import (
    ADDRESS_MASK,
    GP_QUEUE,
    HEADER,
    HEADER_SIZE,
    IPC_BUF_ALLOCATED,
    KMB_IPC_ALIGNMENT,
    KMB_IPC_MAX_CHANNELS,
    NODE_CPU,
    NODE_VPU,
    STATUS_OFFSET,
    Fault,
    check_entry,
    check_header,
    fifo_entry,
    is_hs,
    split_entry,
    tx_queue,
)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)

POOL_DA = 0x8000_1000
HEADERS = 256
WINDOW = (0x8002_0000, 0x8040_0000)


def test_header_layout_is_the_drivers():
    assert HEADER_SIZE == 13  # u32 data_addr, u32 data_size, u16 channel, 3 x u8, packed
    raw = HEADER.pack(0x11223344, 0x55667788, 0x99AA, 1, 0, 1)
    assert raw == bytes.fromhex("44332211" "88776655" "aa99" "01" "00" "01")
    assert raw[STATUS_OFFSET] == IPC_BUF_ALLOCATED


@given(u32, u32, u16, u8, u8, u8)
def test_header_round_trip(data_addr, data_size, channel, src, dst, status):
    fields = (data_addr, data_size, channel, src, dst, status)
    slot = bytearray(KMB_IPC_ALIGNMENT)
    HEADER.pack_into(slot, 0, *fields)
    assert HEADER.unpack_from(slot, 0) == fields
    assert slot[HEADER_SIZE:] == bytes(KMB_IPC_ALIGNMENT - HEADER_SIZE)


@given(st.integers(0, (1 << 26) - 1), st.integers(0, 63))
def test_fifo_entry_round_trip(line, writer):
    da = line * KMB_IPC_ALIGNMENT
    entry = fifo_entry(da, writer)
    assert 0 <= entry < 1 << 32
    assert split_entry(entry) == (da, writer)


@given(u32)
def test_any_entry_splits_into_an_aligned_address_and_a_writer(entry):
    da, writer = split_entry(entry)
    assert da % KMB_IPC_ALIGNMENT == 0 and da == entry & ADDRESS_MASK
    assert 0 <= writer < 64 and da | writer == entry


def test_fifo_entry_refuses_what_does_not_fit():
    for da, writer in ((0x41, 0), (1 << 32, 0), (-64, 0), (0x40, 64), (0x40, -1)):
        with pytest.raises(ValueError):
            fifo_entry(da, writer)


@given(u32)
def test_check_entry_names_a_header_of_the_pool_or_a_fault(entry):
    result = check_entry(entry, peer=NODE_VPU, pool_da=POOL_DA, headers=HEADERS)
    da, writer = split_entry(entry)
    if isinstance(result, Fault):
        assert not result.frees  # nothing of ours is named: nothing is written
        assert (writer != NODE_VPU) == (result is Fault.UNKNOWN_WRITER)
    else:
        assert 0 <= result < HEADERS
        assert da == POOL_DA + result * KMB_IPC_ALIGNMENT and writer == NODE_VPU


def test_check_entry_edges():
    last = POOL_DA + (HEADERS - 1) * KMB_IPC_ALIGNMENT
    assert check_entry(fifo_entry(POOL_DA, 1), peer=1, pool_da=POOL_DA, headers=HEADERS) == 0
    assert check_entry(fifo_entry(last, 1), peer=1, pool_da=POOL_DA,
                       headers=HEADERS) == HEADERS - 1
    for da in (POOL_DA - KMB_IPC_ALIGNMENT, last + KMB_IPC_ALIGNMENT, 0):
        assert check_entry(fifo_entry(da, 1), peer=1, pool_da=POOL_DA,
                           headers=HEADERS) is Fault.OUTSIDE_POOL
    assert check_entry(fifo_entry(POOL_DA, 0), peer=1, pool_da=POOL_DA,
                       headers=HEADERS) is Fault.UNKNOWN_WRITER


@given(u32, u32, u16, u8, u8, u8)
def test_check_header_passes_only_what_is_safe_to_deliver(addr, size, channel, src, dst,
                                                         status):
    fault = check_header((addr, size, channel, src, dst, status), me=NODE_CPU,
                         peer=NODE_VPU, window=WINDOW)
    if fault is None:
        assert status == IPC_BUF_ALLOCATED and (src, dst) == (NODE_VPU, NODE_CPU)
        assert channel < KMB_IPC_MAX_CHANNELS
        assert WINDOW[0] <= addr and addr + size <= WINDOW[1]
        assert addr % 64 == 0


def test_check_header_reasons_and_which_are_freed():
    good = (WINDOW[0], 16, 10, NODE_VPU, NODE_CPU, IPC_BUF_ALLOCATED)

    def with_(i, v):
        return good[:i] + (v,) + good[i + 1:]

    def check(fields):
        return check_header(fields, me=NODE_CPU, peer=NODE_VPU, window=WINDOW)

    assert check(good) is None
    cases = {
        Fault.NOT_ALLOCATED: with_(5, 0), Fault.BAD_NODE: with_(3, NODE_CPU),
        Fault.BAD_CHANNEL: with_(2, KMB_IPC_MAX_CHANNELS),
        Fault.BAD_ADDRESS: with_(1, WINDOW[1] - WINDOW[0] + 1),
        Fault.MISALIGNED: with_(0, WINDOW[0] + 8),
    }
    for fault, fields in cases.items():
        assert check(fields) is fault
    assert check(with_(0, WINDOW[0] - 64)) is Fault.BAD_ADDRESS
    assert check(with_(4, 7)) is Fault.BAD_NODE
    assert [f for f in Fault if f.frees] == [Fault.BAD_NODE, Fault.BAD_CHANNEL,
                                            Fault.BAD_ADDRESS, Fault.MISALIGNED]


def test_channels_and_transmit_queues():
    assert [is_hs(c) for c in (0, 9, 10, 1023)] == [True, True, False, False]
    assert [tx_queue(c) for c in (0, 9, 10, 500, 1023)] == [0, 9, GP_QUEUE, GP_QUEUE, GP_QUEUE]
