"""RTKit's mailbox messages: endpoint numbers, message types, fields and power states.

Every RTKit message is one 64-bit word (``msg0``) sent to an endpoint (the low byte of
the mailbox's second word). The fields below are those of Linux's
drivers/soc/apple/rtkit.c and Asahi Linux's m1n1 (see docs/rtkit.md). Builders check
that each field fits (our own mistakes raise :class:`~amplink.errors.InvalidArgument`);
decoders take any 64-bit value, since every word from a co-processor is untrusted.
"""

from __future__ import annotations

import enum

from .._args import int_arg

# -- endpoints -----------------------------------------------------------------------------
EP_MGMT = 0
EP_CRASHLOG = 1
EP_SYSLOG = 2
EP_DEBUG = 3
EP_IOREPORT = 4
EP_OSLOG = 8
#: the first application endpoint; below it are system endpoints
APP_ENDPOINT_START = 0x20
#: endpoints are one byte
MAX_ENDPOINTS = 0x100
#: the system endpoints the host starts when the co-processor announces them
STARTED_SYSTEM_ENDPOINTS = frozenset({EP_CRASHLOG, EP_SYSLOG, EP_DEBUG, EP_IOREPORT, EP_OSLOG})

SYSTEM_ENDPOINT_NAMES = {
    EP_MGMT: "mgmt", EP_CRASHLOG: "crashlog", EP_SYSLOG: "syslog", EP_DEBUG: "debug",
    EP_IOREPORT: "ioreport", EP_OSLOG: "oslog",
}

# -- versions ------------------------------------------------------------------------------
MIN_SUPPORTED_VERSION = 11
MAX_SUPPORTED_VERSION = 12

U64_MASK = (1 << 64) - 1


class MgmtType(enum.IntEnum):
    """Message types of the management endpoint (bits 59:52)."""

    HELLO = 1
    HELLO_REPLY = 2
    PING = 3
    PONG = 4
    STARTEP = 5
    SET_IOP_PWR_STATE = 6
    IOP_PWR_STATE_ACK = 7
    EPMAP = 8  # the co-processor's map and the host's reply share the type
    SET_AP_PWR_STATE = 0xB  # the request and its ack share the type


class PowerState(enum.IntEnum):
    """IOP and AP power states (bits 15:0 of the power messages)."""

    OFF = 0x00        # cannot be restarted
    SLEEP = 0x01      # can be restarted (it says HELLO again)
    QUIESCED = 0x10   # running, but no communication
    ON = 0x20
    IDLE = 0x201      # sleeping, state retained


def power_name(state: int) -> str:
    """``ON`` for 0x20, ``0x1234`` for a value that is no known state."""
    try:
        return PowerState(state).name
    except ValueError:
        return f"0x{state:x}"


# -- fields --------------------------------------------------------------------------------
def get(msg: int, hi: int, lo: int) -> int:
    """Bits ``hi:lo`` of ``msg``."""
    return (msg >> lo) & ((1 << (hi - lo + 1)) - 1)


def put(value: int, hi: int, lo: int, name: str) -> int:
    """``value`` placed at bits ``hi:lo``; InvalidArgument if it does not fit."""
    return int_arg(value, name, minimum=0, maximum=(1 << (hi - lo + 1)) - 1) << lo


#: the type field of the management, crashlog, syslog and ioreport endpoints
TYPE_HI, TYPE_LO = 59, 52
#: the type field of the oslog endpoint
OSLOG_TYPE_HI, OSLOG_TYPE_LO = 63, 56


def msg_type(msg: int) -> int:
    """The type field (bits 59:52) of a management, crashlog, syslog or ioreport message."""
    return get(msg, TYPE_HI, TYPE_LO)


def typed(kind: int, payload: int = 0) -> int:
    """A message of type ``kind`` (bits 59:52) with ``payload`` in its other bits."""
    return (payload & ~(0xFF << TYPE_LO) & U64_MASK) | put(kind, TYPE_HI, TYPE_LO, "type")


# management
def hello(min_version: int, max_version: int) -> int:
    return typed(MgmtType.HELLO, put(min_version, 15, 0, "min_version")
                 | put(max_version, 31, 16, "max_version"))


def hello_versions(msg: int) -> tuple[int, int]:
    """(min, max) of a HELLO, or the chosen version twice of a HELLO_REPLY."""
    return get(msg, 15, 0), get(msg, 31, 16)


def hello_reply(version: int) -> int:
    return typed(MgmtType.HELLO_REPLY, put(version, 15, 0, "version")
                 | put(version, 31, 16, "version"))


EPMAP_LAST = 1 << 51
EPMAP_REPLY_MORE = 1 << 0


