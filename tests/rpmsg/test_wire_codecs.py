"""The rpmsg wire: 16-byte header and 40-byte name-service message (round trips, rejects)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amplink.errors import RemoteProtocolError
from amplink.rpmsg.wire import (
    RPMSG_ADDR_ANY,
    RPMSG_HDR_SIZE,
    RPMSG_NS_ADDR,
    RPMSG_NS_CREATE,
    RPMSG_NS_DESTROY,
    RPMSG_NS_SIZE,
    NameServiceMessage,
    check_name,
    decode_header,
    decode_name,
    encode_header,
)

u32 = st.integers(0, 0xFFFFFFFF)
addr = st.integers(0, RPMSG_ADDR_ANY - 1)
# names: 1..31 UTF-8 bytes, no NUL
names = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
                min_size=1, max_size=31).filter(lambda s: 1 <= len(s.encode()) <= 31)


def ns_raw(name: bytes, addr: int, flags: int) -> bytes:
    return struct.pack("<32sII", name, addr, flags)


def test_constants_match_the_spec():
    assert RPMSG_HDR_SIZE == 16
    assert RPMSG_NS_SIZE == 40
    assert RPMSG_NS_ADDR == 53
    assert RPMSG_ADDR_ANY == 0xFFFFFFFF
    assert (RPMSG_NS_CREATE, RPMSG_NS_DESTROY) == (0, 1)


# -- header --
@settings(max_examples=200, deadline=None)
@given(src=u32, dst=u32, length=st.integers(0, 0xFFFF))
def test_header_round_trip(src, dst, length):
    raw = encode_header(src, dst, length)
    assert len(raw) == RPMSG_HDR_SIZE
    assert decode_header(raw) == (src, dst, length)
    assert decode_header(memoryview(raw + b"payload")) == (src, dst, length)
    # packed little-endian layout, reserved and flags written as 0
    assert raw == struct.pack("<IIIHH", src, dst, 0, length, 0)


def test_header_layout_bytes():
    raw = encode_header(0x400, 0x35, 40)
    assert raw == bytes.fromhex("00040000" "35000000" "00000000" "2800" "0000")


@pytest.mark.parametrize("n", [0, 1, 15])
def test_short_header_is_refused(n):
    with pytest.raises(RemoteProtocolError):
        decode_header(bytes(n))


# -- name service --
@settings(max_examples=200, deadline=None)
@given(name=names, addr=addr, flags=st.sampled_from([RPMSG_NS_CREATE, RPMSG_NS_DESTROY]))
def test_ns_round_trip(name, addr, flags):
    msg = NameServiceMessage(name, addr, flags)
    raw = msg.encode()
    assert len(raw) == 40
    assert raw[len(name.encode())] == 0  # NUL-terminated
    back = NameServiceMessage.decode(raw)
    assert back == msg
    assert back.is_destroy == (flags == RPMSG_NS_DESTROY)


def test_ns_layout_bytes():
    raw = NameServiceMessage("rpmsg-tty", 0x401, RPMSG_NS_DESTROY).encode()
    assert raw[:10] == b"rpmsg-tty\0"
    assert raw[10:32] == bytes(22)
    assert raw[32:] == bytes.fromhex("01040000" "01000000")


@settings(max_examples=100, deadline=None)
@given(name=names, garbage=st.binary(min_size=31, max_size=31), addr=addr)
def test_garbage_after_the_nul_is_ignored(name, garbage, addr):
    raw_name = name.encode()
    field = (raw_name + b"\0" + garbage)[:32]
    msg = NameServiceMessage.decode(ns_raw(field, addr, RPMSG_NS_CREATE))
    assert msg.name == name
    assert msg.addr == addr


def test_31_char_name_is_the_longest():
    name = "n" * 31
    assert NameServiceMessage.decode(NameServiceMessage(name, 1024).encode()).name == name
    with pytest.raises(ValueError):
        NameServiceMessage("n" * 32, 1024).encode()


@pytest.mark.parametrize("raw", [
    b"",
    bytes(39),
    ns_raw(b"svc", 1024, 0)[:39],
    ns_raw(b"svc", 1024, 0) + b"\0",
    bytes(41),
    bytes(512),
], ids=["empty", "39-zero", "39", "41", "41-zero", "512"])
def test_ns_wrong_length_is_refused(raw):
    with pytest.raises(RemoteProtocolError):
        NameServiceMessage.decode(raw)


@pytest.mark.parametrize("raw,why", [
    (ns_raw(b"a" * 32, 1024, 0), "no NUL"),
    (ns_raw(b"", 1024, 0), "empty name"),
    (ns_raw(b"\0garbage", 1024, 0), "empty name, garbage after"),
    (ns_raw(b"svc", RPMSG_ADDR_ANY, 0), "addr ANY"),
    (ns_raw(b"svc", RPMSG_ADDR_ANY, 1), "addr ANY destroy"),
    (ns_raw(b"svc", 1024, 2), "flags 2"),
    (ns_raw(b"svc", 1024, 0xFFFFFFFF), "flags -1"),
    (ns_raw(b"svc", 1024, 0x100), "flags 0x100"),
])
def test_ns_malformed_is_refused(raw, why):
    with pytest.raises(RemoteProtocolError):
        NameServiceMessage.decode(raw)


@pytest.mark.parametrize("name", ["", "x" * 32, "a\0b", "é" * 16])
def test_check_name_refuses(name):
    with pytest.raises(ValueError):
        check_name(name)


def test_check_name_and_decode_name():
    assert check_name("rpmsg-client-sample") == b"rpmsg-client-sample"
    assert decode_name(b"abc\0\xff\xfe" + bytes(26)) == "abc"
    with pytest.raises(RemoteProtocolError):
        decode_name(b"x" * 32)
