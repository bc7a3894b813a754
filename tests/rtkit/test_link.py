"""The application endpoints as a link (platforms/rtkit/backend.py), host runtime and
firmware runtime in this process: the payload mapping, addressing, discovery as channels,
typed errors (undiscovered endpoint, full mailbox, crash, stop), the bounded inbox, and a
dispatcher that never waits for the link."""

from __future__ import annotations

import asyncio
import errno
import threading
import time

import pytest
from common_kit import Outcome, wait_for
from rtkit_kit import FirmwareRig, Rig

from amplink.errors import (
    AddressError,
    InvalidArgument,
    LinkDown,
    MessageTooLarge,
    NoBufferAvailable,
    NotSupported,
    ReceiveTimeout,
    SendTimeout,
)
from amplink.firmware.rtkit import RtkitFirmware
from amplink.link import Endpoint, Link
from amplink.platforms.rtkit.backend import (
    RtkitBackend,
    channel_name,
    pack_message,
    rtkit_link,
    unpack_message,
)
from amplink.rtkit import messages as m
from amplink.rtkit.errors import RtkitCrashed, RtkitNotRunning, RtkitUndiscoveredEndpoint
from amplink.transports.mailbox import MailboxSendTimeout

ECHO, SINK, TALKER = 0x20, 0x21, 0x40


def firmware(fw: RtkitFirmware) -> None:
    fw.endpoint(ECHO, lambda msg: fw.send(ECHO, msg))
    fw.endpoint(SINK, lambda msg: None)

    def talk(msg: int) -> None:  # answers ``msg`` messages 0..msg-1
        for i in range(msg):
            fw.send(TALKER, i)

    fw.endpoint(TALKER, talk)


@pytest.fixture
def rig():
    rig = FirmwareRig(firmware)
    rig.host.boot()
    yield rig
    rig.close()


@pytest.fixture
def link(rig):
    link = rtkit_link(rig.host)
    yield link
    link.close()


def test_pack_and_unpack_are_8_bytes_little_endian():
    assert pack_message(0x1122_3344_5566_7788) == bytes.fromhex("8877665544332211")
    assert unpack_message(bytes.fromhex("0100000000000080")) == 0x8000_0000_0000_0001
    for bad in (b"", b"1234567", b"123456789"):
        with pytest.raises(InvalidArgument):
            unpack_message(bad)
    with pytest.raises(InvalidArgument):
        pack_message(1 << 64)


def test_capabilities_and_discovered_endpoints_as_channels(link):
    caps = link.capabilities
    assert (caps.max_payload, caps.min_payload, caps.addressing) == (8, 8, "endpoint")
    assert caps.address_range == (0x20, 0xFF) and caps.dynamic_base is None
    assert caps.channel_discovery and not (caps.name_service or caps.tx_loan or caps.rx_hold)
    assert [(c.name, c.dst) for c in link.channels()] == [
        ("rtkit-0x20", ECHO), ("rtkit-0x21", SINK), ("rtkit-0x40", TALKER)]
    ep = link.open_channel(channel_name(ECHO), timeout=1)
    assert (ep.addr, ep.dst, ep.mtu) == (ECHO, ECHO, 8)
    assert link.statistics().backend["endpoints"] == (ECHO,)


def test_round_trip_keeps_every_bit(link):
    ep = link.create_endpoint(addr=ECHO)
    assert ep.dst == ECHO  # one number is both ends
    for value in (0, 1, 0x8000_0000_0000_0000, (1 << 64) - 1):
        ep.send(pack_message(value), timeout=1)
        payload, src = ep.recvfrom(timeout=2)
        assert (unpack_message(payload), src) == (value, ECHO)
    ep.send(bytearray(pack_message(7)), timeout=1)
    assert ep.recv(timeout=2) == pack_message(7)


def test_other_payload_lengths_are_refused_not_padded_or_cut(link):
    ep = link.create_endpoint(addr=ECHO)
    for short in (b"", b"1234567"):
        with pytest.raises(InvalidArgument):
            ep.send(short, timeout=1)
        with pytest.raises(InvalidArgument):
            ep.try_send(short)
        with pytest.raises(InvalidArgument):
            asyncio.run(ep.asend(short, timeout=1))
    with pytest.raises(MessageTooLarge) as info:
        ep.send(b"123456789", timeout=1)
    assert info.value.errno == errno.EMSGSIZE
    ep.send(pack_message(42), timeout=1)  # nothing of the refused ones went out
    assert ep.recv(timeout=2) == pack_message(42)
    with pytest.raises(ReceiveTimeout):
        ep.recv(timeout=0.05)
    assert ep.statistics().messages_sent == 1


