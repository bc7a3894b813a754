"""Keem Bay IPC through the endpoint API, both nodes in this process: channels, the
driver's error codes, the transmit queues, the GP share, send by reference, loans, a
torn-down link."""

from __future__ import annotations

import asyncio
import errno
import threading
import time

import pytest

from amplink.errors import (
    AddressError,
    EndpointClosed,
    InvalidArgument,
    LinkDown,
    NoBufferAvailable,
    SendTimeout,
)
from amplink.memory import Access, OwnershipError, allocate_buffer
from amplink.transports.keembay import (
    BadDataAddress,
    ChannelAlreadyOpen,
    ChannelClosed,
    FifoBusy,
    KeemBayPair,
    KmbConfig,
    LinkTornDown,
    MisalignedData,
    NoFreeHeader,
    RecvTimeout,
    wait_peer_channel,
)
from amplink.transports.keembay.wire import (
    HEADER,
    IPC_BUF_FREE,
    KMB_IPC_FIFO_DEPTH,
    STATUS_OFFSET,
    check_entry,
)


@pytest.fixture
def pair():
    # GP channels may fill the whole FIFO, as in the driver (the GP share has its test)
    p = KeemBayPair.create(KmbConfig(heap_size=4 << 20, fifo_share=KMB_IPC_FIFO_DEPTH))
    try:
        yield p
    finally:
        p.close()


def fill(ep, payload=b"x") -> int:
    """try_send until refused; the count sent."""
    for n in range(10_000):
        try:
            ep.try_send(payload)
        except NoBufferAvailable:
            return n
    raise AssertionError("never refused")


# -- channels -------------------------------------------------------------------------------
def test_channels_are_both_ends_and_opened_once(pair):
    cpu, vpu = pair.cpu, pair.vpu
    gp = [cpu.create_endpoint() for _ in range(2)]
    assert [e.addr for e in gp] == [10, 11] and [e.dst for e in gp] == [10, 11]
    hs = cpu.create_endpoint(addr=3)
    assert hs.dst == 3
    with pytest.raises(ChannelAlreadyOpen) as info:
        cpu.create_endpoint(addr=3)
    assert info.value.errno == errno.EEXIST
    with pytest.raises(ChannelAlreadyOpen):
        cpu.create_endpoint(dst=10)  # "the channel whose peer is 10": 10 itself, open
    with pytest.raises(AddressError):
        cpu.create_endpoint(addr=1024)
    with pytest.raises(AddressError):
        cpu.create_endpoint(dst=4000)
    with pytest.raises(InvalidArgument, match="both ends"):
        cpu.create_endpoint(addr=5, dst=6)
    assert vpu.create_endpoint(dst=3).addr == 3
    assert wait_peer_channel(cpu, 3, 1) and not wait_peer_channel(cpu, 4, 0.05)
    hs.send(b"on 3", timeout=1)
    assert vpu.endpoints()[0].recvfrom(timeout=1) == (b"on 3", 3)


def test_message_for_a_closed_channel_is_dropped_counted_and_freed(pair):
    cpu, vpu = pair.cpu, pair.vpu
    rx = cpu.create_endpoint(addr=700)
    tx = vpu.create_endpoint(dst=700)
    rx.close()
    assert vpu.backend.peer_open(700) is False  # the VPU sees the CPU's channel closed
    tx.send(b"to nobody", timeout=1)
    cpu.poll()
    assert cpu.statistics().dropped_unknown_dst == 1
    assert vpu.statistics().backend["headers_allocated"] == 0  # freed all the same
    again = cpu.create_endpoint(addr=700)
    tx.send(b"to the new one", timeout=1)
    assert again.recv(timeout=1) == b"to the new one"


