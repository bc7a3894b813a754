"""The endpoint service: clients get the endpoint API on processors the service holds,
several at once, each with its own addresses; announcements and link-down events reach
every client; a slow client stalls nobody; a client that goes releases what it held;
requests are served concurrently."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from pathlib import Path

import pytest
from common_kit import Outcome, wait_for
from loop_kit import TIMEOUT, LoopService, loop_service

from amplink import Endpoint
from amplink.errors import (
    AccessDenied,
    AmplinkError,
    EndpointClosed,
    LinkDown,
    MessageTooLarge,
    NotSupported,
    ReceiveTimeout,
    SendTimeout,
    UnknownTarget,
)
from amplink.platforms.linux import LinuxRemoteProc
from amplink.remoteproc.states import RprocState
from amplink.service.session import MAX_QUEUED
from amplink.transports.service import service_status


@pytest.fixture
def service(tmp_path: Path):
    with loop_service(tmp_path) as s:
        yield s


def test_a_client_has_the_whole_endpoint_api(service: LoopService) -> None:
    service.boot()
    link = service.link()
    caps = link.capabilities
    assert caps.name_service and caps.addressing == "pair" and not caps.tx_loan
    assert not caps.send_by_reference  # this processor maps no buffers of its host
    ep = link.open_channel("rpmsg-echo", timeout=TIMEOUT)
    ep.send(b"hello")
    assert ep.recvfrom(timeout=TIMEOUT) == (b"hello", ep.dst)
    # callbacks, run by the client link's own dispatcher
    got: list[bytes] = []
    done = threading.Event()

    def on_message(_ep: Endpoint, payload: bytes, _src: int) -> None:
        got.append(payload)
        done.set()

    cb = link.open_channel("rpmsg-echo", timeout=TIMEOUT, callback=on_message)
    assert cb.addr != ep.addr
    cb.send(b"to the callback")
    assert done.wait(TIMEOUT) and got == [b"to the callback"]

    # asyncio: the loop watches the socket
    async def roundtrip() -> bytes:
        await ep.asend(b"awaited")
        return await ep.arecv(timeout=TIMEOUT)

    assert asyncio.run(roundtrip()) == b"awaited"
    stats = link.statistics()
    assert stats.state == "up" and stats.backend["kind"] == "service"
    assert stats.messages_sent >= 3


def test_capabilities_are_declared_and_refused_honestly(service: LoopService) -> None:
    service.boot()
    link = service.link()
    ep = link.open_channel("rpmsg-echo", timeout=TIMEOUT)
    with pytest.raises(NotSupported):
        ep.loan()
    with pytest.raises(NotSupported):
        link.open_channel("rpmsg-echo", timeout=TIMEOUT, hold=True)
    with pytest.raises(NotSupported):  # announcing is the processor's, not a client's
        link.create_endpoint("rpmsg-echo", announce=True)
    assert len(link.endpoints()) == 1  # the refused one is gone
    with pytest.raises(MessageTooLarge):
        ep.send(bytes(link.mtu + 1))
    ep.send(bytes(link.mtu))
    assert ep.recv(timeout=TIMEOUT) == bytes(link.mtu)


def test_a_client_sends_only_on_its_channels(service: LoopService) -> None:
    rproc = service.boot()
    other = rproc.announce("rpmsg-other")
    link = service.link()
    ep = link.open_channel("rpmsg-echo", timeout=TIMEOUT)
    with pytest.raises(NotSupported):  # another channel's address: "pair" addressing
        ep.sendto(b"x", other.addr)
    with pytest.raises(AccessDenied):  # a source that is not this client's
        ep.send_offchannel(ep.addr + 100, ep.dst, b"x")
    with pytest.raises(AccessDenied):  # an endpoint belongs to a channel
        link.create_endpoint()
    with pytest.raises(UnknownTarget):
        link.create_endpoint("rpmsg-none")
    ep.send(b"still fine")
    assert ep.recv(timeout=TIMEOUT) == b"still fine"
    assert other.try_recvfrom() is None


def test_clients_of_one_channel_have_their_own_addresses_and_replies(
        service: LoopService) -> None:
    service.boot()
    eps = [service.link().open_channel("rpmsg-echo", timeout=TIMEOUT) for _ in range(3)]
    assert len({ep.addr for ep in eps}) == 3
    for i, ep in enumerate(eps):
        ep.send(f"from {i}".encode())
    for i, ep in enumerate(eps):
        assert ep.recv(timeout=TIMEOUT) == f"from {i}".encode()
        with pytest.raises(ReceiveTimeout):  # nobody else's reply
            ep.recv(timeout=0.1)


def test_a_watcher_gets_copies_of_the_channel_both_ways(service: LoopService) -> None:
    service.boot(reply=bytes.upper)
    talker = service.link().open_channel("rpmsg-echo", timeout=TIMEOUT)
    watcher = service.link(watch=True).open_channel("rpmsg-echo", timeout=TIMEOUT)
    talker.send(b"one")
    assert talker.recv(timeout=TIMEOUT) == b"ONE"
    assert watcher.recvfrom(timeout=TIMEOUT) == (b"one", talker.addr)  # to the processor
    assert watcher.recvfrom(timeout=TIMEOUT) == (b"ONE", talker.dst)   # and its answer
    watcher.send(b"two")  # its own traffic comes once, not also as copies
    assert watcher.recv(timeout=TIMEOUT) == b"TWO"
    with pytest.raises(ReceiveTimeout):
        watcher.recv(timeout=0.2)
    with pytest.raises(ReceiveTimeout):
        talker.recv(timeout=0.05)


def test_announcements_reach_every_client_as_they_come(service: LoopService) -> None:
    rproc = service.boot()
    links = [service.link(), service.link()]
    late = rproc.announce("rpmsg-late")
    eps = [link.open_channel("rpmsg-late", timeout=TIMEOUT) for link in links]
    for ep in eps:
        ep.send(b"hi")
    assert sorted(late.recvfrom(timeout=TIMEOUT)[1] for _ in eps) == sorted(e.addr for e in eps)
    late.close()  # the firmware ends the service: every client's endpoint closes
    for ep in eps:
        with pytest.raises(EndpointClosed):
            ep.recv(timeout=TIMEOUT)
    assert all(wait_for(lambda lk=lk: not lk.channels() or all(
        c.name != "rpmsg-late" for c in lk.channels()), TIMEOUT) for lk in links)


def test_link_down_reaches_every_client(service: LoopService) -> None:
    rproc = service.boot()
    eps = [service.link().open_channel("rpmsg-echo", timeout=TIMEOUT) for _ in range(2)]
    waiting = [Outcome(lambda ep=ep: ep.recv(timeout=TIMEOUT)) for ep in eps]
    time.sleep(0.05)
    rproc.crash()
    for outcome in waiting:
        assert outcome.join(TIMEOUT)
        assert isinstance(outcome.error, LinkDown), outcome.error
        assert "crashed" in str(outcome.error)
    with pytest.raises(LinkDown):
        eps[0].send(b"after")
    # a new client after recovery gets the new link
    rproc.recover()
    rproc.serve_echo()
    assert wait_for(lambda: _served_up(service), TIMEOUT)
    ep = service.link().open_channel("rpmsg-echo", timeout=TIMEOUT)
    ep.send(b"again")
    assert ep.recv(timeout=TIMEOUT) == b"again"


def _served_up(service: LoopService) -> bool:
    status = service_status(service.root)
    return bool(status and status[0].links and status[0].links[0].state == "up")


def test_attaching_to_an_offline_or_unknown_processor(service: LoopService) -> None:
    client = service.control
    client.add("fw", "idle")
    with pytest.raises(LinkDown, match="offline"):
        service.link("idle")
    with pytest.raises(UnknownTarget):
        service.link("nonesuch")
    service.boot("up")
    with pytest.raises(LinkDown, match="link 3"):
        service.link("up", link=3)


def test_a_slow_client_stalls_nobody(service: LoopService) -> None:
    rproc = service.boot()
    flood = rproc.announce("rpmsg-flood")
    slow_link = service.link()
    slow = slow_link.open_channel("rpmsg-flood", timeout=TIMEOUT)
    slow.send(b"here I am")
    src = flood.recvfrom(timeout=TIMEOUT)[1]
    # the slow client stops reading: its socket fills, then its queue in the service
    slow_link.backend.waiter.close()  # nothing of its link reads the socket any more
    fast = service.link().open_channel("rpmsg-echo", timeout=TIMEOUT)
    sent = 0
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and not _client_dropped(service, slow_link):
        for _ in range(64):
            flood.sendto(b"x" * 400, src, timeout=TIMEOUT)
            sent += 1
        t0 = time.monotonic()
        fast.send(b"ping")
        assert fast.recv(timeout=TIMEOUT) == b"ping"
        assert time.monotonic() - t0 < 1.0  # the fast client is answered meanwhile
    assert _client_dropped(service, slow_link), f"no drop after {sent} messages"
    status = service_status(service.root)[0]
    slow_status = next(c for c in status.clients if c.endpoints and c.queued)
    assert slow_status.queued <= MAX_QUEUED


def _client_dropped(service: LoopService, _link: object) -> bool:
    return any(c.dropped for p in service_status(service.root) for c in p.clients)


def test_credits_bound_what_a_client_has_in_the_service(service: LoopService) -> None:
    rproc = service.boot(echo=False)  # nothing on the firmware's side drains its link
    sink = rproc.announce("rpmsg-sink")  # until the test reads: the ring fills
    link = service.link()
    ep = link.open_channel("rpmsg-sink", timeout=TIMEOUT)
    window = link.backend.statistics()["window"]
    with pytest.raises(SendTimeout):
        for _ in range(10_000):
            ep.send(b"y" * 100, timeout=0.5)
    status = service_status(service.root)[0].clients[0]
    assert status.pending <= window
    received = 0
    while sink.try_recvfrom() is not None:  # the firmware reads: everything arrives
        received += 1
    assert wait_for(lambda: service_status(service.root)[0].clients[0].pending == 0, TIMEOUT)
    ep.send(b"after", timeout=TIMEOUT)
    while True:
        payload = sink.recv(timeout=TIMEOUT)
        received += 1
        if payload == b"after":
            break
    assert received == ep.statistics().messages_sent


def test_a_client_that_goes_releases_everything(service: LoopService) -> None:
    service.boot()
    host = service.made["loop0"].links[0]
    before = len(host.endpoints())
    link = service.link(watch=True)
    for _ in range(3):
        link.open_channel("rpmsg-echo", timeout=TIMEOUT)
    assert len(host.endpoints()) == before + 3
    link.backend._sock.close()  # as if the process died: no goodbye
    assert wait_for(lambda: len(host.endpoints()) == before, TIMEOUT)
    assert wait_for(lambda: not service_status(service.root)[0].clients, TIMEOUT)
    channel = service_status(service.root)[0].links[0].channels[0]
    assert not channel.endpoints and not channel.watchers


def test_closing_an_endpoint_frees_its_address(service: LoopService) -> None:
    service.boot()
    link = service.link()
    ep = link.open_channel("rpmsg-echo", timeout=TIMEOUT)
    addr = ep.addr
    ep.close()
    assert wait_for(lambda: not service_status(service.root)[0].links[0].channels[0].endpoints,
                    TIMEOUT)
    again = link.create_endpoint("rpmsg-echo", addr=addr)
    assert again.addr == addr


def test_a_slow_boot_delays_no_other_client(tmp_path: Path) -> None:
    with loop_service(tmp_path, boot_delay=1.5) as service:
        client = service.control
        dev, _ = client.add("fw", "slow")
        booting = Outcome(lambda: LinuxRemoteProc(dev, client.tree).boot())
        time.sleep(0.1)  # the boot is under way
        t0 = time.monotonic()
        assert LinuxRemoteProc(dev, client.tree).state.value == "offline"  # reads go on
        client.add("fw", "other")
        assert [p.name for p in service_status(service.root)] == ["slow", "other"]
        assert time.monotonic() - t0 < 0.7  # served one at a time, they would wait ~1.4 s
        assert booting.join(TIMEOUT) and booting.error is None


def test_a_client_that_spins_sees_the_service_hang_up(service: LoopService) -> None:
    """The end of the connection is LinkDown for a receive that spins through its whole
    wait (rx_pending says readable, and there is nothing to read), as for one that sleeps."""
    service.boot()
    link = service.link(spin=60.0)  # spins through the whole receive once it woke twice
    ep = link.open_channel("rpmsg-echo", timeout=TIMEOUT)
    other = link.open_channel("rpmsg-echo", timeout=TIMEOUT)
    waiting = Outcome(lambda: ep.recv(timeout=5.0))
    for wake in (b"1", b"2"):  # answers for the other endpoint wake the waiting receive
        time.sleep(0.1)
        other.send(wake)
    assert wait_for(lambda: other.queued == 2, TIMEOUT)
    time.sleep(0.1)
    assert service.supervisor.endpoints is not None
    t0 = time.monotonic()
    for session in list(service.supervisor.endpoints._sessions.values()):
        session.sock.shutdown(socket.SHUT_RDWR)  # the service's end, without a word
    assert waiting.join(TIMEOUT)
    assert isinstance(waiting.error, LinkDown), waiting.error
    assert "closed the connection" in str(waiting.error)
    assert waiting.ended is not None and waiting.ended - t0 < 1.0


def test_a_fault_serving_one_client_costs_only_that_client(
        service: LoopService, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A bug met while serving one client's message disconnects that client (LinkDown for
    it, logged), and the service serves the others on."""
    from amplink.service import relay

    service.boot()
    victim, other = service.link(), service.link()
    bad = victim.open_channel("rpmsg-echo", timeout=TIMEOUT)
    good = other.open_channel("rpmsg-echo", timeout=TIMEOUT)
    real_send = relay.ServedLink.send

    def faulty_send(self: relay.ServedLink, ce: relay.ClientEndpoint, payload: bytes) -> None:
        if payload == b"poison":
            raise RuntimeError("a bug in the relay")
        real_send(self, ce, payload)

    monkeypatch.setattr(relay.ServedLink, "send", faulty_send)
    bad.send(b"poison")
    with pytest.raises(LinkDown):
        bad.recv(timeout=TIMEOUT)
    assert "a bug in the relay" in caplog.text
    good.send(b"still served")
    assert good.recv(timeout=TIMEOUT) == b"still served"
    fresh = service.link().open_channel("rpmsg-echo", timeout=TIMEOUT)
    fresh.send(b"and new clients too")
    assert fresh.recv(timeout=TIMEOUT) == b"and new clients too"