def test_addressing_errors_are_typed(rig, link):
    ep = link.create_endpoint(addr=ECHO)
    for call in (lambda: ep.sendto(pack_message(1), SINK, timeout=1),
                 lambda: ep.send_offchannel(SINK, ECHO, pack_message(1), timeout=1),
                 lambda: link.create_endpoint(),  # no "any address": numbers are fixed
                 lambda: link.create_endpoint(addr=SINK, dst=ECHO)):
        with pytest.raises(NotSupported) as info:
            call()
        assert info.value.errno == errno.EOPNOTSUPP
    with pytest.raises(AddressError):  # sends from another link's endpoint number
        ep.send_offchannel(SINK, SINK, pack_message(1), timeout=1)
    with pytest.raises(RtkitUndiscoveredEndpoint) as undiscovered:
        link.create_endpoint(addr=0x30)
    assert isinstance(undiscovered.value, AddressError)
    assert undiscovered.value.errno == errno.EINVAL
    for outside in (0x1F, 0x100):
        with pytest.raises(AddressError):
            link.create_endpoint(addr=outside)
    with pytest.raises(AddressError):
        link.create_endpoint(addr=ECHO)  # in use on this link
    raw = rig.host.open_endpoint(SINK)
    with pytest.raises(InvalidArgument):
        link.create_endpoint(addr=SINK)  # held by an RtkitEndpoint
    raw.close()
    assert link.create_endpoint(addr=SINK).addr == SINK
    assert [e.addr for e in link.endpoints()] == [ECHO, SINK]


def test_callbacks_asyncio_and_messages_in_order(link):
    got: list[int] = []
    done = threading.Event()

    def on_message(ep: Endpoint, payload: bytes, src: int) -> None:
        got.append(unpack_message(payload))
        assert link.statistics().state == "up"  # no lock of the link is held here
        if len(got) == 100:
            done.set()

    talker = link.create_endpoint(addr=TALKER, callback=on_message)
    talker.send(pack_message(100), timeout=1)
    assert done.wait(5) and got == list(range(100))
    echo = link.create_endpoint(addr=ECHO)

    async def main() -> bytes:
        await echo.asend(pack_message(9), timeout=1)
        return await echo.arecv(timeout=2)

    assert asyncio.run(asyncio.wait_for(main(), 5)) == pack_message(9)


def test_a_full_inbox_drops_and_counts(rig):
    backend = RtkitBackend(rig.host, inbox_limit=4)
    link = Link(backend, name="small")
    backend.watch_run(link.mark_down)
    try:
        ep = link.create_endpoint(addr=TALKER)
        ep.send(pack_message(10), timeout=1)  # 10 answers; nobody takes them for a while
        assert wait_for(lambda: backend.dropped_inbox_full == 6, 5)
        assert rig.host.statistics().drops["QUEUE_FULL"] == 6
        assert [unpack_message(ep.recv(timeout=1)) for _ in range(4)] == [0, 1, 2, 3]
        assert link.statistics().backend["queued_in"] == 0
    finally:
        link.close()


def test_the_dispatcher_never_waits_for_the_link(rig, link):
    """A link whose lock is held (a user's long drain) and a callback that blocks do not
    hold up the runtime: the system endpoints are served, messages keep arriving."""
    release = threading.Event()
    entered = threading.Event()

    def block(ep: Endpoint, payload: bytes, src: int) -> None:
        entered.set()
        release.wait(10)

    blocked = link.create_endpoint(addr=ECHO, callback=block)
    talker = link.create_endpoint(addr=TALKER)
    blocked.send(pack_message(1), timeout=1)
    assert entered.wait(5)
    with link._lock:  # the link is busy: the dispatcher must not care
        rig.host.send(TALKER, 3)
        assert rig.host.ping() < 1
        assert wait_for(lambda: link.statistics().backend["queued_in"] == 3, 5)
    release.set()
    assert [unpack_message(talker.recv(timeout=2)) for _ in range(3)] == [0, 1, 2]


