"""RegionAllocator: alignment, exhaustion, free and merge, double free; align_up."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amplink.errors import AddressError
from amplink.memory import RegionAllocator, align_up


@pytest.mark.parametrize("value,align,expected", [
    (0, 8, 0), (1, 8, 8), (8, 8, 8), (9, 8, 16), (4095, 4096, 4096), (5, 1, 5),
])
def test_align_up(value, align, expected):
    assert align_up(value, align) == expected


@pytest.mark.parametrize("align", [0, -8, 3, 12])
def test_align_up_refuses_non_powers_of_two(align):
    with pytest.raises(ValueError):
        align_up(16, align)


@pytest.mark.parametrize("size,base", [(0, 0), (-1, 0), (16, -1)])
def test_bad_allocator_parameters(size, base):
    with pytest.raises(ValueError):
        RegionAllocator(size, base)


@pytest.mark.parametrize("size,align", [(0, 8), (-4, 8), (8, 0), (8, 6)])
def test_bad_alloc_parameters(size, align):
    alloc = RegionAllocator(0x1000)
    with pytest.raises(ValueError):
        alloc.alloc(size, align)
    assert alloc.used_bytes == 0


@pytest.mark.parametrize("base", [0, 0x10, 0x1003])
@pytest.mark.parametrize("align", [1, 8, 64, 0x1000])
def test_blocks_are_aligned_and_inside(base, align):
    alloc = RegionAllocator(0x10000, base)
    blocks = []
    # a 1-byte block first so that the next ones need padding
    blocks.append((alloc.alloc(1, 1), 1))
    for size in (3, 100, 0x800, 1):
        offset = alloc.alloc(size, align)
        assert offset % align == 0
        assert base <= offset and offset + size <= base + 0x10000
        blocks.append((offset, size))
    blocks.sort()
    for (a, sa), (b, _sb) in zip(blocks, blocks[1:], strict=False):
        assert a + sa <= b, "blocks overlap"
    assert alloc.used_bytes == sum(s for _, s in blocks)


def test_exhaustion_raises_memory_error_and_changes_nothing():
    alloc = RegionAllocator(0x100)
    a = alloc.alloc(0x80, 8)
    b = alloc.alloc(0x80, 8)
    assert {a, b} == {0, 0x80}
    with pytest.raises(MemoryError):
        alloc.alloc(1, 1)
    alloc.free(a)
    with pytest.raises(MemoryError):
        alloc.alloc(0x81, 1)  # 0x80 free, 0x81 asked
    assert alloc.alloc(0x80, 8) == a


def test_alignment_can_exhaust():
    alloc = RegionAllocator(0x1000, base=8)
    # [8, 0x1008): the only 0x1000-aligned address is 0x1000, with 8 bytes behind it
    assert alloc.alloc(8, 0x1000) == 0x1000
    with pytest.raises(MemoryError):
        alloc.alloc(16, 0x1000)


def test_free_and_merge_restore_the_whole_region():
    alloc = RegionAllocator(0x1000)
    offsets = [alloc.alloc(0x100, 0x100) for _ in range(16)]
    assert sorted(offsets) == [i * 0x100 for i in range(16)]
    with pytest.raises(MemoryError):
        alloc.alloc(1)
    random.Random(1234).shuffle(offsets)
    for offset in offsets:
        alloc.free(offset)
    assert alloc.used_bytes == 0
    # only possible if every neighbour was merged back into one block
    assert alloc.alloc(0x1000, 0x1000) == 0


def test_free_merges_with_alignment_padding():
    alloc = RegionAllocator(0x1000)
    small = alloc.alloc(4, 1)  # [0, 4)
    big = alloc.alloc(0x100, 0x100)  # [0x100, 0x200), padding [4, 0x100) stays free
    assert big == 0x100
    alloc.free(small)
    alloc.free(big)
    assert alloc.alloc(0x1000, 1) == 0


def test_double_free_and_unknown_offset():
    alloc = RegionAllocator(0x1000)
    a = alloc.alloc(0x10)
    alloc.free(a)
    with pytest.raises(AddressError):
        alloc.free(a)
    b = alloc.alloc(0x20)
    with pytest.raises(AddressError):
        alloc.free(b + 8)  # inside a block, not its start
    with pytest.raises(AddressError):
        alloc.free(0x5000)
    assert alloc.used_bytes == 0x20


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 0x300),
                          st.sampled_from([1, 2, 8, 64, 256])), max_size=60))
def test_random_alloc_free_never_overlaps(ops):
    total = 0x2000
    alloc = RegionAllocator(total, base=0x40)
    live: dict[int, int] = {}
    for do_alloc, size, align in ops:
        if do_alloc or not live:
            try:
                offset = alloc.alloc(size, align)
            except MemoryError:
                continue
            assert offset % align == 0
            assert 0x40 <= offset and offset + size <= 0x40 + total
            for other, osize in live.items():
                assert offset + size <= other or other + osize <= offset
            live[offset] = size
        else:
            victim = sorted(live)[size % len(live)]
            alloc.free(victim)
            del live[victim]
        assert alloc.used_bytes == sum(live.values())
    for offset in list(live):
        alloc.free(offset)
    assert alloc.alloc(total, 1) == 0x40


def test_reserve_takes_a_fixed_free_range_and_alloc_goes_around_it():
    alloc = RegionAllocator(0x1000, base=0x8000, what="the test memory")
    assert alloc.reserve(0x8100, 0x100) == 0x8100
    assert alloc.alloc(0x100, 0x100) == 0x8000
    assert alloc.alloc(0x100, 0x100) == 0x8200  # first fit skips the reserved range
    assert alloc.used_bytes == 0x300
    alloc.free(0x8100)
    assert alloc.alloc(0x100, 0x100) == 0x8100


@pytest.mark.parametrize("offset,size,message", [
    (0x7FF0, 0x20, "outside the test memory"),
    (0x8FF0, 0x20, "outside the test memory"),
    (0x8080, 0x100, "overlaps memory already in use at 0x8100\\+0x100"),
    (0x8180, 0x10, "overlaps memory already in use at 0x8100\\+0x100"),
])
def test_reserve_refuses_ranges_outside_or_in_use(offset, size, message):
    alloc = RegionAllocator(0x1000, base=0x8000, what="the test memory")
    alloc.reserve(0x8100, 0x100)
    with pytest.raises(AddressError, match=message):
        alloc.reserve(offset, size)
    with pytest.raises(ValueError):
        alloc.reserve(0x8000, 0)
    assert alloc.used_bytes == 0x100


def test_exhaustion_message_names_the_memory():
    alloc = RegionAllocator(0x100, what="the test memory")
    with pytest.raises(MemoryError, match="no room for 0x200 bytes .* in the test memory"):
        alloc.alloc(0x200)