def test_a_dead_endpoint_service_is_restarted(service: LoopService,
                                              monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """A fault that ends the endpoint service's I/O thread (here: in accept) disconnects
    its clients (LinkDown) and the supervisor serves the channels again with a new one;
    the processors run on."""
    from amplink.service.endpoints import EndpointService

    caplog.set_level(logging.INFO, logger="amplink.service.supervisor")
    rproc = service.boot()
    before = service.link().open_channel("rpmsg-echo", timeout=TIMEOUT)
    real_accept = EndpointService._accept
    faults = iter([RuntimeError("a bug in accept")])

    def faulty_accept(self: EndpointService) -> None:
        fault = next(faults, None)
        if fault is not None:
            raise fault
        real_accept(self)

    monkeypatch.setattr(EndpointService, "_accept", faulty_accept)
    with pytest.raises(AmplinkError):
        service.link()  # its connection is what the dying thread was accepting
    with pytest.raises(LinkDown, match="closed the connection"):
        before.recv(timeout=TIMEOUT)
    assert "a bug in accept" in caplog.text

    def echoes() -> bool:
        try:
            ep = service.link(timeout=1.0).open_channel("rpmsg-echo", timeout=TIMEOUT)
        except AmplinkError:
            return False
        ep.send(b"served again")
        return ep.recv(timeout=TIMEOUT) == b"served again"

    assert wait_for(echoes, TIMEOUT)
    assert rproc.state is RprocState.RUNNING
    assert "the endpoint service was restarted" in caplog.text


def test_a_processor_whose_links_fail_costs_only_its_own_clients(
        service: LoopService, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from amplink.service import endpoints

    real_links_of = endpoints.links_of

    def links_of(rproc):  # type: ignore[no-untyped-def]
        if rproc.name == "broken":
            raise RuntimeError("its links cannot be read")
        return real_links_of(rproc)

    monkeypatch.setattr(endpoints, "links_of", links_of)
    client = service.control
    dev, _ = client.add("loop-firmware", "broken")
    LinuxRemoteProc(dev, client.tree).boot()
    assert wait_for(lambda: "broken: serving its links failed" in caplog.text, TIMEOUT)
    service.boot()  # loop0, served as ever
    ep = service.link().open_channel("rpmsg-echo", timeout=TIMEOUT)
    ep.send(b"served")
    assert ep.recv(timeout=TIMEOUT) == b"served"
