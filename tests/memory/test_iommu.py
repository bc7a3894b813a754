"""The simulated IOMMU: attach/detach, translation, faults, subscribers, IOVA allocation."""

from __future__ import annotations

import logging
import os

import pytest
from buffer_kit import assert_nothing_left, unique
from hypothesis import given, settings
from hypothesis import strategies as st

from amplink.errors import AddressError, InvalidArgument, InvalidArgumentType
from amplink.memory import (
    Access,
    BufferClosed,
    Iommu,
    IommuFault,
    IommuFaultReason,
    OwnershipError,
    ReadOnlyBuffer,
    SharedBuffer,
    allocate_buffer,
)

PAGE = 0x1000
BASE = 0x8000_0000


@pytest.fixture
def name():
    tag = unique("iommu-test")
    yield tag
    assert_nothing_left(tag)


@pytest.fixture
def buf(name):
    buf = allocate_buffer(0x3000, name=name)
    yield buf
    buf.close()


@pytest.fixture
def iommu(buf):  # detaches before the buffer closes
    iommu = Iommu("dsp0", BASE, 0x10_0000)
    yield iommu
    iommu.detach_all()


def test_attach_gives_a_device_address_that_translates_to_the_buffer(iommu, buf):
    a = iommu.attach(buf, Access.READ_WRITE)
    assert (a.da, a.length, a.offset, a.span) == (BASE, 0x3000, 0, 0x3000)
    assert iommu.translate(BASE, 0x3000, Access.READ) == (buf, 0)
    assert iommu.translate(BASE + 0x2fff, 1, Access.WRITE) == (buf, 0x2fff)
    assert buf.attachments == (f"IOMMU dsp0 da 0x{BASE:x}",)
    b = iommu.attach(buf, Access.READ)  # a buffer may be attached twice
    assert b.da == BASE + 0x3000
    iommu.detach(a)
    with pytest.raises(IommuFault):
        iommu.translate(BASE, 1, Access.READ)
    assert iommu.translate(b.da, 1, Access.READ) == (buf, 0)
    iommu.detach(b)
    assert buf.attachments == () and iommu.attachments == ()


def test_a_slice_is_attached_with_its_offset_and_only_its_bytes(iommu, buf):
    a = iommu.attach(buf.slice(0x1234, 0x100), Access.READ)
    assert (a.offset, a.length, a.span) == (0x1234, 0x100, PAGE)
    assert iommu.translate(a.da + 0x10, 0x10, Access.READ) == (buf, 0x1244)
    # the rest of the IOVA page is not reachable: checks are to the byte
    with pytest.raises(IommuFault) as info:
        iommu.translate(a.da + 0x100, 1, Access.READ)
    assert info.value.fault.reason is IommuFaultReason.UNMAPPED
    with pytest.raises(IommuFault) as info:
        iommu.translate(a.da + 0xff, 2, Access.READ)
    assert info.value.fault.reason is IommuFaultReason.PARTIAL


@pytest.mark.parametrize("direction,allowed,refused", [
    (Access.READ, [Access.READ], [Access.WRITE, Access.READ_WRITE]),
    (Access.WRITE, [Access.WRITE], [Access.READ, Access.READ_WRITE]),
    (Access.READ_WRITE, [Access.READ, Access.WRITE, Access.READ_WRITE], []),
])
def test_directions_filter_accesses(iommu, buf, direction, allowed, refused):
    a = iommu.attach(buf, direction)
    for access in allowed:
        assert iommu.translate(a.da, 4, access) == (buf, 0)
        assert iommu.translate(a.da, 4, int(access)) == (buf, 0)
    for access in refused:
        with pytest.raises(IommuFault, match="not allowed by the attachment's direction") as info:
            iommu.translate(a.da, 4, access)
        assert info.value.fault.access == access


