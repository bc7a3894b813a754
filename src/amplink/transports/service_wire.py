"""The endpoint service's wire protocol, sans IO: frames, their checks, error codes.

A client of the amplink service (:mod:`amplink.service.endpoints`) talks to it over a
Unix ``SOCK_SEQPACKET`` socket, :data:`ENDPOINT_SOCKET` in the service's runtime
directory. Every packet is one frame: a 20-byte header, then a body::

    struct frame { u8 kind; u8 flags; u16 reserved = 0; u32 a; u32 b; u32 c; u32 d; }
    /* little-endian, packed; then the body */

======== ===== ============================================================================
kind     dir   meaning
======== ===== ============================================================================
REQUEST  c->s  ``a`` = request id; body = one JSON object ``{"op": ..., ...}``
RESPONSE s->c  ``a`` = the request's id; body = ``{"ok": true, ...}`` or
               ``{"ok": false, "errno": N, "error": "..."}``
DATA     c->s  one message: ``a`` = source address, ``b`` = destination, body = payload
DATA     s->c  one message: ``a`` = source, ``b`` = destination (an endpoint of this
               client), ``c`` = send credits returned, ``d`` = messages the service
               dropped for this client so far (mod 2**32); flag WATCHED: a copy of a
               message on a channel this client watches, sent by the processor to
               another client's endpoint, or by another client (``a``) to the processor
CREDIT   s->c  ``c`` = send credits returned, ``d`` = as in DATA
EVENT    s->c  body = ``{"event": "link_down", "reason": ...}`` or ``{"event":
               "refused", "errno": N, "error": ..., "src": addr}`` (a DATA frame the
               service did not pass on)
======== ===== ============================================================================

Flow control is by credits, as HTTP/2's windows: a client starts with ``window``
credits (told at attach) and spends one per DATA frame; the service returns each once it
handed the message to the processor's link (or refused it), piggybacked on the frames
it sends or, when half a window is owed, in a CREDIT frame. A client that sends without
credit broke the protocol and is disconnected. Towards the client the service queues a
bounded number of frames; beyond, it drops messages and counts them (``d``).

Operations (the body of a REQUEST; every field is checked by the service):

* ``status`` -> ``processors``: what the client may see (``amplink ls``, ``top``);
* ``attach`` ``processor``, ``link`` (index, default 0), ``watch`` (bool), ``version``
  -> ``mtu``, ``window``, ``link``, ``address_range``, ``buffers`` (whether the
  processor maps buffers lent by reference): this connection now serves one
  link of that processor; the service announces the channels the client may see as
  rpmsg name-service messages (DATA to address 53) and later ones as they come;
* ``open`` ``name``, ``addr``, ``dst`` (null or values) -> ``addr``, ``dst``, ``name``,
  ``rights``: an endpoint of this client on a channel;
* ``close`` ``addr``;
* ``attach_buffer`` ``channel``, ``offset``, ``size``, ``access``, ``read_only``, ``name``,
  with the buffer's file descriptor (SCM_RIGHTS, exactly one; on no other frame) ->
  ``id``, ``da``: the processor maps the client's buffer (the client must have the
  "send" right on ``channel``); ``detach_buffer`` ``id`` (see
  :mod:`amplink.service.buffers`).
"""

from __future__ import annotations

import errno
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import (
    AccessDenied,
    AddressError,
    AmplinkError,
    InvalidArgument,
    LinkDown,
    MessageTooLarge,
    NotSupported,
    RemoteProtocolError,
    ServiceError,
    UnknownTarget,
)

#: the socket's name in the service's runtime directory
ENDPOINT_SOCKET = ".endpoints"
PROTOCOL_VERSION = 1
#: how long a request to the service (attach, open) may take, by default
DEFAULT_TIMEOUT = 5.0

HEADER = struct.Struct("<BBHIIII")
HEADER_SIZE = HEADER.size
KIND_REQUEST = 1
KIND_RESPONSE = 2
KIND_DATA = 3
KIND_CREDIT = 4
KIND_EVENT = 5
KINDS = frozenset({KIND_REQUEST, KIND_RESPONSE, KIND_DATA, KIND_CREDIT, KIND_EVENT})
#: DATA from the service: a copy of a message to another endpoint of the channel
FLAG_WATCHED = 1
#: the longest JSON body; a DATA body is at most the link's MTU (rpmsg: < 64 KiB)
MAX_JSON = 64 << 10
MAX_PAYLOAD = 0xFFFF
#: the longest frame either side accepts
MAX_FRAME = HEADER_SIZE + MAX_JSON
MAX_ERROR_TEXT = 1000
U32 = 0xFFFF_FFFF

#: channel rights a client may hold (see amplink.service.policy)
RIGHTS = ("send", "receive", "watch")


