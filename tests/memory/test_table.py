"""BufferTable and BufferRef: lending, what a peer may say, counted faults, reclaim."""

from __future__ import annotations

import logging

import pytest
from buffer_kit import assert_nothing_left, unique
from hypothesis import given, settings
from hypothesis import strategies as st

from amplink.errors import InvalidArgument, InvalidArgumentType, RemoteProtocolError
from amplink.memory import (
    CPU,
    LOCAL,
    Access,
    BufferFaultReason,
    BufferRef,
    BufferTable,
    OwnershipError,
    PeerBufferError,
    allocate_buffer,
)

U32 = (1 << 32) - 1
U64 = (1 << 64) - 1


@pytest.fixture
def name():
    tag = unique("table-test")
    yield tag
    assert_nothing_left(tag)


@pytest.fixture
def table(name):
    table = BufferTable("test")
    for size in (0x1000, 0x2000, 0x3000):
        table.add(allocate_buffer(size, name=name))
    yield table
    for peer in ("dsp0", "dsp1"):
        table.reclaim(peer)
    table.close()


def faults(table: BufferTable) -> dict[str, int]:
    return dict(table.statistics().faults_by_reason)


# -- the reference codec ------------------------------------------------------------------
def test_reference_wire_format():
    ref = BufferRef(0x01020304, 0x1122334455667788, 0x10)
    assert ref.pack() == bytes.fromhex("04030201" "8877665544332211" "1000000000000000")
    assert BufferRef.SIZE == 20
    assert BufferRef.unpack(ref.pack()) == ref


@settings(max_examples=300, deadline=None)
@given(st.integers(0, U32), st.integers(0, U64), st.integers(0, U64))
def test_every_representable_reference_round_trips(id, offset, length):
    ref = BufferRef(id, offset, length)
    assert BufferRef.unpack(ref.pack()) == ref
    assert BufferRef.unpack(bytearray(ref.pack())) == ref


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=48))
def test_any_bytes_decode_exactly_or_fail_typed(data):
    try:
        ref = BufferRef.unpack(data)
    except PeerBufferError as exc:
        assert len(data) != 20 and exc.reason is BufferFaultReason.MALFORMED
    else:
        assert len(data) == 20 and ref.pack() == data


@pytest.mark.parametrize("fields", [(-1, 0, 0), (U32 + 1, 0, 0), (0, -1, 0), (0, U64 + 1, 0),
                                    (0, 0, -1), (0, 0, U64 + 1)])
def test_unrepresentable_references_do_not_pack(fields):
    with pytest.raises(InvalidArgument):
        BufferRef(*fields).pack()


# -- lending and taking back ----------------------------------------------------------------
def test_lend_resolve_release(table):
    ref = table.lend(2, "dsp0")
    buf = table.get(2)
    assert ref == BufferRef(2, 0, 0x2000)
    assert table.holder(2) == buf.owner == "dsp0"
    assert table.held_by("dsp0") == [2]
    piece = table.resolve("dsp0", BufferRef(2, 0x100, 0x1f00))
    assert (piece.buffer, piece.offset, piece.length) == (buf, 0x100, 0x1f00)
    assert table.resolve("dsp0", BufferRef(2, 0x2000, 0)).length == 0  # empty, at the end
    assert table.release("dsp0", 2) is buf
    assert table.holder(2) == LOCAL and buf.owner == CPU
    stats = table.statistics()
    assert (stats.entries, stats.held_locally, stats.held_by_peer, stats.faults) == (3, 3, {}, 0)


def test_lending_needs_the_buffer_to_be_the_cpus(table):
    table.lend(1, "dsp0")
    with pytest.raises(OwnershipError, match="dsp0"):
        table.lend(1, "dsp1")
    with table.get(2).cpu_access(Access.READ), pytest.raises(OwnershipError, match="bracket"):
        table.lend(2, "dsp0")
    assert table.holder(2) == LOCAL  # nothing changed
    with pytest.raises(InvalidArgument, match="peer must be"):
        table.lend(3, LOCAL)


def test_ids_are_unique_and_explicit_ids_are_checked(table, name):
    assert sorted(table.held_by("nobody")) == []
    buf = allocate_buffer(16, name=name)
    with pytest.raises(InvalidArgument, match="already"):
        table.add(table.get(1))
    for bad, error in ((0, InvalidArgument), (1, InvalidArgument), (U32 + 1, InvalidArgument),
                       (-5, InvalidArgument), ("7", InvalidArgumentType)):
        with pytest.raises(error, match="id"):
            table.add(buf, id=bad)
    assert table.add(buf, id=U32) == U32
    assert table.add(allocate_buffer(16, name=name)) == 4
    with pytest.raises(KeyError):
        table.get(99)


def test_ids_wrap_around_and_skip_used_ones(name):
    table = BufferTable("wrap", max_entries=3)
    table._next_id = U32  # as after four billion adds
    a = table.add(allocate_buffer(16, name=name))
    b = table.add(allocate_buffer(16, name=name), id=1)
    c = table.add(allocate_buffer(16, name=name))
    assert (a, b, c) == (U32, 1, 2)
    with pytest.raises(MemoryError, match="full"):
        table.add(allocate_buffer(16, name=name))
    table.close()