def test_the_peers_open_channels_are_discovered_by_number(pair):
    """A link finds the channels the peer has open in its bitmap (``kmb-N``), opens one by
    name, and loses it (its endpoint closed) when the peer closes the channel."""
    cpu, vpu = pair.cpu, pair.vpu
    assert cpu.channels() == []
    vpu.create_endpoint(addr=0, callback=lambda ep, data, src: ep.send(data))
    far = vpu.create_endpoint(addr=1000)
    assert [(c.name, c.dst, c.src) for c in cpu.channels()] == [("kmb-0", 0, 0),
                                                                 ("kmb-1000", 1000, 1000)]
    ep = cpu.open_channel("kmb-1000", timeout=1)
    assert (ep.addr, ep.dst) == (1000, 1000)
    ep.send(b"by name", timeout=1)
    assert far.recvfrom(timeout=1) == (b"by name", 1000)
    far.close()
    assert [c.name for c in cpu.channels()] == ["kmb-0"]
    with pytest.raises(ChannelClosed, match="'kmb-1000' was removed by the peer"):
        ep.send(b"gone", timeout=1)


def test_any_bitmap_a_peer_writes_is_a_set_of_channels(pair):
    """The bitmap is the peer's memory: every pattern is valid and bounded (1024 channels)."""
    cpu, vpu = pair.cpu, pair.vpu
    bitmap = vpu.backend.layout.bitmap(1)
    vpu.backend.region.mm[bitmap:bitmap + 128] = b"\xff" * 128
    assert [c.dst for c in cpu.channels()] == list(range(1024))
    vpu.backend.region.mm[bitmap:bitmap + 128] = bytes(127) + b"\x80"
    assert [c.name for c in cpu.channels()] == ["kmb-1023"]


# -- the driver's error codes ------------------------------------------------------------
def test_errors_carry_the_drivers_errno(pair):
    cpu, vpu = pair.cpu, pair.vpu
    ep = cpu.create_endpoint()
    vpu.create_endpoint(dst=ep.addr)
    with pytest.raises(RecvTimeout) as timeout:
        ep.recv(timeout=0.01)
    with pytest.raises(ChannelClosed) as unopened:
        ep.send_offchannel(42, 42, b"x", timeout=1)
    assert fill(ep) == KMB_IPC_FIFO_DEPTH
    with pytest.raises(FifoBusy) as busy:
        ep.try_send(b"x")
    ep.close()
    with pytest.raises(ChannelClosed) as closed:
        ep.send(b"x", timeout=1)
    assert (timeout.value.errno, unopened.value.errno, busy.value.errno,
            closed.value.errno) == (errno.ETIME, errno.ENOENT, errno.EBUSY, errno.ENOENT)
    assert isinstance(timeout.value, TimeoutError) and isinstance(busy.value, BlockingIOError)
    vpu.poll()
    assert vpu.statistics().backend["fifo_overflows_seen"] == 1  # the dropped write


def test_no_free_header_when_the_peer_keeps_them():
    with KeemBayPair.create(KmbConfig(headers=8, slot_size=64, heap_size=0)) as p:
        ep = p.cpu.create_endpoint()
        held = p.vpu.create_endpoint(dst=ep.addr, hold=True)
        assert fill(ep) == 8
        with pytest.raises(NoFreeHeader) as info:
            ep.try_send(b"x")
        assert info.value.errno == errno.ENOMEM
        msgs = [held.recv_held(timeout=1) for _ in range(4)]  # out of the FIFO, still held
        with pytest.raises(NoFreeHeader):
            ep.try_send(b"x")
        msgs[2].release()  # the sender finds that header FREE on its next scan
        ep.try_send(b"y")
        for m in msgs:
            m.release()


def test_peer_tears_the_link_down(pair):
    cpu, vpu = pair.cpu, pair.vpu
    ep = cpu.create_endpoint()
    vpu.create_endpoint(dst=ep.addr).send(b"last words", timeout=1)
    got: list[object] = []

    def reader() -> None:
        try:
            while True:
                got.append(ep.recv(timeout=5))
        except Exception as exc:  # noqa: BLE001 - checked below
            got.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    vpu.close()
    t.join(5)
    assert not t.is_alive() and time.monotonic() - t0 < 1
    assert got[0] == b"last words"  # what it sent before still counts
    assert isinstance(got[1], LinkTornDown) and got[1].errno == errno.EPIPE
    assert isinstance(got[1], LinkDown)
    with pytest.raises(LinkTornDown):
        ep.send(b"x", timeout=1)
    assert cpu.statistics().state == "down"