def test_a_fixed_device_address_must_be_free_aligned_and_inside(iommu, buf):
    a = iommu.attach(buf, Access.READ, da=BASE + 0x5000)
    assert a.da == BASE + 0x5000
    assert iommu.attach(buf, Access.READ).da == BASE  # allocation goes around it
    for da, message in [(BASE + 0x5000, "overlaps"), (BASE + 0x4000, "overlaps"),
                        (BASE + 0x10, "not aligned"), (BASE - PAGE, "outside"),
                        (BASE + 0x10_0000 - PAGE, "outside"), (-PAGE, "outside")]:
        with pytest.raises(AddressError, match=message):
            iommu.attach(buf, Access.READ, da=da)
    assert len(iommu.attachments) == 2


def test_alignment_of_attachments(iommu, buf):
    iommu.attach(buf.slice(0, 1), Access.READ)
    a = iommu.attach(buf.slice(0, 1), Access.READ, align=0x10000)
    assert a.da == BASE + 0x10000
    with pytest.raises(AddressError, match="not aligned to 0x10000"):
        iommu.attach(buf, Access.READ, da=BASE + 0x4000, align=0x10000)


def test_a_full_window_raises_memory_error(buf):
    iommu = Iommu("tiny", BASE, 0x4000)
    iommu.attach(buf, Access.READ)
    with pytest.raises(MemoryError, match="IOMMU tiny"):
        iommu.attach(buf, Access.READ)
    iommu.detach_all()


def test_attach_refuses_writes_to_read_only_buffers_and_closed_buffers(iommu, name):
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.ftruncate(fd, PAGE)
    ro = SharedBuffer(fd, PAGE, name=name, read_only=True)
    with pytest.raises(ReadOnlyBuffer):
        iommu.attach(ro, Access.WRITE)
    iommu.detach(iommu.attach(ro, Access.READ))
    ro.close()
    with pytest.raises(BufferClosed):
        iommu.attach(ro, Access.READ)
    assert iommu.attachments == ()
    with allocate_buffer(1, name=name) as again:
        assert iommu.attach(again, Access.READ).da == BASE  # the IOVA came back
        iommu.detach_all()


def test_bad_attach_arguments(iommu, buf):
    for direction, error in ((0, InvalidArgument), (4, InvalidArgument),
                             (True, InvalidArgumentType), ("r", InvalidArgumentType)):
        with pytest.raises(error):
            iommu.attach(buf, direction)
    with pytest.raises(InvalidArgument, match="empty"):
        iommu.attach(buf.slice(5, 0), Access.READ)


def test_a_buffer_cannot_close_while_attached(iommu, buf):
    a = iommu.attach(buf, Access.READ)
    with pytest.raises(OwnershipError, match="dsp0 da 0x80000000"):
        buf.close()
    iommu.detach(a)
    with pytest.raises(AddressError, match="not attached here"):
        iommu.detach(a)


def test_detach_of_a_foreign_attachment(iommu, buf):
    other = Iommu("dsp1", BASE, 0x10_0000)
    a = other.attach(buf, Access.READ)
    with pytest.raises(AddressError, match="not attached here"):
        iommu.detach(a)
    assert other.detach_all() == 1


@pytest.mark.parametrize("da,length,access", [
    (-1, 4, Access.READ), (BASE, 0, Access.READ), (BASE, -4, Access.READ),
    ((1 << 64) - 2, 4, Access.READ), (1 << 64, 1, Access.READ),
    (BASE, 4, 0), (BASE, 4, 4), (BASE, 4, -1), (BASE, 4, True),
    (float(BASE), 4, Access.READ), (BASE, "4", Access.READ), (None, None, None),
])
def test_malformed_requests_fault(iommu, buf, da, length, access):
    iommu.attach(buf, Access.READ_WRITE)
    with pytest.raises(IommuFault) as info:
        iommu.translate(da, length, access)
    assert info.value.fault.reason is IommuFaultReason.BAD_REQUEST
    assert iommu.statistics().faults_by_reason == {"BAD_REQUEST": 1}


