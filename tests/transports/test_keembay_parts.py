"""Keem Bay's parts alone: the layout and its descriptor, a FIFO in shared memory (with
property tests over indices a peer could write), the header pool, the transmit queues."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amplink.errors import InvalidArgument, RemoteProtocolError
from amplink.memory.region import SharedRegion
from amplink.transports.keembay.fifo import FifoReader, FifoWriter
from amplink.transports.keembay.layout import (
    DESCRIPTOR,
    FIFO_RD,
    FIFO_SIZE,
    FIFO_WR,
    KMB_IPC_MAGIC,
    PAGE,
    KmbLayout,
)
from amplink.transports.keembay.pool import HeaderPool
from amplink.transports.keembay.scheduler import Queued, TxScheduler
from amplink.transports.keembay.wire import (
    GP_QUEUE,
    IPC_BUF_ALLOCATED,
    IPC_BUF_FREE,
    KMB_IPC_FIFO_DEPTH,
    NODE_CPU,
    NODE_VPU,
    STATUS_OFFSET,
)

DA = 0x8000_0000


@pytest.fixture
def region():
    with SharedRegion.memfd(0x10000, "kmb-parts", da_base=DA) as r:
        yield r


# -- layout ------------------------------------------------------------------------------
def test_layout_keeps_headers_and_fifos_out_of_the_payload_window():
    size = KmbLayout.needed(256, 512, 1 << 20)
    layout = KmbLayout.compute(DA, size, 256, 512, offset=0x3000)
    cpu, vpu = layout.nodes
    lo, hi = layout.window
    assert lo == cpu.slots and hi == vpu.heap + vpu.heap_size <= 0x3000 + size
    for node in (NODE_CPU, NODE_VPU):
        assert layout.nodes[node].pool + 256 * 64 <= lo  # every header below the window
        assert layout.fifo(node) + FIFO_SIZE <= 0x3000 + PAGE
        assert layout.nodes[node].heap % PAGE == 0 and layout.nodes[node].heap_size >= 1 << 20
    assert vpu.slots == cpu.slots + 256 * 512 and cpu.heap >= vpu.slots + 256 * 512
    assert layout.to_da(lo) == DA + lo - 0x3000 == layout.window_da[0]


def test_layout_refuses_what_cannot_be():
    for args in ((DA, 0x10000, 0, 512), (DA, 0x10000, 8, 100), (DA + 1, 0x10000, 8, 64),
                 (0xFFFF_0000, 0x20000, 8, 64), (DA, 0x2000, 256, 512)):
        with pytest.raises(InvalidArgument):
            KmbLayout.compute(*args)


def test_descriptor_round_trip_and_checks():
    size = KmbLayout.needed(64, 256, 0x4000)
    layout = KmbLayout.compute(DA, size, 64, 256, fifo_share=16)
    raw = layout.descriptor()
    assert KmbLayout.from_descriptor(raw, DA, size) == layout
    assert layout.fifo_share == 16
    bad = {
        "magic": DESCRIPTOR.pack(0, 1, 64, 256, size, 16, 0, 0),
        "version": DESCRIPTOR.pack(KMB_IPC_MAGIC, 2, 64, 256, size, 16, 0, 0),
        "size": DESCRIPTOR.pack(KMB_IPC_MAGIC, 1, 64, 256, size + PAGE, 16, 0, 0),
        "headers": DESCRIPTOR.pack(KMB_IPC_MAGIC, 1, 1 << 20, 256, size, 16, 0, 0),
        "slot": DESCRIPTOR.pack(KMB_IPC_MAGIC, 1, 64, 65, size, 16, 0, 0),
        "too big": DESCRIPTOR.pack(KMB_IPC_MAGIC, 1, 4096, 1 << 20, size, 16, 0, 0),
        "share 0": DESCRIPTOR.pack(KMB_IPC_MAGIC, 1, 64, 256, size, 0, 0, 0),
        "share 129": DESCRIPTOR.pack(KMB_IPC_MAGIC, 1, 64, 256, size, 129, 0, 0),
        "truncated": raw[:10],
    }
    for what, raw in bad.items():
        with pytest.raises(RemoteProtocolError, match="descriptor"):
            KmbLayout.from_descriptor(raw, DA, size)
        assert what


# -- FIFO --------------------------------------------------------------------------------
def test_fifo_order_wrap_overflow_and_irq(region):
    writer, reader = FifoWriter(region, 0x100), FifoReader(region, 0x100)
    assert writer.room() == KMB_IPC_FIFO_DEPTH and not reader.pending()
    for lap in range(3):  # around the ring several times
        for i in range(KMB_IPC_FIFO_DEPTH):
            writer.put(lap << 16 | i, GP_QUEUE if i % 2 else 3)
        assert writer.room() == 0
        writer.overflow()  # what a write to the full FIFO does
        assert writer.in_fifo[GP_QUEUE] == writer.in_fifo[3] == KMB_IPC_FIFO_DEPTH // 2
        got = reader.pop(100) + reader.pop(100)
        assert got == [lap << 16 | i for i in range(KMB_IPC_FIFO_DEPTH)]
        assert reader.overflows == lap + 1
        assert writer.room() == KMB_IPC_FIFO_DEPTH and writer.in_fifo[3] == 0
    assert not reader.arm()
    assert writer.irq_enabled()
    writer.put(7, 0)
    assert reader.arm()
    reader.disarm()
    assert not writer.irq_enabled()


@settings(max_examples=200)
@given(st.integers(0, 0xFFFF_FFFF), st.integers(0, 0xFFFF_FFFF),
       st.lists(st.integers(0, 0xFFFF_FFFF), min_size=KMB_IPC_FIFO_DEPTH,
                max_size=KMB_IPC_FIFO_DEPTH))
def test_fifo_indices_from_a_peer_never_lead_out_of_the_ring(wr, rd, entries):
    with SharedRegion.memfd(0x2000, "kmb-fifo") as region:
        reader = FifoReader(region, 0x100)
        writer = FifoWriter(region, 0x100)
        base = (0x100 + 64) // 4
        for i, e in enumerate(entries):
            region.u32[base + i] = e
        region.u32[(0x100 + FIFO_WR) // 4] = wr  # the writer's index, garbage
        got = reader.pop(1000)
        assert len(got) <= KMB_IPC_FIFO_DEPTH and set(got) <= set(entries)
        if wr > KMB_IPC_FIFO_DEPTH:
            assert got == [] and reader.bad_write_index == 1
        assert not reader.pending()  # the reader caught up, whatever was written
        region.u32[(0x100 + FIFO_RD) // 4] = rd  # the reader's index, garbage
        assert 0 <= writer.room() <= KMB_IPC_FIFO_DEPTH
        assert all(n >= 0 for n in writer.in_fifo)


# -- pool --------------------------------------------------------------------------------
def test_pool_takes_free_headers_round_robin(region):
    layout = KmbLayout.compute(DA, 0x10000, 8, 64)
    pool = HeaderPool(region, layout, NODE_VPU)  # a fresh memfd: every header FREE
    assert [pool.take() for _ in range(3)] == [0, 1, 2]
    assert pool.allocated() == 3 and pool.status(1) == IPC_BUF_ALLOCATED
    # the peer frees 1 and 0; the scan goes on from 3 and wraps round
    for i in (0, 1):
        region.mm[pool.base + i * 64 + STATUS_OFFSET] = IPC_BUF_FREE
    assert [pool.take() for _ in range(7)] == [3, 4, 5, 6, 7, 0, 1]
    assert pool.take() is None
    pool.free(5)
    pool.held.add(5)  # a loaned header whose status a peer wrongly set FREE
    assert pool.take() is None
    pool.held.discard(5)
    assert pool.take() == 5


# -- transmit queues ----------------------------------------------------------------------
def test_queues_are_served_round_robin():
    sched = TxScheduler()
    for queue, count in ((0, 3), (4, 2), (GP_QUEUE, 4)):
        for i in range(count):
            sched.push(Queued(queue, queue, f"{queue}.{i}", queue))
    order = []
    while (item := sched.next(lambda q: True)) is not None:
        order.append(item.payload)
    assert order == ["0.0", "4.0", "10.0", "0.1", "4.1", "10.1", "0.2", "10.2", "10.3"]
    assert sched.waiting == 0


def test_queue_without_room_is_skipped_and_a_put_back_keeps_its_turn():
    sched = TxScheduler()
    items = {q: Queued(q, q, q, q) for q in (1, 2, GP_QUEUE)}
    for item in items.values():
        sched.push(item)
    assert sched.next(lambda q: q != 1) is items[2]
    first = sched.next(lambda q: True)
    assert first is items[GP_QUEUE]
    sched.put_back(first)  # no header after all
    assert sched.next(lambda q: True) is items[GP_QUEUE]
    assert sched.next(lambda q: True) is items[1]
    sched.push(items[2])
    assert sched.remove(items[2]) and not sched.remove(items[2])
    assert sched.next(lambda q: True) is None and sched.waiting == 0