# -- transmit queues and priority ---------------------------------------------------------
def fifo_order(backend) -> list[bytes]:
    """The payloads of the entries in ``backend``'s FIFO, in FIFO order (taken out, their
    headers freed): what the sender's transmitter wrote, before any receiver's choice."""
    layout, mm = backend.layout, backend.region.mm
    got = []
    for entry in backend.rx_fifo.pop(1000):
        index = check_entry(entry, peer=backend.peer, pool_da=backend._peer_pool_da,
                            headers=layout.headers)
        header = layout.nodes[backend.peer].pool + index * 64
        addr, size, *_ = HEADER.unpack_from(mm, header)
        start = layout.to_offset(addr)
        got.append(bytes(mm[start:start + size]))
        mm[header + STATUS_OFFSET] = IPC_BUF_FREE
    return got


def test_blocked_senders_are_served_round_robin(pair):
    cpu, vpu = pair.cpu, pair.vpu
    backend = cpu.backend
    channels = (0, 1, 10, 11)
    for c in channels:
        vpu.create_endpoint(addr=c)
    tx = {c: cpu.create_endpoint(addr=c) for c in channels}
    assert fill(tx[10]) == KMB_IPC_FIFO_DEPTH
    # twelve waiting senders (as the runtime queues them), three per channel
    tickets = [backend.enqueue(c, c, b"%d.%d" % (c, i)) for i in range(3) for c in channels]
    assert len(fifo_order(vpu.backend)) == KMB_IPC_FIFO_DEPTH  # room for everything
    assert backend.sent(tickets[-1]) and all(t.sent for t in tickets)
    # queue 0, queue 1, then the GP queue, which channels 10 and 11 share, in its order
    assert fifo_order(vpu.backend) == [b"0.0", b"1.0", b"10.0", b"0.1", b"1.1", b"11.0",
                                       b"0.2", b"1.2", b"10.1", b"11.1", b"10.2", b"11.2"]


def test_the_receiver_hands_hs_messages_over_before_gp_ones_taken_with_them(pair):
    cpu, vpu = pair.cpu, pair.vpu
    for c in (0, 10, 11):
        cpu.create_endpoint(addr=c)
    tx = {c: vpu.create_endpoint(addr=c) for c in (0, 10, 11)}
    for channel, payload in ((10, b"gp 10.0"), (11, b"gp 11.0"), (10, b"gp 10.1"),
                             (0, b"hs 0.0"), (11, b"gp 11.1"), (0, b"hs 0.1")):
        tx[channel].send(payload, timeout=1)
    calls: list[list[bytes]] = []

    def take(src, dst, payload, handle) -> bool:
        calls[-1].append(bytes(payload))
        return False

    for _ in range(3):
        calls.append([])
        cpu.backend.receive(take, 64)
    # the HS messages first, alone; then the GP ones, in their order; nothing twice
    assert calls == [[b"hs 0.0", b"hs 0.1"],
                     [b"gp 10.0", b"gp 11.0", b"gp 10.1", b"gp 11.1"], []]
    assert vpu.statistics().backend["headers_allocated"] == 0  # every header freed


def test_blocked_send_times_out_and_is_never_sent(pair):
    cpu, vpu = pair.cpu, pair.vpu
    tx = cpu.create_endpoint()
    rx = vpu.create_endpoint(dst=tx.addr)
    n = fill(tx)
    with pytest.raises(SendTimeout):
        tx.send(b"too late", timeout=0.05)
    assert cpu.statistics().backend["tx_waiting"] == 0  # withdrawn
    got = [rx.recv(timeout=1) for _ in range(n)]
    assert b"too late" not in got and rx.try_recvfrom() is None
    tx.send(b"now", timeout=1)
    assert rx.recv(timeout=1) == b"now"


