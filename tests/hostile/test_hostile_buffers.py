"""A firmware that lies about buffers: every lie is a counted, typed fault; nothing is
accessed outside a buffer, and the host's buffers stay the host's."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from amplink.handover import BufferChannel, wire
from amplink.handover.wire import RecordType
from amplink.memory import allocate_buffer
from amplink.platforms.sim import SimRemoteProc

HOSTILE = str(Path(__file__).resolve().parent.parent / "firmware_fixtures" / "hostile_buffers.py")


@pytest.fixture(scope="module")
def rig():
    rp = SimRemoteProc(HOSTILE, boot_timeout=10)
    bufs = [allocate_buffer(4096, name=f"b{i}") for i in range(3)]
    rp.boot()
    try:
        ch = BufferChannel(rp.link.open_channel("hostile-buffers", timeout=5), port=rp.buffers)
        ctl = rp.link.open_channel("hostile-ctl", timeout=5)
        yield rp, ch, ctl, bufs
    finally:
        rp.shutdown()
        for b in bufs:
            b.close()


def _raw(ctl, data: bytes) -> None:
    ctl.send(b"raw:" + data)
    assert ctl.recv(timeout=5) == b"ok"


def _faults_become(ch, expected: dict, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            ch.wait_done(timeout=0.05)
        except TimeoutError:
            pass
        if ch.faults() == expected or time.monotonic() > deadline:
            return ch.faults()


def test_lies_are_counted_by_reason(rig):
    rp, ch, ctl, (b0, b1, b2) = rig
    id0 = ch.send(b0)
    id1 = ch.send(b1)
    ch.send(b2)
    _raw(ctl, wire.pack(RecordType.DONE, 999, 0, 0))                     # unknown id
    _raw(ctl, wire.pack(RecordType.DONE, id0, 4000, 97))                 # outside the buffer
    _raw(ctl, wire.pack(RecordType.DONE, id0, 1 << 63, 1 << 63))         # would wrap
    _raw(ctl, b"\x01\x02" + b"\0" * 10)                                  # not a record
    _raw(ctl, wire.pack(RecordType.SEND, 999, 0, 1, 1))                  # lends what is not
    _raw(ctl, wire.pack(RecordType.SEND, id0, 4000, 97, 1))              # outside the buffer
    _raw(ctl, wire.pack(RecordType.FREE, id0, 0, 1))                     # not a channel record
    _raw(ctl, wire.pack(RecordType.DONE, id1, 0, 10))                    # a good one
    _raw(ctl, wire.pack(RecordType.DONE, id1, 0, 10))                    # a second done
    _raw(ctl, wire.pack(RecordType.SEND, id1, 0, 10, 1))                 # not its to hand over
    _raw(ctl, wire.pack(RecordType.SEND, 0, 0x8000_0000, 16, 1))         # not in a carveout
    expected = {"UNKNOWN_ID": 2, "OUT_OF_RANGE": 4, "MALFORMED": 1, "UNEXPECTED": 1,
                "DOUBLE_RELEASE": 1, "NOT_HELD": 1}
    assert _faults_become(ch, expected) == expected
    assert ch.try_recv() is None  # no lie handed the host a buffer
    assert b1.owner == "cpu" and b0.owner == "sim0"  # only the good DONE gave one back
    stats = rp.buffers.table.statistics()
    assert stats.held_by_peer == {"sim0": 2}


def test_done_for_a_buffer_the_peer_does_not_hold(rig):
    rp, ch, ctl, (b0, b1, b2) = rig
    id1 = rp.buffers.id_of(b1)
    assert b1.owner == "cpu"
    before = ch.faults().get("DOUBLE_RELEASE", 0)
    not_held = ch.faults().get("NOT_HELD", 0)
    _raw(ctl, wire.pack(RecordType.DONE, id1, 0, 1))  # released already: double
    other = allocate_buffer(4096, name="never-lent")
    try:
        att = rp.attach(other)
        rp.buffers.table.add(other, id=rp.buffers.id_of(other))
        _raw(ctl, wire.pack(RecordType.DONE, rp.buffers.id_of(other), 0, 1))  # never lent
        deadline = time.monotonic() + 5
        while ch.faults().get("NOT_HELD", 0) < not_held + 1 and time.monotonic() < deadline:
            try:
                ch.wait_done(timeout=0.05)
            except TimeoutError:
                pass
        assert ch.faults()["NOT_HELD"] == not_held + 1
        assert ch.faults()["DOUBLE_RELEASE"] == before + 1
        assert other.owner == "cpu"
        rp.buffers.table.remove(rp.buffers.id_of(other))
        rp.detach(att)
    finally:
        other.close()
