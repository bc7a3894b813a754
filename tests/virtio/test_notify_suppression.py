"""need_event against its definition, and notification suppression on both halves.

Flags mode: used.flags NO_NOTIFY tells the driver not to kick; avail.flags NO_INTERRUPT
tells the device not to notify. EVENT_IDX mode: the flags are ignored and the event
indices decide. ``enable_*`` returns True when work arrived while notifications were off.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amplink.memory import SharedRegion
from amplink.virtio import DeviceQueue, DriverQueue, VringLayout, need_event
from amplink.virtio.ring import VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY

NUM = 8
BUF = 0x8000


def brute_need_event(event: int, new: int, old: int) -> bool:
    """The definition: is ``event`` one of the indices in [old, new) (mod 2**16)?"""
    k = old
    while k != new:
        if k == event:
            return True
        k = (k + 1) & 0xFFFF
    return False


@settings(max_examples=300, deadline=None)
@given(old=st.integers(0, 0xFFFF), delta=st.integers(0, 600), rel=st.integers(-700, 700))
def test_need_event_matches_the_definition(old, delta, rel):
    new = (old + delta) & 0xFFFF
    event = (old + rel) & 0xFFFF
    assert need_event(event, new, old) == brute_need_event(event, new, old)


@pytest.mark.parametrize("event,new,old,expected", [
    (0, 1, 0, True),          # the first buffer crosses event 0
    (0, 2, 1, False),         # already past it
    (5, 10, 0, True),
    (10, 10, 0, False),       # event == new is not crossed yet
    (0xFFFF, 1, 0xFFFE, True),  # across the wrap
    (0, 1, 0xFFFE, True),
    (1, 1, 0xFFFE, False),
    (3, 3, 3, False),         # nothing new
])
def test_need_event_examples(event, new, old, expected):
    assert need_event(event, new, old) is expected
    assert brute_need_event(event, new, old) is expected


@pytest.fixture
def region():
    with SharedRegion.memfd(0x10000) as r:
        yield r


def make_pair(region, event_idx):
    layout = VringLayout(0x100, NUM, 16)
    drv = DriverQueue(region, layout, event_idx=event_idx)
    drv.reset()
    dev = DeviceQueue(region, layout, device_writes=False, event_idx=event_idx)
    return drv, dev, layout


_tokens = itertools.count(1)


def add(drv, n=1):
    for _ in range(n):
        token = next(_tokens)
        drv.add(BUF + 64 * (token % NUM), 32, token)


def drain_avail(dev):
    heads = []
    while (got := dev.pop_avail()) is not None:
        heads.append(got[0])
    return heads


# -- driver -> device (kicks) --
@pytest.mark.parametrize("event_idx", [False, True], ids=["flags", "event_idx"])
def test_publish_respects_device_notify_state(region, event_idx):
    drv, dev, _ = make_pair(region, event_idx)
    assert dev.enable_notify() is False  # nothing there yet
    add(drv)
    assert drv.publish() is True
    dev.disable_notify()
    add(drv)
    assert drv.publish() is False
    add(drv)
    assert drv.publish() is False
    # work arrived while notifications were off: enable says so
    assert dev.enable_notify() is True
    assert len(drain_avail(dev)) == 3
    assert dev.enable_notify() is False
    add(drv)
    assert drv.publish() is True


def test_publish_without_new_buffers_never_kicks(region):
    drv, dev, _ = make_pair(region, False)
    assert drv.publish() is False
    add(drv)
    assert drv.publish() is True
    assert drv.publish() is False


def test_event_idx_kicks_once_until_the_device_catches_up(region):
    drv, dev, _ = make_pair(region, True)
    dev.enable_notify()  # avail_event = 0
    add(drv)
    assert drv.publish() is True
    add(drv)
    assert drv.publish() is False  # the device has not caught up with the first kick
    assert len(drain_avail(dev)) == 2
    assert dev.enable_notify() is False  # avail_event = 2
    add(drv, 3)
    assert drv.publish() is True  # a batch that crosses the event index kicks once


def test_event_idx_ignores_the_flags(region):
    drv, dev, layout = make_pair(region, True)
    dev.enable_notify()
    # a stale NO_NOTIFY flag must not suppress a kick the event index asks for
    region.write_u16(layout.used, VRING_USED_F_NO_NOTIFY)
    add(drv)
    assert drv.publish() is True


def test_flags_mode_ignores_the_event_index(region):
    drv, dev, layout = make_pair(region, False)
    # an avail_event that says "not yet" is meaningless without EVENT_IDX
    region.write_u16(layout.avail_event, 0x8000)
    add(drv)
    assert drv.publish() is True


# -- device -> driver (interrupts) --
def give_back(dev, written=4):
    for head in drain_avail(dev):
        dev.push_used(head, written)


def reclaim(drv):
    got = []
    while (u := drv.pop_used()) is not None:
        got.append(u)
    return got


@pytest.mark.parametrize("event_idx", [False, True], ids=["flags", "event_idx"])
def test_notify_needed_respects_driver_interrupt_state(region, event_idx):
    drv, dev, _ = make_pair(region, event_idx)
    assert drv.enable_interrupts() is False
    add(drv, 4)
    drv.publish()
    head, _off, _len = dev.pop_avail()
    dev.push_used(head, 4)
    assert dev.notify_needed() is True
    drv.disable_interrupts()
    head, _off, _len = dev.pop_avail()
    dev.push_used(head, 4)
    assert dev.notify_needed() is False
    assert dev.notify_needed() is False  # nothing new since the last check
    assert drv.enable_interrupts() is True  # used buffers arrived meanwhile
    assert len(reclaim(drv)) == 2
    assert drv.enable_interrupts() is False
    head, _off, _len = dev.pop_avail()
    dev.push_used(head, 4)
    assert dev.notify_needed() is True


def test_event_idx_notifies_once_until_the_driver_catches_up(region):
    drv, dev, _ = make_pair(region, True)
    drv.enable_interrupts()  # used_event = 0
    add(drv, 4)
    drv.publish()
    heads = drain_avail(dev)
    dev.push_used(heads[0], 1)
    assert dev.notify_needed() is True
    dev.push_used(heads[1], 1)
    assert dev.notify_needed() is False
    assert len(reclaim(drv)) == 2
    assert drv.enable_interrupts() is False
    dev.push_used(heads[2], 1)
    dev.push_used(heads[3], 1)
    assert dev.notify_needed() is True


def test_event_idx_device_ignores_the_no_interrupt_flag(region):
    drv, dev, layout = make_pair(region, True)
    drv.enable_interrupts()
    region.write_u16(layout.avail, VRING_AVAIL_F_NO_INTERRUPT)
    add(drv)
    drv.publish()
    give_back(dev)
    assert dev.notify_needed() is True


def test_event_idx_disable_survives_many_completions(region):
    drv, dev, _ = make_pair(region, True)
    drv.disable_interrupts()
    dev.disable_notify()
    for _ in range(3 * NUM):
        add(drv)
        assert drv.publish() is False
        give_back(dev)
        assert dev.notify_needed() is False
        assert len(reclaim(drv)) == 1
    assert drv.enable_interrupts() is False
    assert dev.enable_notify() is False