def test_queued_sends_go_as_the_peer_reads(pair):
    cpu, vpu = pair.cpu, pair.vpu
    tx = {c: cpu.create_endpoint(addr=c) for c in (2, 10)}
    rx = {c: vpu.create_endpoint(addr=c) for c in (2, 10)}
    n = fill(tx[10])
    errors: list[BaseException] = []

    def send(c: int, count: int) -> None:
        try:
            for i in range(count):
                tx[c].send(b"%d" % i, timeout=10)
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(c, 200)) for c in (2, 10)]
    for t in threads:
        t.start()
    got_hs = [rx[2].recv(timeout=10) for _ in range(200)]
    got_gp = [rx[10].recv(timeout=10) for _ in range(n + 200)]
    for t in threads:
        t.join(10)
    assert not errors
    assert got_hs == [b"%d" % i for i in range(200)]
    assert got_gp[n:] == [b"%d" % i for i in range(200)]
    assert cpu.statistics().backend["queued_sends"] > 0


def test_gp_channels_hold_their_share_of_the_fifo_hs_the_rest():
    with KeemBayPair.create(KmbConfig(fifo_share=8)) as p:
        gp = p.cpu.create_endpoint()
        hs = p.cpu.create_endpoint(addr=0)
        p.vpu.create_endpoint(dst=gp.addr)
        p.vpu.create_endpoint(dst=0)
        assert fill(gp) == 8
        with pytest.raises(FifoBusy, match="share"):
            gp.try_send(b"x")
        assert not gp.wait_writable(timeout=0.01)
        assert fill(hs) == KMB_IPC_FIFO_DEPTH - 8
        assert p.cpu.statistics().backend["gp_share_full"] >= 1
        assert p.vpu.backend.fifo_share == 8  # the VPU read it from the descriptor


# -- by reference ------------------------------------------------------------------------
def test_send_by_reference_lends_the_buffer_until_the_peer_consumed_it(pair):
    cpu, vpu = pair.cpu, pair.vpu
    tx = cpu.create_endpoint(addr=12)
    rx = vpu.create_endpoint(addr=12, hold=True)
    frame = cpu.backend.heap.allocate(2 << 20, name="frame")
    data = bytes(range(256)) * (8 << 10)
    frame.write(data)
    ref = tx.send_reference(frame, timeout=1)
    assert ref.size == len(data) > cpu.mtu and not ref.done
    assert frame.owner == "vpu"
    with pytest.raises(OwnershipError):
        frame.read(0, 4)
    msg = rx.recv_held(timeout=1)
    assert len(msg) == len(data) and bytes(msg.view) == data
    assert not ref.wait(0.01)  # held: the header is not FREE yet
    msg.release()
    assert ref.wait(1) and ref.done and frame.owner == "cpu"
    assert cpu.statistics().backend["references_done"] == 1
    frame.close()


def test_reference_from_the_vpu_heap_and_slices(pair):
    cpu, vpu = pair.cpu, pair.vpu
    tx = vpu.create_endpoint(addr=0)
    rx = cpu.create_endpoint(addr=0)
    out = vpu.backend.heap.allocate(1 << 16, name="result")
    out.write(b"A" * 64 + b"B" * 64)
    refs = [tx.send_reference(out.slice(0, 64)), tx.send_reference(out.slice(64, 64))]
    assert out.owner == "host"
    assert rx.recv(timeout=1) == b"A" * 64  # copied out: the header is freed at once
    assert out.owner == "host"  # one slice still out
    assert rx.recv(timeout=1) == b"B" * 64
    assert all(r.wait(1) for r in refs) and out.owner == "cpu"
    out.close()


