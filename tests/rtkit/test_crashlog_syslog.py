"""The crashlog and syslog codecs: layouts, fourcc byte order, hostile contents, and
property tests (what is built parses back; any bytes parse without an exception)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amplink.rtkit import crashlog as cl
from amplink.rtkit.errors import CrashlogError
from amplink.rtkit.syslog import SyslogLayout, decode_entry, encode_entry

REGS = cl.Registers(x=tuple(range(100, 131)), sp=0x1000, pc=0x4000_1234, psr=0x3C5,
                    far=0xDEAD_BEEF, esr=0x9600_0045, cpacr=1, fpsr=2, fpcr=3)


def sample() -> bytes:
    return cl.build_crashlog([
        cl.cver(bytes(range(16)), "RTKit-1.2.3"),
        cl.cstr(7, "panic: assertion failed\nat foo.c:12"),
        cl.ctim(123456789),
        cl.cmbx(2, 5, [cl.MailboxRecord(0x10_0000_0000_0001, 0x20, 0x1234)]),
        cl.crg8(REGS),
    ], version=3, flags=0x10)


def test_fourccs_are_stored_little_endian():
    data = sample()
    assert data[:4] == b"EHLC"  # "CLHE" packed big-endian, stored little-endian
    assert data[0x20:0x24] == b"revC"
    assert data.endswith(b"EHLC" + bytes(8) + struct.pack("<I", 16))
    assert cl.fourcc_text(cl.CRG8) == "Crg8"


def test_a_crashlog_is_parsed_into_its_sections():
    log = cl.parse_crashlog(sample())
    assert log.ok and log.terminated and log.version == 3 and log.flags == 0x10
    assert [s.name for s in log.sections] == ["Cver", "Cstr", "Ctim", "Cmbx", "Crg8"]
    values = [s.value for s in log.sections]
    assert values[0] == (bytes(range(16)), "RTKit-1.2.3")
    assert values[1] == (7, "panic: assertion failed\nat foo.c:12")
    assert values[2] == 123456789
    assert values[3] == (2, 5, (cl.MailboxRecord(0x10_0000_0000_0001, 0x20, 0x1234),))
    assert values[4] == REGS
    assert log.messages() == ["panic: assertion failed\nat foo.c:12"]


def test_the_register_dump_has_linux_offsets():
    payload = REGS.pack()
    assert len(payload) == 0x350
    assert struct.unpack_from("<Q", payload, 8)[0] == 100            # x0
    assert struct.unpack_from("<Q", payload, 0x100)[0] == 0x1000     # sp
    assert struct.unpack_from("<Q", payload, 0x108)[0] == 0x4000_1234  # pc
    assert struct.unpack_from("<Q", payload, 0x110)[0] == 0x3C5     # psr
    assert struct.unpack_from("<Q", payload, 0x330)[0] == 0xDEAD_BEEF  # far
    assert struct.unpack_from("<Q", payload, 0x340)[0] == 0x9600_0045  # esr
    assert REGS.exception_level == "EL1h"


def test_the_report_is_readable():
    report = cl.parse_crashlog(sample()).report()
    for line in ("Version: RTKit-1.2.3", "Message (id=0x7): panic: assertion failed",
                 "Message (id=0x7): at foo.c:12", "Crash time: 123456789",
                 "Mailbox history (type 2, index 5):",
                 "#000 @00001234: 0010000000000001 0000000000000020",
                 "Exception taken from EL1h", "PC = 0x40001234", "ESR = 0x96000045",
                 "x28-x30 = 0000000000000080 0000000000000081 0000000000000082"):
        assert line in report
    assert "problem" not in report


def test_unknown_sections_are_shown_raw():
    log = cl.parse_crashlog(cl.build_crashlog([cl.section("Cfoo", b"\x01\x02", flags=4)]))
    assert log.ok and log.sections[0].value is None
    assert "Section Cfoo (flags 0x4, 2 bytes): 0102" in log.report()


def problems(data: bytes) -> str:
    log = cl.parse_crashlog(data)
    assert all(isinstance(e, CrashlogError) for e in log.errors)
    return " | ".join(str(e) for e in log.errors)


def test_a_bad_header_is_reported():
    assert "no header" in problems(b"CLHE")
    assert "not 'CLHE'" in problems(b"XXXX" + bytes(28))


def test_a_total_size_past_the_buffer_is_reported_and_the_buffer_parsed():
    data = cl.build_crashlog([cl.ctim(5)], size=1 << 20)
    log = cl.parse_crashlog(data)
    assert "exceeds the buffer" in problems(data)
    assert [s.value for s in log.sections] == [5] and log.terminated


def test_a_section_of_size_zero_stops_parsing_instead_of_looping():
    bad = struct.pack("<IIII", cl.CSTR, 0, 0, 0)
    assert "less than its 16-byte header" in problems(cl.build_crashlog([bad]))


def test_a_section_running_past_the_end_is_reported():
    bad = struct.pack("<IIII", cl.CSTR, 0, 0, 0x1000) + b"abcd"
    assert "runs past the end" in problems(cl.build_crashlog([bad]))


def test_a_crashlog_without_terminator_is_reported():
    data = cl.build_crashlog([cl.ctim(1)])[:-16]
    data = data[:8] + struct.pack("<I", len(data)) + data[12:]
    log = cl.parse_crashlog(data)
    assert not log.terminated and "without its 'CLHE' terminator" in problems(data)
    assert log.sections[0].value == 1


def test_short_known_sections_are_reported_and_kept():
    data = cl.build_crashlog([cl.section("Crg8", bytes(16)), cl.section("Cstr", b"ab"),
                              cl.section("Cmbx", bytes(10))])
    text = problems(data)
    assert "Crg8 of 16 bytes" in text and "Cstr of 2 bytes" in text and "Cmbx of 10" in text
    assert len(cl.parse_crashlog(data).sections) == 3


def test_text_from_the_coprocessor_cannot_forge_lines():
    data = cl.build_crashlog([cl.cstr(1, "a\x1b[2Jb\rc")])
    assert "a?[2Jb?c" in cl.parse_crashlog(data).report()


section_strategy = st.one_of(
    st.builds(cl.cstr, st.integers(0, 0xFFFF_FFFF), st.text(max_size=40).filter(
        lambda t: "\0" not in t)),
    st.builds(cl.cver, st.binary(min_size=16, max_size=16), st.text(max_size=20).filter(
        lambda t: "\0" not in t)),
    st.builds(cl.ctim, st.integers(0, 2**64 - 1)),
    st.builds(cl.cmbx, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
              st.lists(st.builds(cl.MailboxRecord, st.integers(0, 2**64 - 1),
                                 st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1)),
                       max_size=5)),
    st.builds(lambda x, pc: cl.crg8(cl.Registers(x=tuple(x), sp=1, pc=pc, psr=5, far=2,
                                                 esr=3)),
              st.lists(st.integers(0, 2**64 - 1), min_size=31, max_size=31),
              st.integers(0, 2**64 - 1)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(section_strategy, max_size=8), st.integers(0, 2**32 - 1))
def test_what_is_built_parses_back(sections, flags):
    data = cl.build_crashlog(sections, flags=flags)
    log = cl.parse_crashlog(data)
    assert log.ok and log.terminated and log.flags == flags
    assert [cl.section(s.name, s.payload, s.flags) for s in log.sections] == sections
    log.report()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_parse_without_an_exception(data):
    log = cl.parse_crashlog(data)
    log.report()
    for section in log.sections:
        assert section.offset + 16 + len(section.payload) <= len(data)


@settings(max_examples=150, deadline=None)
@given(st.lists(section_strategy, min_size=1, max_size=4), st.data())
def test_corrupted_crashlogs_never_raise(sections, data):
    raw = bytearray(cl.build_crashlog(sections))
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    log = cl.parse_crashlog(bytes(raw[:cut]))
    log.report()


# -- syslog --------------------------------------------------------------------------------
def test_a_syslog_slot_has_the_linux_layout():
    layout = SyslogLayout(4, 0x40)
    assert layout.stride == 0x60 and layout.size == 0x180 and layout.offset(2) == 0xC0
    raw = encode_entry(layout, "hello\n", "ctx", header=7)
    assert len(raw) == 0x60
    assert struct.unpack_from("<II", raw) == (7, 0)
    assert raw[8:11] == b"ctx" and raw[0x20:0x26] == b"hello\n"
    entry = decode_entry(raw, layout, 2)
    assert (entry.index, entry.context, entry.message, entry.header) == (2, "ctx", "hello", 7)
    assert str(entry) == "ctx: hello"


def test_syslog_text_is_cut_to_fit_and_cleaned():
    layout = SyslogLayout(1, 8)
    entry = decode_entry(encode_entry(layout, "0123456789", "c" * 40), layout, 0)
    assert entry.message == "0123456" and entry.context == "c" * 23
    raw = bytearray(encode_entry(SyslogLayout(1, 16), ""))
    raw[0x20:0x30] = b"a\x1b[31mb\n\r \0\0\0\0\0\0"  # control characters, trailing CR LF
    assert decode_entry(bytes(raw), SyslogLayout(1, 16), 0).message == "a?[31mb"
    with pytest.raises(ValueError):
        decode_entry(b"short", layout, 0)


@given(st.integers(0, 255), st.binary(min_size=0, max_size=0x20 + 255))
def test_any_slot_bytes_decode(msg_size, raw):
    layout = SyslogLayout(1, msg_size)
    raw = raw[:layout.stride].ljust(layout.stride, b"\xff")
    entry = decode_entry(raw, layout, 0)
    assert entry.message.isprintable() and entry.context.isprintable()
