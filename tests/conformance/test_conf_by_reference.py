"""Hand-over by reference (the ``send_by_reference`` capability): a buffer, or a slice of
it, handed to the peer in a 24-byte record, processed there in place and given back; and
the error of a backend without the capability."""

from __future__ import annotations

import pytest
from backends import Harness
from conformance_kit import connect

from amplink.errors import NotSupported
from amplink.handover import BufferChannel
from amplink.memory import Access, allocate_buffer

pytestmark = [pytest.mark.timeout(30)]


def _needs_buffer_port(harness: Harness) -> None:
    assert harness.case is not None
    if not harness.case.extra.get("buffer_port"):
        pytest.skip(f"{harness.case.id} sends by reference through its backend "
                    f"(Endpoint.send_reference), not a buffer port beside the link")


@pytest.mark.needs("send_by_reference")
def test_buffers_go_by_reference_and_come_back(harness: Harness) -> None:
    _needs_buffer_port(harness)
    ep, p = connect(harness)
    harness.peer.call("serve_frames", addr=p)
    channel = BufferChannel(ep)  # the link's own buffer port
    frames = [allocate_buffer(16 << 10, name=f"conf-frame{i}") for i in range(3)]
    try:
        for i, frame in enumerate(frames):
            frame.write(bytes([i]) * frame.size)
        channel.send(frames[0])
        back = channel.wait_done(timeout=10)
        assert (back.buffer, back.offset, back.length) == (frames[0], 0, frames[0].size)
        assert frames[0].read(0, frames[0].size) == b"\xff" * frames[0].size
        channel.send(frames[1].slice(100, 50))  # only the slice is the peer's to touch
        back = channel.wait_done(timeout=10)
        assert (back.offset, back.length) == (100, 50)
        assert frames[1].read(99, 52) == b"\x01" + b"\xfe" * 50 + b"\x01"
        assert channel.send_many(frames) == 3  # a batch: several records to a message
        got = []
        while len(got) < 3:
            got += channel.wait_done_many(timeout=10)
        assert sorted(r.buffer.name for r in got) == [f.name for f in frames]
        assert frames[2].read(0, 1) == b"\xfd"
        channel.send(frames[2], Access.READ)  # read only: the peer cannot write it
        channel.wait_done(timeout=10)
        assert frames[2].read(0, 1) == b"\xfd"
        stats = channel.statistics()
        assert (stats.sent, stats.returned, stats.in_flight, stats.faults) == (6, 6, 0, {})
        for frame in frames:
            channel.forget(frame)  # detached: the processor is clean for the next case
    finally:
        for frame in frames:
            frame.close()


@pytest.mark.needs("send_by_reference")
def test_a_buffer_port_link_points_send_reference_to_it(harness: Harness) -> None:
    _needs_buffer_port(harness)
    ep, _p = connect(harness)
    with allocate_buffer(4096, name="conf-ref") as buf, pytest.raises(NotSupported,
                                                                     match="buffer port"):
        ep.send_reference(buf)


@pytest.mark.lacks("send_by_reference")
def test_without_the_capability_there_is_no_buffer_port(harness: Harness) -> None:
    ep, _p = connect(harness)
    with pytest.raises(NotSupported):
        harness.local.buffers  # noqa: B018
    with pytest.raises(NotSupported):
        BufferChannel(ep)
