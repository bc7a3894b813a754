"""Echo, rpmsg-client-sample and two-service firmware in a child process."""

from __future__ import annotations

import random

import pytest
from sim_kit import CLIENT_SAMPLE, ECHO, TWO_SERVICES

from amplink import MessageTooLarge, RpmsgDriver

MTU = 496


def _payload(size: int) -> bytes:
    return random.Random(size).randbytes(size)


@pytest.mark.parametrize("poll_mode", [False, True], ids=["blocking", "poll"])
def test_echo_every_size(sim, poll_mode):
    proc = sim(ECHO, poll_mode=poll_mode)
    link = proc.link
    ep = link.open_channel("rpmsg-echo", timeout=5.0)
    assert ep.mtu == MTU
    for size in range(MTU + 1):
        payload = _payload(size)
        ep.send(payload, timeout=5.0)
        got, src = ep.recvfrom(timeout=5.0)
        assert got == payload, f"size {size}"
        assert src == ep.dst
    with pytest.raises(MessageTooLarge):
        ep.send(b"x" * (MTU + 1), timeout=1.0)
    stats = link.statistics()
    assert stats.state == "up"
    assert stats.backend["malformed_rx"] == 0
    assert stats.backend["protocol_faults"] == {}
    assert stats.dropped_unknown_dst == 0
    mine = [e for e in stats.endpoints if e.addr == ep.addr][0]
    assert mine.messages_sent == MTU + 1
    assert mine.messages_received == MTU + 1


@pytest.mark.parametrize("poll_mode", [False, True], ids=["blocking", "poll"])
def test_echo_pipelined_in_order(sim, poll_mode):
    proc = sim(ECHO, poll_mode=poll_mode)
    ep = proc.link.open_channel("rpmsg-echo", timeout=5.0)
    sent = [_payload(n % (MTU - 1)) + n.to_bytes(2, "little") for n in range(0, 700, 7)]
    for chunk in range(0, len(sent), 32):
        batch = sent[chunk:chunk + 32]
        for payload in batch:
            ep.send(payload, timeout=5.0)
        assert [ep.recv(timeout=5.0) for _ in batch] == batch


def test_client_sample_hundred_replies(sim):
    """Linux's rpmsg_client_sample: "hello world!" on probe, answer each reply until 100."""
    msg_limit = 100
    state = {"rx": 0, "probed": 0, "removed": 0}
    bad: list[bytes] = []

    def probe(channel):
        state["probed"] += 1
        channel.endpoint.send(b"hello world!", timeout=5.0)

    def callback(ep, payload, src):
        if payload != b"hello world!":
            bad.append(payload)  # an assert here would only be logged by the bus
        state["rx"] += 1
        if state["rx"] >= msg_limit:
            return  # "goodbye!"
        ep.send(b"hello world!", timeout=5.0)

    def remove(channel):
        state["removed"] += 1

    driver = RpmsgDriver(["rpmsg-client-sample"], probe=probe, remove=remove,
                         callback=callback, name="rpmsg_client_sample")
    proc = sim(CLIENT_SAMPLE)
    link = proc.link
    link.register_driver(driver)
    link.run(until=lambda: state["rx"] >= msg_limit, timeout=10.0)
    assert state["probed"] == 1
    assert state["rx"] == msg_limit
    assert bad == []
    # no 101st reply: nothing was sent after the 100th
    link.run(timeout=0.2)
    assert state["rx"] == msg_limit
    channel = driver.channels[0]
    assert channel.name == "rpmsg-client-sample"
    stats = channel.endpoint.statistics()
    assert stats.messages_sent == msg_limit
    assert stats.messages_received == msg_limit
    link.unregister_driver(driver)
    assert state["removed"] == 1


def test_two_services(sim):
    proc = sim(TWO_SERVICES)
    link = proc.link
    echo = link.open_channel("rpmsg-echo", timeout=5.0)
    upper = link.open_channel("rpmsg-upper", timeout=5.0)
    names = sorted(c.name for c in link.channels())
    assert names == ["rpmsg-echo", "rpmsg-upper"]
    assert echo.dst != upper.dst
    for i in range(20):
        text = b"mixed Case %d" % i
        echo.send(text, timeout=5.0)
        upper.send(text, timeout=5.0)
        assert upper.recv(timeout=5.0) == text.upper()
        assert echo.recv(timeout=5.0) == text
