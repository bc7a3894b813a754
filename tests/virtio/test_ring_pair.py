"""Driver and device halves paired in one process: nothing lost, duplicated or reordered."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amplink.memory import SharedRegion
from amplink.virtio import DeviceQueue, DriverQueue, VringLayout, vring_size


@pytest.fixture
def region():
    with SharedRegion.memfd(0x20000) as r:
        yield r


def make_pair(region, num, align=16, event_idx=False, device_writes=False):
    layout = VringLayout(0x100, num, align)
    drv = DriverQueue(region, layout, event_idx=event_idx)
    drv.reset()
    dev = DeviceQueue(region, layout, device_writes=device_writes, event_idx=event_idx)
    return drv, dev


def test_vring_size_matches_reference():
    assert vring_size(256, 4096) == 0x2806
    assert vring_size(256, 16) == 6678


@settings(max_examples=200, deadline=None)
@given(
    num=st.sampled_from([1, 2, 4, 8, 16]),
    event_idx=st.booleans(),
    ops=st.lists(st.tuples(st.sampled_from(["add", "publish", "take", "give", "reclaim"]),
                           st.integers(1, 40)), max_size=120),
)
def test_fifo_no_loss_no_dup(num, event_idx, ops):
    with SharedRegion.memfd(0x20000) as region:
        drv, dev = make_pair(region, num, event_idx=event_idx)
        next_token = 0
        published: deque[int] = deque()   # tokens visible to the device, in order
        unpublished: list[int] = []
        held: deque[tuple[int, int]] = deque()  # (head, token) taken by the device
        returned: deque[int] = deque()    # tokens the device returned, in order
        reclaimed: list[int] = []
        token_of_offset = {}
        for op, n in ops:
            for _ in range(n):
                if op == "add" and drv.free_count:
                    offset = 0x8000 + 64 * (next_token % 256)
                    token_of_offset[offset] = next_token
                    drv.add(offset, 32, next_token)
                    unpublished.append(next_token)
                    next_token += 1
                elif op == "publish":
                    drv.publish()
                    published.extend(unpublished)
                    unpublished.clear()
                    break
                elif op == "take":
                    got = dev.pop_avail()
                    if got is None:
                        assert not published
                        break
                    head, offset, length = got
                    assert length == 32
                    token = published.popleft()
                    assert token_of_offset[offset] == token
                    held.append((head, token))
                elif op == "give" and held:
                    head, token = held.popleft()
                    dev.push_used(head, 7)
                    returned.append(token)
                elif op == "reclaim":
                    got = drv.pop_used()
                    if got is None:
                        assert not returned
                        break
                    token, used_len = got
                    assert used_len == 7
                    assert token == returned.popleft()
                    reclaimed.append(token)
        assert dev.faults.total == 0 and drv.faults.total == 0
        assert reclaimed == sorted(reclaimed)
        assert len(set(reclaimed)) == len(reclaimed)


def test_index_wraps_past_65535(region):
    drv, dev = make_pair(region, 4)
    for i in range(70000):
        drv.add(0x8000, 16, i)
        drv.publish()
        head, _off, _len = dev.pop_avail()
        dev.push_used(head, 1)
        assert drv.pop_used() == (i, 1)
    assert drv.faults.total == dev.faults.total == 0
