"""The trace log reader and follower."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from amplink.errors import AddressError
from amplink.memory.region import SharedRegion
from amplink.remoteproc.trace import TraceFollower, read_trace

AT, LEN = 0x100, 64


@pytest.fixture
def mem() -> Iterator[SharedRegion]:
    with SharedRegion.memfd(4096, "trace-test") as r:
        yield r


def put(region: SharedRegion, text: bytes) -> None:
    """Write the buffer as the remote would: text, then NUL padding up to LEN."""
    region.write(AT, text.ljust(LEN, b"\0")[:LEN])


def test_read_up_to_the_first_nul(mem: SharedRegion) -> None:
    assert read_trace(mem, AT, LEN) == ""
    mem.write(AT, b"boot ok\n\0garbage")
    assert read_trace(mem, AT, LEN) == "boot ok\n"


def test_read_without_nul_takes_the_whole_length(mem: SharedRegion) -> None:
    mem.write(AT, b"x" * (LEN + 10))
    assert read_trace(mem, AT, LEN) == "x" * LEN


def test_invalid_utf8_is_replaced(mem: SharedRegion) -> None:
    mem.write(AT, b"a\xffb\0")
    assert read_trace(mem, AT, LEN) == "a\ufffdb"


def test_bounds_are_checked(mem: SharedRegion) -> None:
    with pytest.raises(AddressError):
        read_trace(mem, mem.size - 4, 8)
    with pytest.raises(AddressError):
        TraceFollower(mem, -1, 8)


def test_follower_returns_only_new_text(mem: SharedRegion) -> None:
    follow = TraceFollower(mem, AT, LEN)
    assert follow() == ""
    put(mem, b"one\n")
    assert follow() == "one\n"
    assert follow.poll() == ""
    put(mem, b"one\ntwo\n")
    assert follow() == "two\n"


def test_follower_returns_everything_after_a_rewrite_or_shrink(mem: SharedRegion) -> None:
    follow = TraceFollower(mem, AT, LEN)
    put(mem, b"first run\n")
    assert follow() == "first run\n"
    put(mem, b"second\n")  # rewritten from the start
    assert follow() == "second\n"
    put(mem, b"sec")  # shrunk
    assert follow() == "sec"
    put(mem, b"")
    assert follow() == ""
    put(mem, b"again")
    assert follow() == "again"


def test_follower_holds_back_a_split_utf8_sequence(mem: SharedRegion) -> None:
    follow = TraceFollower(mem, AT, LEN)
    euro = "€".encode()
    put(mem, b"x" + euro[:2])
    assert follow() == "x"
    put(mem, b"x" + euro)
    assert follow() == "€"


def test_follower_on_a_full_buffer(mem: SharedRegion) -> None:
    follow = TraceFollower(mem, AT, LEN)
    mem.write(AT, b"y" * LEN + b"z")  # no NUL within LEN; the byte after is not ours
    assert follow() == "y" * LEN
    assert follow() == ""