def epmap(base: int, bitmap: int, last: bool) -> int:
    """Endpoints ``32 * base + bit`` for each bit of ``bitmap``."""
    return typed(MgmtType.EPMAP, put(bitmap, 31, 0, "bitmap") | put(base, 34, 32, "base")
                 | (EPMAP_LAST if last else 0))


def epmap_fields(msg: int) -> tuple[int, int, bool]:
    """(base, bitmap, last) of an EPMAP."""
    return get(msg, 34, 32), get(msg, 31, 0), bool(msg & EPMAP_LAST)


def epmap_reply(base: int, last: bool) -> int:
    """The host's answer: the base echoed, with the last bit, else the "more" bit."""
    return typed(MgmtType.EPMAP, put(base, 34, 32, "base")
                 | (EPMAP_LAST if last else EPMAP_REPLY_MORE))


STARTEP_FLAG = 1 << 1


def startep(endpoint: int) -> int:
    return typed(MgmtType.STARTEP, put(endpoint, 39, 32, "endpoint") | STARTEP_FLAG)


def startep_endpoint(msg: int) -> int:
    return get(msg, 39, 32)


def power(kind: int, state: int) -> int:
    """SET_IOP_PWR_STATE, IOP_PWR_STATE_ACK or SET_AP_PWR_STATE (request and ack)."""
    return typed(kind, put(state, 15, 0, "state"))


def power_state(msg: int) -> int:
    return get(msg, 15, 0)


#: amplink's ping carries a cookie in bits 31:0 that the pong echoes (m1n1 sends none)
def ping(cookie: int) -> int:
    return typed(MgmtType.PING, put(cookie, 31, 0, "cookie"))


def pong(cookie: int) -> int:
    return typed(MgmtType.PONG, put(cookie, 31, 0, "cookie"))


def cookie(msg: int) -> int:
    return get(msg, 31, 0)


# buffer requests (crashlog, syslog, ioreport): type 1
BUFFER_REQUEST = 1
PAGE_SIZE = 0x1000
IOVA_BITS = 44


def buffer_request(pages: int, iova: int) -> int:
    """A request for (or the answer with) ``pages`` 4 KiB pages at ``iova`` (0: host's choice)."""
    return typed(BUFFER_REQUEST, put(pages, 51, 44, "pages") | put(iova, 43, 0, "iova"))


def buffer_fields(msg: int) -> tuple[int, int]:
    """(pages, iova) of a buffer request or its answer."""
    return get(msg, 51, 44), get(msg, 43, 0)


#: a later type-1 message on the crashlog endpoint means "I crashed"
CRASHLOG_CRASH = 1
#: what the host sends on the crashlog endpoint to make a co-processor crash (m1n1's
#: "crash_soft"); amplink's firmware runtime writes its crashlog and crashes
CRASHLOG_REQUEST_CRASH = 0x40

# syslog
SYSLOG_LOG = 5
SYSLOG_INIT = 8


def syslog_init(entries: int, msg_size: int) -> int:
    return typed(SYSLOG_INIT, put(entries, 7, 0, "entries") | put(msg_size, 31, 24, "msg_size"))


def syslog_init_fields(msg: int) -> tuple[int, int]:
    """(entries, message size) of a syslog INIT."""
    return get(msg, 7, 0), get(msg, 31, 24)


def syslog_log(index: int) -> int:
    return typed(SYSLOG_LOG, put(index, 7, 0, "index"))


def syslog_index(msg: int) -> int:
    return get(msg, 7, 0)


# ioreport: besides buffer requests, types 8 and 0xc must be echoed or the co-processor hangs
IOREPORT_ECHOED = frozenset({0x8, 0xC})

# oslog: type in bits 63:56
OSLOG_INIT = 1
OSLOG_ACK = 3


def oslog(kind: int, payload: int = 0) -> int:
    return ((payload & ((1 << OSLOG_TYPE_LO) - 1))
            | put(kind, OSLOG_TYPE_HI, OSLOG_TYPE_LO, "type"))


def oslog_type(msg: int) -> int:
    return get(msg, OSLOG_TYPE_HI, OSLOG_TYPE_LO)


def check_word(msg: object, name: str = "msg") -> int:
    """A message word from a caller: an int in 0..2**64-1."""
    return int_arg(msg, name, minimum=0, maximum=U64_MASK)


def check_endpoint(endpoint: object, name: str = "endpoint") -> int:
    return int_arg(endpoint, name, minimum=0, maximum=MAX_ENDPOINTS - 1)


def endpoint_name(endpoint: int) -> str:
    """``syslog`` for 2, ``0x20`` for an application endpoint."""
    return SYSTEM_ENDPOINT_NAMES.get(endpoint, f"0x{endpoint:02x}")
