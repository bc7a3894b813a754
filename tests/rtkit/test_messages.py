"""RTKit message fields: the bit positions of Linux's rtkit.c, and round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amplink.errors import InvalidArgument, InvalidArgumentType
from amplink.rtkit import messages as m


def test_field_positions_match_linux():
    # type 59:52, HELLO min 15:0 max 31:16
    assert m.hello(11, 12) == (1 << 52) | (12 << 16) | 11
    assert m.hello_reply(12) == (2 << 52) | (12 << 16) | 12
    # EPMAP: bitmap 31:0, base 34:32, last bit 51; the reply's "more" is bit 0
    assert m.epmap(1, 0x5, last=True) == (8 << 52) | (1 << 51) | (1 << 32) | 0x5
    assert m.epmap_reply(3, last=False) == (8 << 52) | (3 << 32) | 1
    assert m.epmap_reply(3, last=True) == (8 << 52) | (1 << 51) | (3 << 32)
    # STARTEP: endpoint 39:32, bit 1
    assert m.startep(0x20) == (5 << 52) | (0x20 << 32) | 2
    # power states 15:0
    assert m.power(m.MgmtType.SET_AP_PWR_STATE, m.PowerState.IDLE) == (0xB << 52) | 0x201
    # buffer requests: size (pages) 51:44, IOVA 43:0
    assert m.buffer_request(0xFF, (1 << 44) - 1) == (1 << 52) | (0xFF << 44) | ((1 << 44) - 1)
    # syslog INIT: entries 7:0, message size 31:24; LOG index 7:0
    assert m.syslog_init(8, 0x80) == (8 << 52) | (0x80 << 24) | 8
    assert m.syslog_log(3) == (5 << 52) | 3
    # oslog: type in 63:56
    assert m.oslog(m.OSLOG_ACK) == 3 << 56


def test_power_states_have_linux_values():
    assert [s.value for s in m.PowerState] == [0x00, 0x01, 0x10, 0x20, 0x201]
    assert m.power_name(0x20) == "ON" and m.power_name(0x1234) == "0x1234"


def test_builders_refuse_fields_that_do_not_fit():
    with pytest.raises(InvalidArgument):
        m.buffer_request(0x100, 0)
    with pytest.raises(InvalidArgument):
        m.buffer_request(1, 1 << 44)
    with pytest.raises(InvalidArgument):
        m.epmap(8, 0, last=True)
    with pytest.raises(InvalidArgumentType):
        m.startep("1")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        m.check_word(1 << 64)
    with pytest.raises(InvalidArgument):
        m.check_endpoint(0x100)


def test_typed_keeps_the_payload_out_of_the_type_field():
    assert m.msg_type(m.typed(5, (1 << 64) - 1)) == 5


@given(st.integers(0, 0xFF), st.integers(0, (1 << 44) - 1))
def test_buffer_request_round_trip(pages, iova):
    msg = m.buffer_request(pages, iova)
    assert m.msg_type(msg) == m.BUFFER_REQUEST
    assert m.buffer_fields(msg) == (pages, iova)
    assert 0 <= msg < 1 << 64


@given(st.integers(0, 7), st.integers(0, 0xFFFF_FFFF), st.booleans())
def test_epmap_round_trip(base, bitmap, last):
    assert m.epmap_fields(m.epmap(base, bitmap, last)) == (base, bitmap, last)
    reply = m.epmap_reply(base, last)
    assert m.epmap_fields(reply)[0] == base and m.epmap_fields(reply)[2] == last
    assert bool(reply & m.EPMAP_REPLY_MORE) == (not last)


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_hello_round_trip(low, high):
    assert m.hello_versions(m.hello(low, high)) == (low, high)


@given(st.integers(0, (1 << 64) - 1))
def test_decoders_take_any_word(word):
    # every decoder works on any 64-bit value from the co-processor
    m.msg_type(word)
    m.hello_versions(word)
    m.epmap_fields(word)
    m.buffer_fields(word)
    m.syslog_init_fields(word)
    assert 0 <= m.syslog_index(word) <= 0xFF
    assert 0 <= m.startep_endpoint(word) <= 0xFF
    assert 0 <= m.power_state(word) <= 0xFFFF
