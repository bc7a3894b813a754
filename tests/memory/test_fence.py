"""The store-load fence: what it executes, and where the rings rely on it.

The reordering the fence forbids (a store still in the store buffer while a later load
runs) cannot be provoked reliably from Python, so these tests check the mechanism: the
fence is a locked round trip, and each ring operation that publishes a store and then
reads the peer's state fences between the two (a peer acting at the fence is seen).
The C rings (``amplink._speedups``) fence with a real barrier and call a test hook
there; the same tests run against whichever rings are in use.
"""

from __future__ import annotations

import threading

import pytest

from amplink._accel import speedups
from amplink.memory import SharedRegion, fence
from amplink.memory.fence import full_fence
from amplink.virtio import DeviceQueue, DriverQueue, VringLayout
from amplink.virtio import device as device_module
from amplink.virtio import driver as driver_module
from amplink.virtio.ring import VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY


def test_the_fence_is_a_lock_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(fence, "_acquire", lambda: calls.append("acquire") or True)
    monkeypatch.setattr(fence, "_release", lambda: calls.append("release"))
    full_fence()
    assert calls == ["acquire", "release"]


def test_fences_from_many_threads_never_block_and_leave_the_lock_free() -> None:
    def many() -> None:
        for _ in range(20_000):
            full_fence()

    threads = [threading.Thread(target=many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads)
    assert not fence._fence_lock.locked()


@pytest.fixture
def rings():
    with SharedRegion.memfd(0x20000) as region:
        layout = VringLayout(0x100, 8, 16)
        drv = DriverQueue(region, layout)
        drv.reset()
        dev = DeviceQueue(region, layout, device_writes=False)
        yield region, layout, drv, dev


@pytest.fixture(autouse=True)
def _no_fence_hook():
    yield
    if speedups is not None:
        speedups.set_fence_hook(None)


def _at_fence(monkeypatch: pytest.MonkeyPatch, module: object, action) -> list[bool]:
    """Run ``action`` (the peer acting) when ``module`` fences (the C rings: when they
    fence); return when it ran."""
    ran: list[bool] = []

    def spy() -> None:
        action()
        ran.append(True)

    if speedups is None:
        monkeypatch.setattr(module, "full_fence", spy)
    else:
        speedups.set_fence_hook(spy)
    return ran


def test_the_driver_reads_the_kick_flag_after_the_fence(rings, monkeypatch) -> None:
    region, layout, drv, _ = rings

    def device_says_no_kick() -> None:
        assert region.read_u16(layout.avail + 2) == 1  # our index is stored by now
        region.write_u16(layout.used, VRING_USED_F_NO_NOTIFY)

    ran = _at_fence(monkeypatch, driver_module, device_says_no_kick)
    drv.add(0x8000, 16, "t")
    assert drv.publish() is False and ran


def test_the_driver_rechecks_the_ring_after_asking_for_interrupts(rings, monkeypatch) -> None:
    _, _, drv, dev = rings
    drv.add(0x8000, 16, "t")
    drv.publish()
    head, _, _ = dev.pop_avail()

    def device_returns_one() -> None:
        dev.push_used(head, 4)

    ran = _at_fence(monkeypatch, driver_module, device_returns_one)
    assert drv.enable_interrupts() is True and ran


def test_the_device_reads_the_interrupt_flag_after_the_fence(rings, monkeypatch) -> None:
    region, layout, drv, dev = rings
    drv.add(0x8000, 16, "t")
    drv.publish()
    head, _, _ = dev.pop_avail()
    dev.push_used(head, 4)

    def driver_says_no_interrupt() -> None:
        assert region.read_u16(layout.used + 2) == 1  # our used.idx is stored by now
        region.write_u16(layout.avail, VRING_AVAIL_F_NO_INTERRUPT)

    ran = _at_fence(monkeypatch, device_module, driver_says_no_interrupt)
    assert dev.notify_needed() is False and ran


def test_the_device_rechecks_the_ring_after_asking_for_kicks(rings, monkeypatch) -> None:
    _, _, drv, dev = rings

    def driver_posts_one() -> None:
        drv.add(0x8000, 16, "t")
        drv._u16[drv._avail_idx] = drv._next_avail  # published, without drv's own fence

    ran = _at_fence(monkeypatch, device_module, driver_posts_one)
    assert dev.enable_notify() is True and ran
