"""Malformed name-service messages (address 53), in both directions.

Each bad message counts one ``ns_errors``, changes no channel, costs no RX buffer, and
leaves the service channel working.
"""

from __future__ import annotations

import struct

import pytest

from amplink import RPMSG_ADDR_ANY, RPMSG_NS_ADDR

NS = struct.Struct("<32sII")


def ns(name: bytes, addr: int = 0x500, flags: int = 0) -> bytes:
    return NS.pack(name, addr, flags)


BAD = {
    "empty": b"",
    "short": ns(b"svc-short")[:39],
    "long": ns(b"svc-long") + b"\0",
    "double": ns(b"svc-double") * 2,
    "header_only": b"\0" * 16,
    "no_nul": NS.pack(b"N" * 32, 0x500, 0),
    "empty_name": ns(b""),
    "addr_any": ns(b"svc-any", RPMSG_ADDR_ANY),
    "flags_2": ns(b"svc-flags", 0x500, 2),
    "flags_high": ns(b"svc-flags", 0x500, 0x8000_0000),
    "flags_all": ns(b"svc-flags", 0x500, 0xFFFF_FFFF),
    "destroy_unknown": ns(b"svc-never-seen", 0x500, 1),
}


class Side:
    """Who sends the raw name-service messages and whose bus judges them."""

    def __init__(self, link, direction: str) -> None:
        self.link = link
        if direction == "to_host":
            self.sender = link.device.create_endpoint(addr=0x300)
            self.receiver = link.host
        else:
            self.sender = link.host.create_endpoint(addr=0x300)
            self.receiver = link.device

    def send(self, raw: bytes) -> None:
        self.sender.sendto(raw, RPMSG_NS_ADDR, timeout=1.0)
        self.receiver.poll()

    def channels(self) -> list[tuple[str, int]]:
        return sorted((c.name, c.dst) for c in self.receiver.channels())

    def ns_errors(self) -> int:
        return self.receiver.statistics().ns_errors


@pytest.fixture(params=["to_host", "to_device"])
def side(request, link):
    return Side(link, request.param)


def _assert_recovered(link) -> None:
    link.check_host_rx_capacity()
    link.check_host_tx_capacity()
    link.check_exchange()


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_announcement(link, side, case):
    before = side.channels()
    side.send(BAD[case])
    assert side.ns_errors() == 1
    assert side.channels() == before
    _assert_recovered(link)


def test_many_bad_announcements_cost_no_buffer(link, side):
    for i in range(3 * link.n):
        side.send(BAD[sorted(BAD)[i % len(BAD)]])
    assert side.ns_errors() == 3 * link.n
    _assert_recovered(link)


def test_duplicate_announcement_refused(link, side):
    side.send(ns(b"svc-dup", 0x500))
    channels = side.channels()
    assert ("svc-dup", 0x500) in channels
    side.send(ns(b"svc-dup", 0x500))
    assert side.ns_errors() == 1
    assert side.channels() == channels
    _assert_recovered(link)


def test_destroy_with_wrong_address_refused(link, side):
    side.send(ns(b"svc-keep", 0x500))
    channels = side.channels()
    side.send(ns(b"svc-keep", 0x501, 1))
    assert side.ns_errors() == 1
    assert side.channels() == channels
    side.send(ns(b"svc-keep", 0x500, 1))  # the right one works
    assert ("svc-keep", 0x500) not in side.channels()
    side.send(ns(b"svc-keep", 0x500, 1))  # and only once
    assert side.ns_errors() == 2
    _assert_recovered(link)


def test_garbage_after_nul_ignored(link, side):
    side.send(NS.pack(b"svc-abc\0" + b"\xff" * 24, 0x500, 0))
    assert side.ns_errors() == 0
    assert ("svc-abc", 0x500) in side.channels()
    _assert_recovered(link)


def test_name_not_utf8_accepted_without_error(link, side):
    side.send(ns(b"\xff\xfe\x80svc", 0x500))
    assert side.ns_errors() == 0
    assert len(side.channels()) == len({c for c in side.channels()})
    _assert_recovered(link)


def test_destroy_of_the_bound_channel_closes_only_that_endpoint(link):
    """A well-formed destroy of the host's bound channel closes it cleanly (EndpointClosed)."""
    from amplink import EndpointClosed

    raw = link.device.create_endpoint(addr=0x300)
    raw.sendto(ns(link.host_ep.name.encode(), link.host_ep.dst, 1), RPMSG_NS_ADDR)
    link.host.poll()
    assert link.host.statistics().ns_errors == 0
    with pytest.raises(EndpointClosed):
        link.host_ep.send(b"x", timeout=0.1)
    assert link.host.is_up