class FrameError(ValueError):
    """A frame does not hold up (the message says what is wrong)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame; ``body`` is a view of the packet."""

    kind: int
    flags: int
    a: int
    b: int
    c: int
    d: int
    body: memoryview


def header(kind: int, a: int = 0, b: int = 0, c: int = 0, d: int = 0, flags: int = 0) -> bytes:
    """A frame header (send it with the body in one ``sendmsg``)."""
    return HEADER.pack(kind, flags, 0, a, b, c, d)


def decode(packet: bytes | bytearray | memoryview) -> Frame:
    """Check one packet's header; :class:`FrameError` if it is not a frame."""
    view = memoryview(packet)
    if len(view) < HEADER_SIZE:
        raise FrameError(f"a frame of {len(view)} bytes is shorter than its header")
    if len(view) > MAX_FRAME:
        raise FrameError(f"a frame of {len(view)} bytes exceeds the limit of {MAX_FRAME}")
    kind, flags, reserved, a, b, c, d = HEADER.unpack_from(view)
    if kind not in KINDS:
        raise FrameError(f"unknown frame kind {kind}")
    if reserved or flags & ~(FLAG_WATCHED if kind == KIND_DATA else 0):
        raise FrameError(f"frame kind {kind} with flags 0x{flags:x}, reserved 0x{reserved:x}")
    return Frame(kind, flags, a, b, c, d, view[HEADER_SIZE:])


def encode_json(kind: int, message: dict[str, Any], a: int = 0) -> bytes:
    """A REQUEST, RESPONSE or EVENT frame; ValueError if the body exceeds MAX_JSON."""
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_JSON:
        raise ValueError(f"a message of {len(body)} B exceeds the protocol limit of {MAX_JSON} B")
    return header(kind, a) + body


def decode_json(body: bytes | memoryview) -> dict[str, Any]:
    """A JSON body; :class:`FrameError` unless it is one JSON object."""
    try:
        message = json.loads(bytes(body).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FrameError(f"not a JSON body: {exc}") from None
    except RecursionError:  # b"[" * 100000
        raise FrameError("not a JSON body: nested too deeply") from None
    if not isinstance(message, dict):
        raise FrameError("a JSON body must be an object")
    return message


def field(message: Mapping[str, Any], key: str, kind: type, *, optional: bool = False) -> Any:
    """``message[key]`` checked to be a ``kind`` (bool is not an int); FrameError if not."""
    value = message.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FrameError(f"field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def address(message: Mapping[str, Any], key: str, *, optional: bool = False) -> int | None:
    """An rpmsg address field (0 .. 2**32-2), or None if optional and absent."""
    value = field(message, key, int, optional=optional)
    if value is not None and not 0 <= value < U32:
        raise FrameError(f"field {key!r}: {value} is not an rpmsg address")
    return value  # type: ignore[no-any-return]


# -- errors: one errno on the wire, one typed error at each end --------------------------------
def describe(exc: BaseException) -> str:
    """The text the service answers for ``exc``: without the "[Errno N]" of an OSError,
    which the answer carries apart (the client's error adds it again)."""
    if isinstance(exc, OSError) and exc.strerror:
        return str(exc.strerror)
    return str(exc)


def errno_of(exc: BaseException) -> int:
    """The errno the service answers for ``exc``."""
    if isinstance(exc, LinkDown):
        return errno.ENOTCONN
    if isinstance(exc, AddressError):
        return errno.EADDRINUSE
    if isinstance(exc, MessageTooLarge):
        return errno.EMSGSIZE
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    if isinstance(exc, (FrameError, ValueError, TypeError)):
        return errno.EINVAL
    return errno.EIO


def error_from_errno(err: int, message: str) -> AmplinkError:
    """The typed error a client raises for the service's answer ``err``."""
    message = message[:MAX_ERROR_TEXT]
    if err in (errno.EACCES, errno.EPERM):
        return AccessDenied(message, err)
    if err == errno.ENOENT:
        return UnknownTarget(message)
    if err == errno.ENOTCONN:
        return LinkDown(message)
    if err == errno.EADDRINUSE:
        return AddressError(message)
    if err == errno.EINVAL:
        return InvalidArgument(message)
    if err == errno.EMSGSIZE:
        return MessageTooLarge(message)
    if err == errno.EOPNOTSUPP:
        return NotSupported(message)
    if err == errno.EPROTO:
        return RemoteProtocolError(message)
    return ServiceError(err if err in errno.errorcode else errno.EIO, message)


def check_response(frame: Frame) -> dict[str, Any]:
    """A RESPONSE's content if ``ok``; else raise the typed error of its errno."""
    message = decode_json(frame.body)
    if field(message, "ok", bool):
        return message
    err = field(message, "errno", int)
    raise error_from_errno(err, field(message, "error", str))
