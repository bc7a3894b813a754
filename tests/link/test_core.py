"""The sans-IO link core alone: no backend, no threads, no clock; fed bytes, it answers
with state and events."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amplink.errors import AddressError
from amplink.link import Capabilities, LinkCore, NameServiceRules, RpmsgDriver
from amplink.link.core import MAX_REMOTE_CHANNELS, Probe, Unbind
from amplink.rpmsg.wire import (
    RPMSG_ADDR_ANY,
    RPMSG_NS_CREATE,
    RPMSG_NS_DESTROY,
    NameServiceMessage,
)

CAPS = Capabilities(max_payload=496, name_service=True)


@dataclass(eq=False)
class Ep:
    """What the core needs of an endpoint."""

    addr: int
    name: str | None = None
    dst: int = RPMSG_ADDR_ANY
    announced: bool = False
    priv: object = None


def ns(name: str, addr: int, flags: int = RPMSG_NS_CREATE) -> bytes:
    return NameServiceMessage(name, addr, flags).encode()


def test_dynamic_addresses_are_the_lowest_free_from_1024():
    core = LinkCore(CAPS)
    eps = []
    for _ in range(3):
        eps.append(Ep(core.allocate_address()))
        core.add_endpoint(eps[-1])
    assert [e.addr for e in eps] == [1024, 1025, 1026]
    assert core.remove_endpoint(eps[1])
    assert core.allocate_address() == 1025
    assert not core.remove_endpoint(eps[1])  # already out


def test_explicit_addresses_are_checked_against_the_table_and_the_range():
    core = LinkCore(Capabilities(max_payload=8, address_range=(0, 10), dynamic_base=5))
    core.add_endpoint(Ep(7))
    with pytest.raises(AddressError, match="in use"):
        core.check_address(7)
    with pytest.raises(AddressError, match="outside"):
        core.check_address(11)
    for addr in range(5, 11):
        if addr != 7:
            core.add_endpoint(Ep(addr))
    with pytest.raises(AddressError, match="no free address"):
        core.allocate_address()


def test_an_announcement_makes_a_channel_and_probes_the_matching_driver():
    core = LinkCore(CAPS)
    driver = RpmsgDriver(["svc"])
    assert core.register_driver(driver) == []
    events = core.name_service_message(ns("svc", 0x400), 0x400)
    (channel,) = core.channels
    assert (channel.name, channel.dst) == ("svc", 0x400)
    assert events == [Probe(driver, channel)]
    ep = Ep(1024, "svc", 0x400)
    core.add_endpoint(ep)
    core.bind(driver, channel, ep)
    (unbind,) = core.name_service_message(ns("svc", 0x400, RPMSG_NS_DESTROY), 0x400)
    assert isinstance(unbind, Unbind)
    assert unbind.driver is driver and unbind.endpoints == (ep,) and not unbind.lost
    assert core.channels == [] and 1024 not in core.endpoints and driver.channels == []


@pytest.mark.parametrize("raw", [b"", b"x" * 39, b"x" * 41, bytes(40),
                                 ns("svc", 5)[:32] + (RPMSG_ADDR_ANY).to_bytes(4, "little")
                                 + bytes(4)])
def test_bad_announcements_are_counted_and_change_nothing(raw):
    core = LinkCore(CAPS)
    assert core.name_service_message(raw, 0x400) == []
    assert core.ns_errors == 1 and core.channels == []


def test_duplicates_unknown_destroys_and_the_channel_limit_are_counted(monkeypatch):
    core = LinkCore(CAPS)
    core.name_service_message(ns("svc", 5), 5)
    assert core.name_service_message(ns("svc", 5), 5) == []  # duplicate
    assert core.name_service_message(ns("ghost", 9, RPMSG_NS_DESTROY), 9) == []
    assert core.ns_errors == 2 and len(core.channels) == 1
    monkeypatch.setattr("amplink.link.core.MAX_REMOTE_CHANNELS", 2)
    core.name_service_message(ns("two", 6), 6)
    core.name_service_message(ns("three", 7), 7)
    assert len(core.channels) == 2 and core.ns_errors == 3
    assert MAX_REMOTE_CHANNELS >= 2


def test_openamp_rules_adopt_announced_channels_and_announce_ends_of_dynamic_ones_only():
    rules = NameServiceRules(adopt_announced=True, announce_destroy_min_addr=1024)
    core = LinkCore(CAPS, rules)
    early = Ep(1024, "svc", announced=True)  # created before the peer announced
    core.add_endpoint(early)
    assert core.name_service_message(ns("svc", 0x500), 0x500) == []
    assert early.dst == 0x500 and core.channels[0].endpoint is early
    core.name_service_message(ns("late", 0x501), 0x501)
    late = Ep(1025, "late", announced=True)
    core.add_endpoint(late)
    core.adopt(late)  # the peer announced first
    assert late.dst == 0x501
    static = Ep(50, "fixed", announced=True)
    assert core.announcement(static, destroy=True) is None
    assert core.announcement(static, destroy=False) is not None
    assert core.announcement(late, destroy=True) == ns("late", 1025, RPMSG_NS_DESTROY)


def test_linux_rules_do_not_adopt():
    core = LinkCore(CAPS)
    ep = Ep(1024, "svc", announced=True)
    core.add_endpoint(ep)
    core.name_service_message(ns("svc", 0x500), 0x500)
    assert ep.dst == RPMSG_ADDR_ANY and core.channels[0].endpoint is None


def test_removing_every_channel_unbinds_drivers_and_second_openers():
    core = LinkCore(CAPS)
    driver = RpmsgDriver(["a"])
    core.register_driver(driver)
    (probe,) = core.name_service_message(ns("a", 5), 5)
    bound = Ep(1024, "a", 5)
    core.add_endpoint(bound)
    core.bind(driver, probe.channel, bound)
    second = Ep(1025, "a", 5, priv=probe.channel)  # a second opener of the same channel
    core.add_endpoint(second)
    (unbind,) = core.remove_channels("the processor crashed", lost=True)
    assert unbind.lost and set(unbind.endpoints) == {bound, second}
    assert core.endpoints == {} and core.channels == []


names = st.sampled_from(["a", "b", "c"])
addrs = st.integers(min_value=1, max_value=8)
ns_messages = st.one_of(
    st.builds(ns, names, addrs, st.sampled_from([RPMSG_NS_CREATE, RPMSG_NS_DESTROY])),
    st.binary(max_size=48),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ns_messages, max_size=60))
def test_any_sequence_of_announcements_keeps_the_core_consistent(messages):
    core = LinkCore(CAPS)
    driver = RpmsgDriver(["a", "b"])
    core.register_driver(driver)
    next_addr = 1024
    for raw in messages:
        for event in core.name_service_message(raw, 0x400):
            if isinstance(event, Probe):  # as the runtime would: bind an endpoint
                ep = Ep(next_addr, event.channel.name, event.channel.dst)
                next_addr += 1
                core.add_endpoint(ep)
                core.bind(event.driver, event.channel, ep)
        live = [(c.name, c.dst) for c in core.channels]
        assert len(live) == len(set(live))  # never a duplicate channel
        assert all(not c.removed for c in core.channels)
        for channel in driver.channels:  # a driver's channels are live and bound
            assert channel in core.channels and channel.endpoint is not None
            assert core.endpoints.get(channel.endpoint.addr) is channel.endpoint
