"""Endpoint-API conformance cases for a link whose peer is echo firmware on a channel.

For backends with "pair" addressing (rpmsg_char: each /dev/rpmsgN talks to one fixed
peer address) the peer is firmware, not a second amplink link, so the pair-of-links
suite (test_endpoint_conformance.py) does not apply. These cases need only a link and
the name of a channel whose firmware echoes every message to its sender. They use the
public endpoint API only and raise AssertionError on a failure.

They run against the fake kernel (test_pair_conformance.py) and, unchanged, inside a
real kernel (tests/kernel/guest/checks.py). The conformance suite being rebuilt with a
registration API is not on main yet: once it is, each entry of :data:`CASES` registers
as one case for backends with ``addressing == "pair"`` (no code here changes).
"""

from __future__ import annotations

import asyncio
import errno
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from amplink import (
    EndpointClosed,
    Link,
    MessageTooLarge,
    NotSupported,
    ReceiveTimeout,
)

MARGIN = 0.75  # scheduling slack for timing assertions, seconds
Case = Callable[[Link, str], dict[str, Any]]


def pattern(n: int, seed: int = 0) -> bytes:
    return bytes((seed + i * 7) & 0xFF for i in range(n))


def ordered_delivery(link: Link, channel: str) -> dict[str, Any]:
    """1000 messages of random sizes (0 and the MTU among them), sent by one thread while
    another receives: every echo comes back whole and in order."""
    ep = link.open_channel(channel, timeout=5)
    rng = random.Random(0xA11CE)
    msgs = [rng.randbytes(n) for n in [0, ep.mtu, 1] + [rng.randint(0, ep.mtu)
                                                         for _ in range(997)]]
    errors: list[BaseException] = []

    def send_all() -> None:
        try:
            for m in msgs:
                ep.send(m, timeout=10)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    t = threading.Thread(target=send_all)
    t.start()
    try:
        for i, expected in enumerate(msgs):
            got = ep.recv(timeout=10)
            assert got == expected, f"message {i}: {len(got)} B back, {len(expected)} B sent"
    finally:
        t.join(15)
        ep.close()
    assert not errors, errors
    return {"messages": len(msgs)}


def every_size(link: Link, channel: str) -> dict[str, Any]:
    """Every payload size from 0 to the MTU is echoed intact."""
    ep = link.open_channel(channel, timeout=5)
    try:
        bad = []
        for n in range(ep.mtu + 1):
            data = pattern(n, n)
            ep.send(data)
            back = ep.recv(timeout=5)
            if back != data:
                bad.append(n)
        assert not bad, f"sizes echoed wrong: {bad[:10]}"
        return {"sizes": ep.mtu + 1}
    finally:
        ep.close()


def over_the_mtu(link: Link, channel: str) -> dict[str, Any]:
    """MTU + 1 bytes: MessageTooLarge (EMSGSIZE), nothing sent, the endpoint goes on."""
    ep = link.open_channel(channel, timeout=5)
    try:
        try:
            ep.send(pattern(ep.mtu + 1))
        except MessageTooLarge as exc:
            err = exc.errno
        else:
            raise AssertionError(f"{ep.mtu + 1} bytes were sent")
        assert err == errno.EMSGSIZE, err
        ep.send(b"after")
        assert ep.recv(timeout=5) == b"after"  # and no stray part of the refused one
        return {"errno": err}
    finally:
        ep.close()


def receive_timeout(link: Link, channel: str) -> dict[str, Any]:
    ep = link.open_channel(channel, timeout=5)
    try:
        t0 = time.monotonic()
        try:
            ep.recv(timeout=0.2)
        except ReceiveTimeout:
            waited = time.monotonic() - t0
        else:
            raise AssertionError("a message came from nowhere")
        assert 0.2 <= waited < 0.2 + MARGIN, waited
        return {"waited_s": round(waited, 3)}
    finally:
        ep.close()


def closed_endpoint(link: Link, channel: str) -> dict[str, Any]:
    """After close(): send and recv raise EndpointClosed (this side closed it)."""
    ep = link.open_channel(channel, timeout=5)
    ep.close()
    for call in (lambda: ep.send(b"x"), lambda: ep.recv(timeout=0.1)):
        try:
            call()
        except EndpointClosed:
            continue
        raise AssertionError("a closed endpoint worked")
    again = link.open_channel(channel, timeout=5)  # the channel can be opened again
    again.send(b"again")
    assert again.recv(timeout=5) == b"again"
    again.close()
    return {}


def many_endpoints(link: Link, channel: str, count: int = 64) -> dict[str, Any]:
    """``count`` endpoints to one peer address: each gets its own answers."""
    dst = link.wait_channel(channel, timeout=5).dst
    eps = [link.create_endpoint(f"amplink-ept{i}", dst=dst) for i in range(count)]
    try:
        assert len({ep.addr for ep in eps}) == count
        for i, ep in enumerate(eps):
            ep.send(f"endpoint {i}".encode())
        answers = [ep.recv(timeout=5).decode() for ep in eps]
        assert answers == [f"endpoint {i}" for i in range(count)], answers[:4]
    finally:
        for ep in eps:
            ep.close()
    return {"endpoints": count}


def callback_and_asyncio(link: Link, channel: str) -> dict[str, Any]:
    """A callback endpoint and an awaited one, on the same link."""
    dst = link.wait_channel(channel, timeout=5).dst
    got: list[bytes] = []
    done = threading.Event()

    def on_message(ep: Any, payload: bytes, src: int) -> None:
        got.append(payload)
        done.set()

    cb = link.create_endpoint("amplink-cb", dst=dst, callback=on_message)
    try:
        cb.send(b"callback")
        assert done.wait(5) and got == [b"callback"], got
    finally:
        cb.close()

    async def main() -> bytes:
        ep = link.open_channel(channel, timeout=5)
        try:
            await ep.asend(b"awaited")
            return await ep.arecv(timeout=5)
        finally:
            ep.close()

    assert asyncio.run(asyncio.wait_for(main(), 10)) == b"awaited"
    return {}


def pair_addressing(link: Link, channel: str) -> dict[str, Any]:
    """An endpoint sends to its own peer only: another destination is NotSupported."""
    assert link.capabilities.addressing == "pair"
    ep = link.open_channel(channel, timeout=5)
    try:
        try:
            ep.sendto(b"x", ep.dst + 1)
        except NotSupported as exc:
            assert exc.errno == errno.EOPNOTSUPP
        else:
            raise AssertionError("sent to another address")
        writable = None
        try:
            writable = ep.wait_writable(1)
        except NotSupported:
            assert not link.capabilities.tx_ready
        else:
            assert link.capabilities.tx_ready and writable
        return {"tx_ready": link.capabilities.tx_ready}
    finally:
        ep.close()


#: every case, by name, in the order they run
CASES: dict[str, Case] = {
    "every_size": every_size,
    "over_the_mtu": over_the_mtu,
    "ordered_delivery": ordered_delivery,
    "receive_timeout": receive_timeout,
    "closed_endpoint": closed_endpoint,
    "many_endpoints": many_endpoints,
    "callback_and_asyncio": callback_and_asyncio,
    "pair_addressing": pair_addressing,
}