def test_faults_are_recorded_counted_and_sent_to_subscribers(iommu, buf, caplog):
    seen = []
    unsubscribe = iommu.subscribe(seen.append)
    iommu.subscribe(lambda fault: 1 / 0)  # a broken subscriber is logged, not raised
    a = iommu.attach(buf.slice(0, 0x100), Access.READ)
    with caplog.at_level(logging.WARNING, logger="amplink.memory.iommu"):
        for da, length, access in [(a.da - 1, 1, Access.READ), (a.da, 0x101, Access.READ),
                                   (a.da, 1, Access.WRITE)]:
            with pytest.raises(IommuFault) as info:
                iommu.translate(da, length, access)
            assert isinstance(info.value, AddressError | ValueError)
    assert [(f.da, f.length, f.access, f.reason, f.sequence) for f in seen] == [
        (a.da - 1, 1, Access.READ, IommuFaultReason.UNMAPPED, 1),
        (a.da, 0x101, Access.READ, IommuFaultReason.PARTIAL, 2),
        (a.da, 1, Access.WRITE, IommuFaultReason.DIRECTION, 3),
    ]
    assert str(seen[2]) == (f"IOMMU dsp0: fault #3: WRITE of 0x1 bytes at 0x{a.da:x}: "
                            f"access not allowed by the attachment's direction")
    assert sum("subscriber" in r.message for r in caplog.records) == 3
    stats = iommu.statistics()
    assert (stats.faults, stats.attachments, stats.attached_bytes) == (3, 1, 0x100)
    assert stats.faults_by_reason == {"UNMAPPED": 1, "PARTIAL": 1, "DIRECTION": 1}
    assert stats.last_fault == seen[2]
    unsubscribe()
    unsubscribe()  # twice is harmless
    with pytest.raises(IommuFault):
        iommu.translate(0, 1, Access.READ)
    assert len(seen) == 3 and iommu.statistics().faults == 4


@pytest.mark.parametrize("base,size,page", [(0x100, 0x1000, PAGE), (0, 0x1800, PAGE),
                                            (0, 0, PAGE), (-PAGE, PAGE, PAGE),
                                            (1 << 64, PAGE, PAGE), (0, PAGE, 3), (0, PAGE, 0)])
def test_bad_windows(base, size, page):
    with pytest.raises(InvalidArgument):
        Iommu("bad", base, size, page_size=page)


@settings(max_examples=120, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 0x2fff), st.integers(1, 0x3000),
                          st.sampled_from([None, PAGE, 0x4000, 0x10000])), max_size=40))
def test_random_attach_detach_keeps_attachments_apart_and_translatable(ops):
    window = 0x4_0000
    iommu = Iommu("prop", BASE, window)
    with allocate_buffer(0x3000, name="iommu-prop") as buf:
        live = []
        for kind, offset, length, align in ops:
            if kind < 2 or not live:
                length = min(length, 0x3000 - offset)
                try:
                    a = iommu.attach(buf.slice(offset, length), Access.READ, align=align)
                except MemoryError:
                    continue
                assert a.da % (align or PAGE) == 0
                assert BASE <= a.da and a.da + a.span <= BASE + window
                assert a.span % PAGE == 0 and a.span >= length
                for other in live:  # whole IOVA pages are never shared
                    assert a.da + a.span <= other.da or other.da + other.span <= a.da
                live.append(a)
            else:
                victim = live.pop(offset % len(live))
                iommu.detach(victim)
                with pytest.raises(IommuFault):
                    iommu.translate(victim.da, 1, Access.READ)
            for a in live:
                assert iommu.translate(a.da, a.length, Access.READ) == (buf, a.offset)
                assert iommu.translate(a.da + a.length - 1, 1, Access.READ) == (
                    buf, a.offset + a.length - 1)
                with pytest.raises(IommuFault):
                    iommu.translate(a.da, a.length + 1, Access.READ)
        assert iommu.detach_all() == len(live)
        # everything came back: the whole window is one free range again
        whole = iommu.attach(buf.slice(0, 1), Access.READ, da=BASE)
        iommu.detach(whole)
        assert iommu.attach(buf, Access.READ, align=window).da == BASE
        iommu.detach_all()
