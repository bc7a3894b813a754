"""The shared-memory mailbox: FIFOs, full/empty, doorbells, send timeout, a peer that
corrupts the indices."""

from __future__ import annotations

import collections
import errno
import os
import threading
import time

import pytest
from common_kit import Outcome
from hypothesis import given, settings
from hypothesis import strategies as st

from amplink.errors import LinkDown, RemoteProtocolError, SendTimeout
from amplink.memory.region import SharedRegion
from amplink.notify.doorbell import EventfdDoorbell
from amplink.notify.waiter import wait_readable
from amplink.transports.mailbox import (
    SEND_TIMEOUT,
    Mailbox,
    MailboxBroken,
    MailboxSendTimeout,
    Role,
    create_mailbox_region,
    mailbox_pair,
    mailbox_size,
)

# offsets of the published indices (see the layout in amplink.transports.mailbox)
A2I_TAIL, A2I_HEAD, I2A_TAIL, I2A_HEAD = 0x40, 0x80, 0xC0, 0x100


@pytest.fixture
def pair():
    ap, iop = mailbox_pair(4)
    yield ap, iop
    ap.close()
    iop.close()


def test_messages_go_both_ways_with_their_endpoint(pair):
    ap, iop = pair
    assert ap.try_send(0x20, 0xFFFF_FFFF_FFFF_FFFF)
    assert iop.try_send(0x02, 0x0123_4567_89AB_CDEF)
    assert iop.try_recv() == (0x20, 0xFFFF_FFFF_FFFF_FFFF)
    assert ap.try_recv() == (0x02, 0x0123_4567_89AB_CDEF)
    assert ap.try_recv() is None and iop.try_recv() is None


def test_full_fifo_refuses_then_takes_again_in_order(pair):
    ap, iop = pair
    for i in range(4):
        assert ap.try_send(1, i)
    assert not ap.try_send(1, 99)
    assert ap.statistics().tx_queued == 4 and iop.statistics().rx_queued == 4
    assert iop.try_recv() == (1, 0)
    assert ap.try_send(1, 4)
    assert [iop.try_recv() for _ in range(5)] == [(1, 1), (1, 2), (1, 3), (1, 4), None]


def test_send_times_out_with_etimedout_after_its_timeout(pair):
    ap, _ = pair
    for i in range(4):
        ap.send(1, i)
    start = time.monotonic()
    with pytest.raises(MailboxSendTimeout) as info:
        ap.send(1, 4, timeout=0.1)
    assert 0.09 <= time.monotonic() - start < 5.0
    assert info.value.errno == errno.ETIMEDOUT
    assert isinstance(info.value, SendTimeout) and isinstance(info.value, TimeoutError)
    assert ap.statistics().send_timeouts == 1


def test_default_send_timeout_is_500_ms(pair):
    ap, _ = pair
    for i in range(4):
        ap.send(1, i)
    start = time.monotonic()
    with pytest.raises(MailboxSendTimeout):
        ap.send(1, 4)
    assert SEND_TIMEOUT == 0.5
    assert 0.45 <= time.monotonic() - start < 2.0


def test_a_blocked_send_wakes_when_the_consumer_makes_room(pair):
    ap, iop = pair
    for i in range(4):
        ap.send(1, i)
    blocked = Outcome(lambda: ap.send(1, 4, timeout=5))
    time.sleep(0.05)
    assert blocked.ended is None
    assert iop.try_recv() == (1, 0)
    assert blocked.join(2)
    assert blocked.error is None
    assert [iop.try_recv()[1] for _ in range(4)] == [1, 2, 3, 4]


def test_recv_waits_on_the_doorbell_and_times_out(pair):
    ap, iop = pair
    start = time.monotonic()
    assert iop.recv(timeout=0.05) is None
    assert time.monotonic() - start >= 0.04
    waiting = Outcome(lambda: iop.recv(timeout=5))
    time.sleep(0.05)
    ap.send(3, 7)
    assert waiting.join(2) and waiting.result == (3, 7)


def test_rx_pending_follows_the_fifo(pair):
    ap, iop = pair
    assert not iop.rx_pending()
    ap.send(1, 1)
    assert iop.rx_pending()
    iop.try_recv()
    assert not iop.rx_pending()


def test_indices_wrap_around_2_to_the_32(pair):
    region = create_mailbox_region(4)
    for offset in (A2I_TAIL, A2I_HEAD):
        region.write_u32(offset, 0xFFFF_FFFE)
    peer = SharedRegion.from_fd(os.dup(region.fd), region.size)
    a, b = EventfdDoorbell.pair()
    c, d = EventfdDoorbell.pair()
    ap, iop = Mailbox(region, Role.AP, a, c), Mailbox(peer, Role.IOP, b, d)
    try:
        for round_ in range(3):
            for i in range(4):
                assert ap.try_send(1, round_ * 10 + i)
            assert not ap.try_send(1, 0)
            assert [iop.try_recv()[1] for _ in range(4)] == [round_ * 10 + i for i in range(4)]
        assert region.read_u32(A2I_TAIL) == 10  # wrapped past 2**32
    finally:
        ap.close()
        iop.close()


@pytest.mark.parametrize("bogus", [5, 0x8000_0000, 0xFFFF_FFFF])
def test_a_push_count_past_the_depth_breaks_that_direction(pair, bogus):
    ap, iop = pair
    iop.region.write_u32(A2I_TAIL, bogus)  # the AP's published push count, corrupted
    with pytest.raises(MailboxBroken) as info:
        iop.try_recv()
    assert isinstance(info.value, LinkDown)
    with pytest.raises(MailboxBroken):  # for good: no slot is read twice or outside
        iop.try_recv()
    assert iop.rx_pending()
    assert "broke the mailbox" in iop.statistics().broken
    assert iop.try_send(1, 1)  # the other direction goes on
    assert ap.try_recv() == (1, 1)


