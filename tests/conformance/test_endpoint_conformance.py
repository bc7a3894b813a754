"""One endpoint-API conformance suite, run against every transport configuration.

Every test takes the ``link_pair_factory`` fixture: a connected ``(host_bus, device_bus)``
pair of :class:`amplink.Link` objects, built once per entry of ``LINK_FACTORIES``.
The tests use only the public bus and endpoint API, never the transport underneath.

Adding a transport (fifo, mailbox, a real inter-process link, ...)
------------------------------------------------------------------------
Write a zero-argument callable that returns a context manager yielding
``(host_bus, device_bus)`` and tearing everything down on exit, then append it to
``LINK_FACTORIES`` as ``pytest.param(factory, id="short-name")``. That is all: every test
below then runs against it. A factory must provide:

* two buses that can reach each other by address, both with the name service
  (channel announcement) enabled;
* finite transmit buffers in both directions (the suite exhausts them with ``try_send``);
* ``bus.close()`` that may be called more than once (tests close buses themselves and the
  factory closes them again on exit).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import partial

import pytest

from amplink import (
    EndpointClosed,
    Link,
    LinkConfig,
    MessageTooLarge,
    NoBufferAvailable,
    ReceiveTimeout,
    SendTimeout,
)
from amplink.platforms.inprocess import LinkPair

BusPair = tuple[Link, Link]
LinkFactory = Callable[[], AbstractContextManager[BusPair]]

MARGIN = 0.75  # scheduling slack for timing assertions on a loaded machine, seconds
MAX_TX = 100_000  # upper bound when exhausting transmit buffers


@contextmanager
def inprocess_virtio(config: LinkConfig | None = None, **options: object) -> Iterator[BusPair]:
    """rpmsg over virtio rings, host and device buses in this process."""
    lp = LinkPair.create(config, **options)  # type: ignore[arg-type]
    try:
        yield lp.host, lp.device
    finally:
        lp.close()


#: every transport configuration the suite runs against; append new transports here
LINK_FACTORIES: list = [
    pytest.param(partial(inprocess_virtio, notify="eventfd"), id="virtio-eventfd"),
    pytest.param(partial(inprocess_virtio, notify="socket"), id="virtio-socket"),
    pytest.param(partial(inprocess_virtio, notify="poll", poll_mode=True), id="virtio-poll"),
    pytest.param(partial(inprocess_virtio, LinkConfig(event_idx=True)), id="virtio-event-idx"),
    pytest.param(partial(inprocess_virtio, LinkConfig(num_buffers=4, buf_size=128)),
                 id="virtio-small-buffers"),
]


@pytest.fixture(params=LINK_FACTORIES)
def link_pair_factory(request: pytest.FixtureRequest) -> Iterator[BusPair]:
    factory: LinkFactory = request.param
    with factory() as pair:
        yield pair


@pytest.fixture(params=["host-to-device", "device-to-host"])
def sender_receiver(request: pytest.FixtureRequest, link_pair_factory: BusPair) -> BusPair:
    """The pair in the order (sending bus, receiving bus) for one direction."""
    host, device = link_pair_factory
    return (host, device) if request.param == "host-to-device" else (device, host)


def connect(a: Link, b: Link):
    """Endpoints on ``a`` and ``b`` addressed to each other."""
    ea = a.create_endpoint()
    eb = b.create_endpoint(dst=ea.addr)
    ea.dst = eb.addr
    return ea, eb


def exhaust_tx(ep) -> list[bytes]:
    """try_send until no buffer is free; return what was sent."""
    sent = []
    for i in range(MAX_TX):
        payload = i.to_bytes(4, "little")
        try:
            ep.try_send(payload)
        except NoBufferAvailable:
            return sent
        sent.append(payload)
    raise AssertionError(f"{MAX_TX} try_send calls never ran out of buffers")


def run_thread(target: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def wrapper():
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            errors.append(exc)

    t = threading.Thread(target=wrapper, daemon=True)
    t.start()
    return t, errors


def join(t: threading.Thread, errors: list[BaseException], timeout: float = 15) -> None:
    t.join(timeout)
    assert not t.is_alive(), "helper thread hung"
    if errors:
        raise errors[0]


# -- ordered delivery --
def payloads(seed: int, count: int, mtu: int) -> list[bytes]:
    rng = random.Random(seed)
    sizes = [0, mtu, 1] + [rng.randint(0, mtu) for _ in range(count - 3)]
    return [rng.randbytes(n) for n in sizes]


@pytest.mark.timeout(30)
def test_ordered_delivery_of_1000_random_messages(sender_receiver):
    sender_bus, receiver_bus = sender_receiver
    tx, rx = connect(sender_bus, receiver_bus)
    msgs = payloads(0xA11CE, 1000, tx.mtu)

    def send_all():
        for m in msgs:
            tx.send(m, timeout=10)

    t, errors = run_thread(send_all)
    try:
        for i, expected in enumerate(msgs):
            payload, src = rx.recvfrom(timeout=10)
            assert src == tx.addr
            assert payload == expected, f"message {i} differs ({len(payload)} B)"
    finally:
        join(t, errors)
    assert rx.try_recvfrom() is None
    assert tx.statistics().messages_sent == 1000
    assert rx.statistics().messages_received == 1000


@pytest.mark.timeout(30)
def test_ordered_delivery_both_directions_at_once(link_pair_factory):
    host, device = link_pair_factory
    h, d = connect(host, device)
    # fewer than one-way: four threads share the GIL, and spinning (poll mode) is slow then
    down = payloads(1, 200, h.mtu)
    up = payloads(2, 200, d.mtu)
    received_up: list[bytes] = []

    def sender(ep, msgs):
        def run():
            for m in msgs:
                ep.send(m, timeout=10)
        return run

    def receive_up():
        for _ in up:
            received_up.append(h.recv(timeout=10))

    threads = [run_thread(sender(h, down)), run_thread(sender(d, up)), run_thread(receive_up)]
    try:
        for i, expected in enumerate(down):
            assert d.recv(timeout=10) == expected, f"host->device message {i}"
    finally:
        for t, errors in threads:
            join(t, errors)
    assert received_up == up


# -- MTU --
def test_mtu_enforced(sender_receiver):
    sender_bus, receiver_bus = sender_receiver
    tx, rx = connect(sender_bus, receiver_bus)
    mtu = tx.mtu
    assert mtu == sender_bus.mtu == receiver_bus.mtu > 0
    full = bytes(i & 0xFF for i in range(mtu))
    tx.send(full, timeout=2)
    assert rx.recv(timeout=2) == full
    too_big = bytes(mtu + 1)
    for call in (lambda: tx.send(too_big, timeout=1), lambda: tx.try_send(too_big),
                 lambda: tx.sendto(too_big, rx.addr, timeout=1),
                 lambda: tx.send_offchannel(tx.addr, rx.addr, too_big, timeout=1)):
        with pytest.raises(MessageTooLarge):
            call()
    assert tx.statistics().messages_sent == 1
    assert rx.try_recvfrom() is None  # nothing truncated, nothing sent


# -- timeouts --
@pytest.mark.timeout(15)
def test_recv_timeout(sender_receiver):
    _sender_bus, receiver_bus = sender_receiver
    rx = receiver_bus.create_endpoint()
    t0 = time.monotonic()
    with pytest.raises(ReceiveTimeout):
        rx.recv(timeout=0.1)
    assert 0.09 <= time.monotonic() - t0 < 0.1 + MARGIN
    with pytest.raises(ValueError):
        rx.recv(timeout=-1)


@pytest.mark.timeout(15)
def test_send_timeout_when_peer_does_not_read(sender_receiver):
    sender_bus, receiver_bus = sender_receiver
    tx, rx = connect(sender_bus, receiver_bus)
    exhaust_tx(tx)
    t0 = time.monotonic()
    with pytest.raises(SendTimeout):
        tx.send(b"blocked", timeout=0.1)
    assert 0.09 <= time.monotonic() - t0 < 0.1 + MARGIN


@pytest.mark.timeout(15)
def test_blocked_send_resumes_when_peer_reads(sender_receiver):
    sender_bus, receiver_bus = sender_receiver
    tx, rx = connect(sender_bus, receiver_bus)
    sent = exhaust_tx(tx)

    def reader():
        time.sleep(0.05)
        rx.recv(timeout=5)

    t, errors = run_thread(reader)
    try:
        tx.send(b"resumed", timeout=5)
    finally:
        join(t, errors)
    rest = [rx.recv(timeout=2) for _ in range(len(sent))]
    assert rest == sent[1:] + [b"resumed"]


# -- try_* --
def test_try_send_exhausts_and_recovers(sender_receiver):
    sender_bus, receiver_bus = sender_receiver
    tx, rx = connect(sender_bus, receiver_bus)
    sent = exhaust_tx(tx)
    assert sent, "not even one buffer was free"
    with pytest.raises(NoBufferAvailable):
        tx.try_sendto(b"x", rx.addr)
    with pytest.raises(NoBufferAvailable):
        tx.try_send_offchannel(tx.addr, rx.addr, b"x")
    got = []
    while (m := rx.try_recvfrom()) is not None:
        got.append(m)
    assert got == [(p, tx.addr) for p in sent]  # refused sends left nothing behind
    tx.try_send(b"again")
    assert rx.recv(timeout=2) == b"again"


def test_try_recv_on_empty_endpoint(link_pair_factory):
    host, device = link_pair_factory
    h, d = connect(host, device)
    assert h.try_recvfrom() is None
    assert d.try_recvfrom() is None
    h.try_send(b"now")
    assert d.try_recvfrom() == (b"now", h.addr)
    assert d.try_recvfrom() is None


# -- close semantics --
def test_closed_endpoint_refuses_and_its_address_is_free(link_pair_factory):
    host, device = link_pair_factory
    h = host.create_endpoint(addr=700)
    d = device.create_endpoint(dst=700)
    h.close()
    h.close()
    assert h.closed
    for call in (lambda: h.send(b"x", timeout=1), lambda: h.try_send(b"x"),
                 lambda: h.sendto(b"x", d.addr, timeout=1), lambda: h.recv(timeout=0.01),
                 lambda: h.try_recvfrom()):
        with pytest.raises(EndpointClosed):
            call()
    # messages to the closed address are dropped, counted, and do not block the link
    d.send(b"to nobody", timeout=1)
    host.poll()
    assert host.statistics().dropped_unknown_dst == 1
    again = host.create_endpoint(addr=700)
    d.send(b"to the new one", timeout=1)
    assert again.recvfrom(timeout=2) == (b"to the new one", d.addr)


@pytest.mark.timeout(15)
def test_close_wakes_a_blocked_receiver(link_pair_factory):
    host, _device = link_pair_factory
    h = host.create_endpoint()

    def receiver():
        with pytest.raises(EndpointClosed):
            h.recv(timeout=2)

    t, errors = run_thread(receiver)
    time.sleep(0.05)
    t0 = time.monotonic()
    h.close()
    join(t, errors, 5)
    assert time.monotonic() - t0 < 0.5 + MARGIN


def test_no_callback_after_close(link_pair_factory):
    host, device = link_pair_factory
    calls = []
    h = host.create_endpoint(callback=lambda ep, payload, src: calls.append(payload))
    d = device.create_endpoint(dst=h.addr)
    d.send(b"before", timeout=1)
    deadline = time.monotonic() + 5
    while calls != [b"before"] and time.monotonic() < deadline:
        host.poll()  # a caller-mode link dispatches here; a thread-mode one by itself
        time.sleep(0.001)
    d.send(b"after", timeout=1)  # in the ring, or already in a dispatcher's hands
    h.close()
    seen = list(calls)  # whatever ran, ran before close() returned
    d.send(b"later", timeout=1)
    host.poll()
    time.sleep(0.05)
    assert calls == seen and seen[0] == b"before" and b"later" not in calls


def test_closing_the_link_closes_its_endpoints(link_pair_factory):
    host, device = link_pair_factory
    h, d = connect(host, device)
    host.close()
    host.close()
    assert h.closed
    assert not host.is_up
    with pytest.raises(EndpointClosed):
        h.send(b"x", timeout=1)
    with pytest.raises(EndpointClosed):
        host.create_endpoint()


# -- name service --
@pytest.mark.timeout(15)
def test_name_service_channel_appears_and_goes(sender_receiver):
    announcer, listener = sender_receiver
    svc = announcer.create_endpoint("conformance-svc", announce=True)
    channel = listener.wait_channel("conformance-svc", timeout=5)
    assert channel.dst == svc.addr
    client = listener.open_channel("conformance-svc", timeout=5)
    client.send(b"hello", timeout=2)
    assert svc.recvfrom(timeout=2) == (b"hello", client.addr)
    svc.send(b"welcome", timeout=2)  # the announcer learnt the client's address
    assert client.recv(timeout=2) == b"welcome"
    svc.send(b"bye", timeout=2)
    svc.close()
    assert client.recv(timeout=2) == b"bye"
    with pytest.raises(EndpointClosed):
        client.recv(timeout=2)
    assert all(c.name != "conformance-svc" for c in listener.channels())


@pytest.mark.timeout(15)
def test_name_service_several_channels(link_pair_factory):
    host, device = link_pair_factory
    names = [f"svc-{i}" for i in range(5)]
    services = {}
    for n in names:
        # one at a time: an announcement needs a free buffer, and small links have few
        services[n] = device.create_endpoint(n, announce=True)
        host.wait_channel(n, timeout=5)
    clients = {n: host.open_channel(n, timeout=5) for n in names}
    for n in reversed(names):
        clients[n].send(n.encode(), timeout=2)
        assert services[n].recvfrom(timeout=2) == (n.encode(), clients[n].addr)
    assert sorted(c.name for c in host.channels()) == names
    for i, n in enumerate(names):
        services[n].close()
        with pytest.raises(EndpointClosed):
            clients[n].recv(timeout=2)
        assert sorted(c.name for c in host.channels()) == names[i + 1:]
