"""Limits that keep a flooding or lying peer from holding, filling or confusing us."""

from __future__ import annotations

import pytest
from hostile_kit import HDR_SIZE, fault_total

from amplink import EndpointClosed, LinkDown
from amplink.link import core as core_module
from amplink.rpmsg.wire import RPMSG_NS_ADDR, NameServiceMessage


def test_device_refuses_a_payload_over_its_mtu_even_in_a_long_buffer(link):
    """The driver may post long descriptors; the device's MTU still bounds a message."""
    link.host_sends(b"x" * 16)
    head = link.last_avail_head(link.vr1)
    buf = link.buffer_offset(link.vr1, head)
    link.set_desc(link.vr1, head, length=1024)  # inside the region, past the 512 B buffer
    link.set_header(buf, length=600)
    before = link.device.statistics()
    assert link.device.poll() == 0
    assert link.device.statistics().backend["malformed_rx"] == \
        before.backend["malformed_rx"] + 1
    assert fault_total(link.device) >= 1
    link.check_exchange()


def test_receive_budget_counts_malformed_buffers_too(link):
    """A peer re-posting garbage as fast as we return it cannot keep one call going."""
    for i in range(6):
        link.host_sends(b"m%d" % i)
        link.set_header(link.buffer_offset(link.vr1, link.last_avail_head(link.vr1)),
                        length=HDR_SIZE * 100)
    transport = link.device.backend
    with link.device._lock:
        assert transport.receive(lambda *a: None, 4) == 4
    assert transport.statistics()["malformed_rx"] == 4


@pytest.mark.parametrize("error", [LinkDown("gone"), EndpointClosed("closed"), KeyError("x")])
def test_a_raising_callback_loses_no_ring_buffer(link, error):
    """Whatever a callback raises is counted; its buffer goes back to the ring."""
    def callback(ep, payload, src):
        raise error

    sink = link.device.create_endpoint("sink", callback=callback)
    sender = link.host.create_endpoint(None, dst=sink.addr)
    for i in range(link.n * 3):  # needs every TX buffer to come back, more than once
        sender.send(b"%d" % i, timeout=1.0)
        link.device.poll()
    assert sink.statistics().callback_errors == link.n * 3
    link.check_exchange()


def test_an_unread_endpoint_drops_and_counts_instead_of_growing(link):
    link.dev_ep.max_queued = 5
    for i in range(8):
        link.host_sends(b"%d" % i)
    link.device.poll()
    stats = link.dev_ep.statistics()
    assert (stats.queued, stats.dropped_overflow) == (5, 3)
    assert [link.dev_ep.recv(timeout=1.0) for _ in range(5)] == [b"%d" % i for i in range(5)]


def test_announcement_flood_is_capped_and_counted(link, monkeypatch):
    monkeypatch.setattr(core_module, "MAX_REMOTE_CHANNELS", len(link.host.channels()) + 3)
    ns = link.device.create_endpoint(None, dst=RPMSG_NS_ADDR)
    for i in range(5):
        ns.send(NameServiceMessage(f"flood-{i}", 2000 + i).encode(), timeout=1.0)
    errors = link.host.statistics().ns_errors
    link.host.poll()
    names = [c.name for c in link.host.channels()]
    assert [n for n in names if n.startswith("flood-")] == ["flood-0", "flood-1", "flood-2"]
    assert link.host.statistics().ns_errors == errors + 2