def test_a_pop_count_past_the_depth_breaks_sending(pair):
    ap, iop = pair
    ap.region.write_u32(A2I_HEAD, 0xFFFF_0000)  # the IOP's published pop count, corrupted
    with pytest.raises(MailboxBroken):
        ap.try_send(1, 1)
    with pytest.raises(MailboxBroken):
        ap.send(1, 1, timeout=1)


def test_the_peer_cannot_move_our_own_index(pair):
    ap, iop = pair
    ap.send(1, 1)
    ap.region.write_u32(A2I_TAIL, 0)  # the IOP overwrites the AP's push count
    ap.send(1, 2)  # the AP publishes its own count again
    assert iop.try_recv() == (1, 1)
    assert iop.try_recv() == (1, 2)


def refused_header(field: int, value: int) -> None:
    """Attaching to a mailbox whose header has ``value`` at ``field`` is refused."""
    region = create_mailbox_region(4)
    region.write_u32(field, value)
    a, b = EventfdDoorbell.pair()
    try:
        with pytest.raises(RemoteProtocolError):
            Mailbox(region, Role.IOP, a, b)
    finally:
        region.close()
        a.close()
        b.close()


@pytest.mark.parametrize("field,value", [(0, 0x1234), (4, 2), (8, 3), (8, 0), (12, 8)])
def test_an_attached_mailbox_checks_its_header(field, value):
    refused_header(field, value)


def test_a_depth_that_needs_more_than_the_region_is_refused():
    assert mailbox_size(4096) > mailbox_size(4)
    refused_header(8, 4096)


def test_close_releases_every_fd():
    before = len(os.listdir("/proc/self/fd"))
    ap, iop = mailbox_pair()
    ap.send(1, 1)
    ap.close()
    iop.close()
    ap.close()  # twice is harmless
    assert len(os.listdir("/proc/self/fd")) == before


def test_many_senders_one_receiver_lose_nothing(pair):
    ap, iop = pair
    count = 300

    def sender(ep: int) -> None:
        for i in range(count):
            ap.send(ep, i, timeout=5)

    threads = [threading.Thread(target=sender, args=(0x20 + k,)) for k in range(3)]
    for t in threads:
        t.start()
    got: dict[int, list[int]] = collections.defaultdict(list)
    deadline = time.monotonic() + 10
    while sum(map(len, got.values())) < 3 * count and time.monotonic() < deadline:
        message = iop.recv(timeout=1)
        if message is not None:
            got[message[0]].append(message[1])
    for t in threads:
        t.join(5)
    assert {ep: msgs for ep, msgs in got.items()} == {0x20 + k: list(range(count))
                                                      for k in range(3)}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["send", "recv"]), st.integers(0, 2**64 - 1),
                          st.integers(0, 255)), max_size=60))
def test_the_fifo_behaves_like_a_bounded_queue(ops):
    ap, iop = mailbox_pair(8)
    model: collections.deque[tuple[int, int]] = collections.deque()
    try:
        for op, msg, ep in ops:
            if op == "send":
                assert ap.try_send(ep, msg) == (len(model) < 8)
                if len(model) < 8:
                    model.append((ep, msg))
            else:
                assert iop.try_recv() == (model.popleft() if model else None)
    finally:
        ap.close()
        iop.close()


def test_a_producer_that_filled_the_fifo_during_a_pop_is_rung(pair, monkeypatch):
    """The consumer reads its count (not full), the producer fills the FIFO and sees it
    full (the old head), then the pop publishes its head: that pop must ring "not full",
    or the producer sleeps while the consumer empties the FIFO without ringing again."""
    from amplink.transports import mailbox as mb

    ap, iop = pair
    for i in range(3):
        assert iop.try_send(0x20, i)  # depth 4: one free slot
    real = mb.SLOT
    seen_full = []

    class Interleaved:
        size = real.size
        pack_into = real.pack_into

        @staticmethod
        def unpack_from(buf, offset):
            if not seen_full:  # inside ap's pop, after it read the count (3 of 4)
                assert iop.try_send(0x20, 3)
                seen_full.append(not iop.try_send(0x20, 4))
            return real.unpack_from(buf, offset)

    monkeypatch.setattr(mb, "SLOT", Interleaved)
    iop._space.clear()
    assert ap.try_recv() == (0x20, 0)
    assert seen_full == [True]
    assert wait_readable(iop.space_fileno(), 0), "the pop did not ring 'not full'"


def test_a_waiting_sender_looks_again_without_a_ring(pair):
    """The safety net: a "not full" ring lost after all costs a sender SPACE_RECHECK, not
    its whole timeout: room made without a ring is found."""
    ap, iop = pair
    for i in range(4):
        assert iop.try_send(0x20, i)
    sending = Outcome(lambda: iop.send(0x20, 4, timeout=5))
    time.sleep(0.05)
    assert sending.ended is None
    # the consumer's pop without its ring: move the AP's published head by hand
    ap._rx_head = (ap._rx_head + 1) & 0xFFFFFFFF
    ap._u32[ap._rx_head_at] = ap._rx_head
    assert sending.join(1), "the sender slept on although room was made"
    assert sending.error is None