def test_remove_needs_the_buffer_held_locally(table):
    table.lend(1, "dsp0")
    with pytest.raises(OwnershipError, match="dsp0"):
        table.remove(1)
    table.release("dsp0", 1)
    buf = table.remove(1)
    buf.close()
    assert len(table) == 2


# -- what a peer may not do -------------------------------------------------------------------
@pytest.mark.parametrize("offset,length", [
    (0x2001, 0), (0, 0x2001), (0x1fff, 2), (-1, 1), (0, -1),
    (U64, 2), (2, U64),  # wrap a 64-bit sum to a small number
    (1 << 70, 1), (0.0, 1), (0, None),
])
def test_out_of_range_references_are_counted_faults(table, offset, length):
    table.lend(2, "dsp0")
    with pytest.raises(PeerBufferError, match="range outside the buffer") as info:
        table.resolve("dsp0", BufferRef(2, offset, length))
    assert info.value.reason is BufferFaultReason.OUT_OF_RANGE
    assert isinstance(info.value, RemoteProtocolError | ValueError)
    assert faults(table) == {"OUT_OF_RANGE": 1}


@pytest.mark.parametrize("id", [0, 4, U32, -1, 1 << 40, "1", None, 1.0])
def test_unknown_ids_are_counted_faults(table, id):
    with pytest.raises(PeerBufferError) as info:
        table.resolve("dsp0", BufferRef(id, 0, 1))
    with pytest.raises(PeerBufferError):
        table.release("dsp0", id)
    expected = "UNKNOWN_ID" if type(id) is int else "MALFORMED"
    assert info.value.reason.name == expected
    assert faults(table) == {expected: 2}


def test_double_release_and_releasing_what_the_peer_does_not_hold(table, caplog):
    table.lend(1, "dsp0")
    table.lend(2, "dsp1")
    with caplog.at_level(logging.WARNING, logger="amplink.memory.table"):
        table.release("dsp0", 1)
        with pytest.raises(PeerBufferError, match="released this buffer already"):
            table.release("dsp0", 1)
        with pytest.raises(PeerBufferError, match="does not hold"):
            table.release("dsp0", 2)  # dsp1's
        with pytest.raises(PeerBufferError, match="does not hold"):
            table.release("dsp0", 3)  # never lent
        with pytest.raises(PeerBufferError, match="does not hold"):
            table.resolve("dsp0", BufferRef(2, 0, 1))
    assert faults(table) == {"DOUBLE_RELEASE": 1, "NOT_HELD": 3}
    assert table.holder(2) == "dsp1" and table.get(2).owner == "dsp1"  # unaffected
    assert len([r for r in caplog.records if "peer 'dsp0'" in r.message]) == 4


def test_reclaim_takes_back_everything_a_dead_peer_held(table):
    table.lend(1, "dsp0")
    table.lend(2, "dsp1")
    table.lend(3, "dsp0")
    assert table.reclaim("dsp0") == [1, 3]
    assert [table.get(i).owner for i in (1, 2, 3)] == [CPU, "dsp1", CPU]
    stats = table.statistics()
    assert (stats.held_locally, stats.held_by_peer, stats.reclaimed) == (2, {"dsp1": 1}, 2)
    assert table.reclaim("dsp0") == []
    # a late "done" from the dead peer is a stray release, not a double one
    with pytest.raises(PeerBufferError, match="does not hold"):
        table.release("dsp0", 1)
    with pytest.raises(OwnershipError, match="dsp1"):
        table.close()


@pytest.mark.parametrize("peer,error", [("", InvalidArgument), (LOCAL, InvalidArgument),
                                        (None, InvalidArgumentType)])
def test_peer_names_are_checked(table, peer, error):
    with pytest.raises(error, match="peer must be"):
        table.reclaim(peer)
    with pytest.raises(error, match="peer must be"):
        table.resolve(peer, BufferRef(1, 0, 1))
    assert table.statistics().faults == 0  # our own mistake, not the peer's


@settings(max_examples=300, deadline=None)
@given(st.integers(-3, 6) | st.integers(), st.integers(-(1 << 65), 1 << 65) | st.integers(),
       st.integers(-(1 << 65), 1 << 65) | st.integers())
def test_a_resolved_reference_always_lies_inside_its_buffer(id, offset, length):
    table = BufferTable("prop")
    bufs = [allocate_buffer(size, name="table-prop") for size in (1, 0x1000, 0x1001)]
    try:
        for buf in bufs:
            table.lend(table.add(buf), "peer")
        try:
            piece = table.resolve("peer", BufferRef(id, offset, length))
        except PeerBufferError:
            assert table.statistics().faults == 1
        else:
            assert 0 <= piece.offset <= piece.offset + piece.length <= piece.buffer.size
            assert piece.buffer is table.get(id) and table.statistics().faults == 0
    finally:
        table.reclaim("peer")
        table.close()