def test_references_the_peer_cannot_address_are_refused(pair):
    cpu, vpu = pair.cpu, pair.vpu
    tx = cpu.create_endpoint(addr=20)
    vpu.create_endpoint(addr=20)
    elsewhere = allocate_buffer(4096, name="elsewhere")
    heap = cpu.backend.heap.allocate(8192, name="heap")
    lo, hi = cpu.backend.layout.window_da
    cases = [(elsewhere, BadDataAddress, errno.ENXIO),
             ((hi - 64, 128), BadDataAddress, errno.ENXIO),
             ((lo - 64, 64), BadDataAddress, errno.ENXIO),
             (heap.slice(8, 100), MisalignedData, errno.EFAULT),
             ((lo + 4, 8), MisalignedData, errno.EFAULT)]
    for target, error, code in cases:
        with pytest.raises(error) as info:
            tx.send_reference(target, timeout=1)
        assert info.value.errno == code
    assert heap.owner == "cpu" and tx.statistics().messages_sent == 0
    with pytest.raises(InvalidArgument):
        tx.send_reference("not a buffer", timeout=1)
    with heap.cpu_access(Access.READ):  # the CPU uses it: it cannot go
        with pytest.raises(OwnershipError):
            tx.send_reference(heap, timeout=1)
    assert heap.owner == "cpu"
    elsewhere.close()
    heap.close()


def test_reference_that_times_out_or_is_lost_comes_back(pair):
    cpu, vpu = pair.cpu, pair.vpu
    tx = cpu.create_endpoint(addr=30)
    vpu.create_endpoint(addr=30)
    buf = cpu.backend.heap.allocate(4096)
    fill(tx)
    with pytest.raises(SendTimeout):
        tx.send_reference(buf, timeout=0.05)
    assert buf.owner == "cpu"
    with pytest.raises(FifoBusy):
        tx.send_reference(buf, timeout=0)
    assert buf.owner == "cpu"
    vpu.poll()  # room again
    ref = tx.send_reference(buf, timeout=1)
    assert buf.owner == "vpu"
    cpu.close()  # the peer never consumed it
    assert ref.lost and not ref.done and buf.owner == "cpu"
    buf.close()


def test_a_reference_waiting_to_be_sent_comes_back_when_the_link_closes(pair):
    cpu, vpu = pair.cpu, pair.vpu
    tx = cpu.create_endpoint(addr=31)
    vpu.create_endpoint(addr=31)
    buf = cpu.backend.heap.allocate(4096)
    fill(tx)
    errors: list[BaseException] = []

    def send() -> None:
        try:
            tx.send_reference(buf, timeout=10)
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    t = threading.Thread(target=send)
    t.start()
    deadline = time.monotonic() + 5
    while not cpu.statistics().backend["tx_waiting"] and time.monotonic() < deadline:
        time.sleep(0.001)
    assert buf.owner == "vpu"  # lent while it waits in its transmit queue
    cpu.close()
    t.join(5)
    assert not t.is_alive() and isinstance(errors[0], EndpointClosed)
    assert buf.owner == "cpu"
    buf.close()


# -- zero copy ----------------------------------------------------------------------------
def test_loans_and_held_messages(pair):
    cpu, vpu = pair.cpu, pair.vpu
    tx = cpu.create_endpoint(addr=1)
    rx = vpu.create_endpoint(addr=1, hold=True)
    with tx.loan(timeout=1) as loan:
        loan.view[:5] = b"hello"
        loan.send(5)
    dropped = tx.loan(timeout=1)
    dropped.drop()
    with rx.recv_held(timeout=1) as msg:
        assert bytes(msg.view) == b"hello"
    with pytest.raises(EndpointClosed):
        with tx.loan(timeout=1) as loan:
            tx.close()
            loan.send(1)
    assert cpu.statistics().backend["loaned"] == 0
    assert cpu.statistics().backend["headers_allocated"] == 0


def test_asyncio_on_hs_and_gp_channels(pair):
    cpu, vpu = pair.cpu, pair.vpu
    hs, gp = cpu.create_endpoint(addr=0), cpu.create_endpoint()
    echo = {c: vpu.create_endpoint(addr=c, callback=lambda ep, data, src: ep.send(data))
            for c in (0, gp.addr)}

    async def main() -> list[bytes]:
        await hs.asend(b"hs", timeout=1)
        await gp.asend(b"gp", timeout=1)
        return [await hs.arecv(timeout=2), await gp.arecv(timeout=2)]

    assert asyncio.run(main()) == [b"hs", b"gp"]
    assert len(echo) == 2