def test_a_crash_fails_blocked_and_later_calls_with_rtkit_crashed(rig, link):
    ep = link.create_endpoint(addr=ECHO)
    waiting = Outcome(lambda: ep.recv(timeout=10))
    time.sleep(0.05)
    rig.host.request_crash()
    assert waiting.join(5)
    assert isinstance(waiting.error, RtkitCrashed) and isinstance(waiting.error, LinkDown)
    assert waiting.error.errno == errno.EINVAL
    assert not link.is_up and link.statistics().state == "down"
    assert not link.writable()
    for call in (lambda: ep.send(pack_message(1), timeout=1), lambda: ep.recv(timeout=1),
                 lambda: link.create_endpoint(addr=SINK),
                 lambda: ep.wait_writable(timeout=1)):  # not "writable": a gone co-processor
        with pytest.raises(RtkitCrashed):
            call()
    rig.host.reinit()  # the run is over: still down (a recovery makes a new run and link)
    with pytest.raises(RtkitCrashed):
        ep.send(pack_message(1), timeout=1)


def test_stopping_the_runtime_takes_the_link_down():
    rig = FirmwareRig(firmware)
    rig.host.boot()
    link = rtkit_link(rig.host)
    try:
        ep = link.create_endpoint(addr=ECHO)
        waiting = Outcome(lambda: ep.recv(timeout=10))
        time.sleep(0.05)
        rig.host.close("stopped by the test")
        assert waiting.join(5) and isinstance(waiting.error, LinkDown)
        with pytest.raises(LinkDown, match="stopped by the test"):
            ep.send(pack_message(1), timeout=1)
    finally:
        link.close()
        rig.close()


def test_sleeping_coprocessor_refuses_sends_until_woken(rig, link):
    ep = link.create_endpoint(addr=ECHO)
    rig.host.quiesce()
    with pytest.raises(RtkitNotRunning):
        ep.send(pack_message(1), timeout=1)
    assert link.channels() == []  # the host forgot the endpoint map in its reinit
    rig.host.wake()
    assert [c.dst for c in link.channels()] == [ECHO, SINK, TALKER]
    ep.send(pack_message(2), timeout=1)
    assert ep.recv(timeout=2) == pack_message(2)


# -- a co-processor that does not read its mailbox ---------------------------------------------
@pytest.fixture
def silent():
    """The host booted against a raw co-processor end that reads only when told to."""
    rig = Rig(depth=4)
    booting = Outcome(rig.host.boot)
    rig.hello_and_map({ECHO})  # no system endpoints: nothing to start at boot
    rig.power_up()
    assert booting.join(5) and booting.error is None
    link = rtkit_link(rig.host)
    yield rig, link
    link.close()
    rig.close()


def test_full_mailbox_send_timeout_is_etimedout_and_resumes(silent):
    rig, link = silent
    ep = link.create_endpoint(addr=ECHO)
    assert rig.recv() == (0, m.startep(ECHO))
    for i in range(4):
        ep.try_send(pack_message(i))
    assert not link.writable()
    with pytest.raises(NoBufferAvailable):
        ep.try_send(pack_message(4))
    t0 = time.monotonic()
    with pytest.raises(MailboxSendTimeout) as info:
        ep.send(pack_message(4), timeout=0.1)
    assert 0.1 <= time.monotonic() - t0 < 0.6
    assert isinstance(info.value, SendTimeout) and info.value.errno == errno.ETIMEDOUT
    with pytest.raises(MailboxSendTimeout):
        asyncio.run(ep.asend(pack_message(4), timeout=0.1))
    assert ep.wait_writable(timeout=0.05) is False
    resumed = Outcome(lambda: ep.send(pack_message(4), timeout=5))
    time.sleep(0.05)
    assert rig.recv() == (ECHO, 0)  # the co-processor pops from the full FIFO: it rings
    assert resumed.join(5) and resumed.error is None
    assert [rig.recv() for _ in range(4)] == [(ECHO, i) for i in range(1, 5)]
    assert link.writable()


def test_a_flood_of_messages_nobody_opened_is_counted_by_the_runtime(silent):
    rig, link = silent
    link.create_endpoint(addr=ECHO)
    rig.send(ECHO, 5)  # to the open endpoint
    rig.send(ECHO + 1, 6)  # not in the endpoint map
    ep = link.endpoints()[0]
    assert ep.recv(timeout=2) == pack_message(5)
    assert wait_for(lambda: rig.host.statistics().drops.get("UNDISCOVERED_ENDPOINT") == 1, 2)
