"""The hand-over records and the buffer socket messages: codecs, strict decoding."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amplink.errors import InvalidArgument
from amplink.handover import wire
from amplink.handover.attachmsg import AttachMsg
from amplink.handover.wire import FLAG_LAST, HandoverFault, Record, RecordType
from amplink.memory import BufferRef, PeerBufferError

u32 = st.integers(0, (1 << 32) - 1)
u64 = st.integers(0, (1 << 64) - 1)


def test_layout_is_documented():
    data = wire.pack(RecordType.SEND, 7, 0x10, 0x20, 3)
    assert data == struct.pack("<BBBBIQQ", 1, 1, 3, 0, 7, 0x10, 0x20)
    assert wire.RECORD_SIZE == 24


@given(st.sampled_from([t for t in RecordType if t != RecordType.INLINE]), u32, u64, u64,
       st.integers(1, 3), st.booleans())
def test_round_trip(kind, id, offset, length, access, last):
    access = access if kind == RecordType.SEND else 0
    flags = FLAG_LAST if last and kind == RecordType.MSG else 0
    [(record, payload)] = list(wire.unpack(wire.pack(kind, id, offset, length, access, flags)))
    assert record == Record(kind, id, offset, length, access, flags) and payload is None


@given(st.lists(st.tuples(u32, u64, u64), min_size=1, max_size=20), st.binary(max_size=100))
def test_batches_and_inline(refs, tail):
    data = b"".join(wire.pack(RecordType.DONE, *r) for r in refs) + wire.pack_inline(tail)
    records = list(wire.unpack(data))
    assert [(r.id, r.offset, r.length) for r, _ in records[:-1]] == refs
    assert bytes(records[-1][1]) == tail


@given(st.binary(max_size=200))
def test_garbage_is_refused_whole_or_decoded(data):
    try:
        records = list(wire.unpack(data))
    except PeerBufferError as exc:
        assert isinstance(exc.reason, HandoverFault)
    else:
        assert records and len(data) % 24 == 0 or records[-1][0].type == RecordType.INLINE


@pytest.mark.parametrize("mutate, reason", [
    (lambda b: b[:23], HandoverFault.MALFORMED),
    (lambda b: b + b"\0", HandoverFault.MALFORMED),
    (lambda b: b"\x02" + b[1:], HandoverFault.VERSION),
    (lambda b: b[:1] + b"\x09" + b[2:], HandoverFault.MALFORMED),  # unknown type
    (lambda b: b[:2] + b"\x00" + b[3:], HandoverFault.MALFORMED),  # SEND without access
    (lambda b: b[:2] + b"\x04" + b[3:], HandoverFault.MALFORMED),  # access 4
    (lambda b: b[:3] + b"\x01" + b[4:], HandoverFault.MALFORMED),  # a flag on SEND
])
def test_malformed(mutate, reason):
    good = wire.pack(RecordType.SEND, 1, 0, 10, 1)
    with pytest.raises(PeerBufferError) as info:
        list(wire.unpack(mutate(good)))
    assert info.value.reason is reason


def test_inline_must_match_its_payload_and_end_the_message():
    bad = wire.pack_inline(b"abc")[:-1]
    with pytest.raises(PeerBufferError):
        list(wire.unpack(bad))
    with pytest.raises(PeerBufferError):  # a record after an INLINE is part of its payload
        list(wire.unpack(wire.pack_inline(b"") + wire.pack(RecordType.DONE, 1, 0, 0)))


@pytest.mark.parametrize("fields", [(1 << 32, 0, 0), (0, 1 << 64, 0), (0, 0, -1)])
def test_pack_refuses_what_does_not_fit(fields):
    with pytest.raises(InvalidArgument):
        wire.pack(RecordType.DONE, *fields)


@given(u32, u64, u64)
def test_buffer_ref_codec(id, offset, length):
    ref = BufferRef(id, offset, length)
    assert BufferRef.unpack(ref.pack()) == ref


@given(st.binary(max_size=40))
def test_buffer_ref_refuses_other_sizes(data):
    if len(data) == BufferRef.SIZE:
        assert BufferRef.unpack(data).pack() == data
    else:
        with pytest.raises(PeerBufferError):
            BufferRef.unpack(data)


@given(st.integers(1, 4), u32, u32, u64, u64, u64, st.integers(0, 3), st.integers(0, 255))
def test_attach_msg_round_trip(op, id, seq, da, offset, length, access, status):
    msg = AttachMsg(op, id, seq, da, offset, length, access, status)
    assert AttachMsg.unpack(msg.pack()) == msg


@given(st.binary(max_size=60))
def test_attach_msg_garbage(data):
    try:
        msg = AttachMsg.unpack(data)
    except PeerBufferError:
        return
    assert msg.pack() == data
