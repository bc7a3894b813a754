"""A backend over the amplink service: endpoints of a processor that another program holds.

The service (:mod:`amplink.service.endpoints`) holds the processors and their links;
a client program attaches to one link of one processor over the service's socket and
gets a whole :class:`~amplink.link.Link` over it::

    link = connect_link("sim0")                  # the first link of processor sim0
    ep = link.open_channel("rpmsg-echo", timeout=5)
    ep.send(b"hello")
    print(ep.recv(timeout=5))

Channels are announced by the service as the processor announces them (only those the
client may see); each endpoint the client opens is a real endpoint of the processor's
link with an address of its own, bound to one channel (named, or given by its remote
address): it sends to that channel's remote address only (another one is NotSupported,
as on ``/dev/rpmsgN``), and only with the "send" right; what the processor sends to it
comes back only with the "receive" right (see :mod:`amplink.service.policy`). Refusals
are :class:`~amplink.errors.AccessDenied` (EACCES), raised at once where the client
already knows its rights.

What it can do (:class:`Capabilities`): the processor link's MTU, the name service
(announcements come from the service; announcing endpoints of one's own is not
supported), addresses assigned by the service, "pair" addressing (an endpoint sends to
its channel's remote address only, as ``/dev/rpmsgN``). No zero copy: every message
crosses the socket, so its payload is copied into the kernel and out again on each side
of the service (two copies of at most one MTU per hop, besides the copy into or out of
the processor's ring buffers), and ``loan()`` / ``hold=True`` raise NotSupported. Large
data goes by reference, with no copy at all, where the processor can map buffers of its
host (``send_by_reference``: a simulated processor): lend them with a
:class:`~amplink.handover.BufferChannel` whose port is a
:class:`~amplink.transports.service_buffers.ServicePort`.

Waiting follows the link runtime: the waiting thread does the work, sleeping on the
socket (level-triggered) and reading the frames itself. Sending takes a credit; with
none left (the service has a window of messages in flight per client) a send waits
for the service to return some, as it waits for a ring buffer on a local link.
"""

from __future__ import annotations

import array
import errno
import fcntl
import itertools
import logging
import select
import socket
import termios
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import (
    AccessDenied,
    AmplinkError,
    LinkDown,
    NotSupported,
    RemoteProtocolError,
    ServiceError,
    ServiceUnavailable,
)
from ..link.backend import Backend, Capabilities, Deliver
from ..link.runtime import Link
from ..notify.doorbell import Doorbell
from ..notify.waiter import Waiter
from ..paths import runtime_dir
from ..rpmsg.wire import RPMSG_ADDR_ANY, RPMSG_NS_ADDR, RPMSG_NS_SIZE
from . import service_wire as W
from .service_status import ProcessorStatus, from_json
from .service_wire import DEFAULT_TIMEOUT

log = logging.getLogger(__name__)

#: frames set aside while a request waits for its answer; beyond, messages are dropped
MAX_INBOX = 4096
#: a larger socket send buffer than the default, so that a window of messages fits
SEND_BUFFER = 1 << 20


@dataclass(frozen=True, slots=True)
class _Opened:
    """What the service told about one of our endpoints."""

    name: str
    dst: int
    rights: frozenset[str]


def queued_bytes(sock: socket.socket, buf: array.array[int]) -> int:
    """Bytes waiting in ``sock`` (FIONREAD: far cheaper than a read that fails with EAGAIN);
    1 if the socket cannot tell (the caller's read then does)."""
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf, True)
    except OSError:
        return 1
    return buf[0]


def connection_end(sock: socket.socket) -> str | None:
    """Why the service's connection ended, if it did (a socket with nothing queued)."""
    try:
        if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
            return None
    except BlockingIOError:
        return None
    except OSError as exc:
        return f"lost the amplink service: {exc}"
    return "the amplink service closed the connection (it stopped or restarted)"


class _SocketReadiness(Doorbell):
    """The socket as the waiter's doorbell: readable while frames wait (level-triggered).

    Frames are not consumed here: the thread that wakes reads them under the link's lock
    (:meth:`ServiceBackend.receive`). Readable without a byte queued is the end of the
    connection, reported as LinkDown (the waiter then calls the backend's mark_down).
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._buf = array.array("i", [0])

    def kick(self) -> None:
        pass  # a frame is its own notification

    def fileno(self) -> int:
        return self._fd

    def clear(self) -> None:
        if queued_bytes(self._sock, self._buf):
            return
        # nothing queued: another thread took the frames, or the service is gone
        gone = connection_end(self._sock)
        if gone is not None:
            raise LinkDown(gone)

    def close(self) -> None:
        pass  # the backend owns the socket


def connect_socket(path: Path, timeout: float) -> socket.socket:
    """A connection to the service's endpoint socket at ``path`` (ServiceUnavailable if
    none answers)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        raise ServiceUnavailable(exc.errno or errno.ECONNREFUSED,
                                 f"no amplink service answers at {path} ({exc.strerror or exc}): "
                                 "start a processor with `amplink boot FIRMWARE`, or point "
                                 "AMPLINK_RUNTIME_DIR (--service) at the service's directory"
                                 ) from None
    return sock


class Requests:
    """Requests on a connection to the service, each answered by id; other frames go to
    ``stash``."""

    def __init__(self, sock: socket.socket, where: str) -> None:
        self.sock = sock
        self.where = where
        self._ids = itertools.count(1)
        #: ids of requests whose answer nobody waits for (dropped when they come)
        self.unawaited: set[int] = set()

    def send(self, op: str, fields: Mapping[str, Any], timeout: float = DEFAULT_TIMEOUT,
             fd: int | None = None) -> int:
        """Send a request (with ``fd`` passed along, SCM_RIGHTS), waiting up to ``timeout``
        s for room; returns its id."""
        rid = next(self._ids) & W.U32
        packet = W.encode_json(W.KIND_REQUEST, {"op": op, **fields}, a=rid)
        fds = [] if fd is None else [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                      array.array("i", [fd]))]
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock.sendmsg([packet], fds)
                return rid
            except BlockingIOError:  # a packet goes whole or not at all: wait for room
                poller = select.poll()
                poller.register(self.sock, select.POLLOUT)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not poller.poll(remaining * 1000):
                    raise ServiceError(errno.ETIMEDOUT, f"the amplink service at {self.where} "
                                                        f"took no request for {timeout} s"
                                       ) from None
            except OSError as exc:
                raise LinkDown(f"lost the amplink service at {self.where}: {exc}") from None

    def call(self, op: str, fields: Mapping[str, Any], timeout: float,
             stash: Any = None, fd: int | None = None) -> dict[str, Any]:
        """Send a request (with ``fd``) and wait up to ``timeout`` s for its answer."""
        rid = self.send(op, fields, timeout, fd)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not _readable(self.sock, remaining):
                self.unawaited.add(rid)
                raise ServiceError(errno.ETIMEDOUT, f"the amplink service at {self.where} did "
                                                    f"not answer {op!r} within {timeout} s")
            try:
                packet = self.sock.recv(W.MAX_FRAME + 1)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise LinkDown(f"lost the amplink service at {self.where}: {exc}") from None
            if not packet:
                raise LinkDown(f"the amplink service at {self.where} closed the connection "
                               f"without answering {op!r}")
            frame = _frame(packet, self.where)
            if frame.kind == W.KIND_RESPONSE and frame.a == rid:
                try:
                    return W.check_response(frame)
                except W.FrameError as exc:
                    raise _protocol(self.where, f"answer to {op!r}: {exc}") from None
            if frame.kind == W.KIND_RESPONSE:
                self.unawaited.discard(frame.a)  # a late answer to a call that gave up
            elif frame.kind == W.KIND_EVENT and _disconnection(frame) is not None:
                raise _disconnection(frame)  # type: ignore[misc]
            elif stash is not None:
                stash(frame)
            else:
                raise _protocol(self.where, f"frame kind {frame.kind} before the answer")


def _disconnection(frame: W.Frame) -> AmplinkError | None:
    """The error of an "error" event (the service then closes the connection)."""
    try:
        event = W.decode_json(frame.body)
        if W.field(event, "event", str) != "error":
            return None
        return W.error_from_errno(W.field(event, "errno", int), "the amplink service closed "
                                  f"the connection: {W.field(event, 'error', str)}")
    except W.FrameError:
        return None


def _readable(sock: socket.socket, timeout: float) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(max(0.0, timeout) * 1000))


def _frame(packet: bytes, where: str) -> W.Frame:
    if len(packet) > W.MAX_FRAME:
        raise _protocol(where, f"a frame longer than {W.MAX_FRAME} bytes")
    try:
        return W.decode(packet)
    except W.FrameError as exc:
        raise _protocol(where, str(exc)) from None


def _oversized(dst: int, length: int, mtu: int) -> bool:
    """Whether a message from the service exceeds the MTU. Its announcements (name-service
    messages) may, on a link whose MTU is smaller than they are (RTKit's 8 bytes)."""
    return length > mtu and not (dst == RPMSG_NS_ADDR and length == RPMSG_NS_SIZE)


def _protocol(where: str, what: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"the amplink service at {where} broke its protocol: {what}")


class ServiceBackend(Backend):
    """One link of one processor, served by the amplink service (see the module doc).

    Made by :meth:`connect`; give it to :class:`~amplink.link.Link` (or use
    :func:`connect_link`).
    """

    def __init__(self, sock: socket.socket, requests: Requests, attach: Mapping[str, Any], *,
                 processor: str, index: int, watch: bool, timeout: float,
                 inbox: deque[W.Frame]) -> None:
        try:
            mtu = W.field(attach, "mtu", int)
            min_payload = W.field(attach, "min_payload", int, optional=True) or 0
            window = W.field(attach, "window", int)
            first, last = W.field(attach, "address_range", list)
            if not (0 < mtu <= W.MAX_PAYLOAD and 0 <= min_payload <= mtu
                    and 0 < window <= 1 << 16
                    and isinstance(first, int) and isinstance(last, int)
                    and 0 <= first <= last < RPMSG_ADDR_ANY):
                raise W.FrameError(f"mtu {mtu}, min_payload {min_payload}, window {window}, "
                                   f"range {first}..{last}")
        except (W.FrameError, ValueError, TypeError) as exc:
            raise _protocol(requests.where, f"attach answer: {exc}") from None
        self.capabilities = Capabilities(
            max_payload=mtu, min_payload=min_payload, name_service=True, addressing="pair",
            address_range=(first, last), dynamic_base=None, rx_buffers=0, tx_ready=True,
            send_by_reference=attach.get("buffers") is True)
        self.processor = processor
        self.index = index
        self.watch = watch
        self.timeout = timeout
        self.window = window
        self._sock = sock
        self._requests = requests
        self._inbox = inbox
        self._credits = window
        self._socket_full = False
        self._opened: dict[int, _Opened] = {}
        self.waiter = Waiter(_SocketReadiness(sock))
        self.waiter.on_hangup = self.mark_down
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        self._queued = array.array("i", [0])
        # counters (read by statistics() without a lock)
        self.frames_in = 0
        self.frames_out = 0
        self.watched = 0
        self.service_dropped = 0
        self.dropped_waiting = 0
        self.refused = 0
        self.last_refusal = ""
        self.socket_full = 0
        self.protocol_faults = 0

    # -- making one ----------------------------------------------------------------------------
    @classmethod
    def connect(cls, path: Path | str, processor: str, *, link: int = 0, watch: bool = False,
                timeout: float = DEFAULT_TIMEOUT) -> ServiceBackend:
        """Connect to the service's socket at ``path`` and attach to link ``link`` of
        ``processor``; ``watch`` asks for copies of every message the processor sends
        on the channels this client opens (the "watch" right)."""
        path = Path(path)
        sock = connect_socket(path, timeout)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            requests = Requests(sock, str(path))
            inbox: deque[W.Frame] = deque(maxlen=MAX_INBOX)  # announcements, bounded
            answer = requests.call("attach", {"processor": processor, "link": link,
                                              "watch": watch, "version": W.PROTOCOL_VERSION},
                                   timeout, stash=inbox.append)
            inbox = deque(inbox)  # unbounded from here: _set_aside bounds it
            sock.setblocking(False)
            return cls(sock, requests, answer, processor=processor, index=link, watch=watch,
                       timeout=timeout, inbox=inbox)
        except BaseException:
            sock.close()
            raise

    # -- receiving -------------------------------------------------------------------------
    def _next_frame(self) -> W.Frame | bytes | None:
        """The next frame: set aside ones first, then the socket's (None: nothing now); a
        plain message comes as its packet (bytes), anything else decoded."""
        if self._inbox:
            return self._inbox.popleft()
        if self.down is not None or not queued_bytes(self._sock, self._queued):
            return None  # (the end of the connection is the waiter's to notice)
        try:
            packet = self._sock.recv(W.MAX_FRAME + 1)
        except BlockingIOError:
            return None
        except OSError as exc:
            self.mark_down(f"lost the amplink service: {exc}")
            return None
        if not packet:
            self.mark_down("the amplink service closed the connection (it stopped or restarted)")
            return None
        self.frames_in += 1
        if len(packet) > W.HEADER_SIZE and packet[0] == W.KIND_DATA and not any(packet[1:4]):
            return packet  # the common case: a message, decoded by the caller
        try:
            return _frame(packet, self._requests.where)
        except RemoteProtocolError as exc:
            self._fault(str(exc))
            return None

    def receive(self, deliver: Deliver, budget: int) -> int:
        taken = 0
        mtu = self.capabilities.max_payload
        while taken < budget:
            frame = self._next_frame()
            if frame is None:
                break
            taken += 1
            if type(frame) is bytes:  # a plain message (no flags), as _next_frame checked
                _, _, _, src, dst, credits, dropped = W.HEADER.unpack_from(frame)
                if credits or dropped != self.service_dropped:
                    self._credit(credits, dropped)
                if _oversized(dst, len(frame) - W.HEADER_SIZE, mtu):
                    self._fault(f"a message of {len(frame) - W.HEADER_SIZE} bytes exceeds "
                                "the MTU")
                    continue
                deliver(src, dst, memoryview(frame)[W.HEADER_SIZE:], None)  # copied out
                continue
            assert isinstance(frame, W.Frame)
            kind = frame.kind
            if kind == W.KIND_DATA:
                self._credit(frame.c, frame.d)
                if frame.flags & W.FLAG_WATCHED:
                    self.watched += 1
                if _oversized(frame.b, len(frame.body), mtu):
                    self._fault(f"a message of {len(frame.body)} bytes exceeds the MTU")
                    continue
                deliver(frame.a, frame.b, frame.body, None)  # the runtime copies it out
            elif kind == W.KIND_CREDIT:
                self._credit(frame.c, frame.d)
            elif kind == W.KIND_EVENT:
                self._event(frame)
            elif kind == W.KIND_RESPONSE:
                self._requests.unawaited.discard(frame.a)  # e.g. of a close: nobody waits
            else:
                self._fault(f"a frame of kind {kind} from the service")
        return taken

    def _credit(self, credits: int, dropped: int) -> None:
        self.service_dropped = dropped
        if credits:
            self._credits += credits
            if self._credits > self.window:  # more than we spent: a broken service
                self._fault(f"{self._credits} credits returned for a window of {self.window}")
                self._credits = self.window

    def _event(self, frame: W.Frame) -> None:
        try:
            event = W.decode_json(frame.body)
            kind = W.field(event, "event", str)
            if kind == "link_down":
                self.mark_down(W.field(event, "reason", str)[:W.MAX_ERROR_TEXT])
            elif kind == "error":
                self.mark_down("the amplink service closed the connection: "
                               f"{W.field(event, 'error', str)[:W.MAX_ERROR_TEXT]}")
            elif kind == "refused":
                self.refused += 1
                self.last_refusal = W.field(event, "error", str)[:W.MAX_ERROR_TEXT]
                level = logging.WARNING if self.refused == 1 else logging.DEBUG
                log.log(level, "%s: the service refused a message: %s", self.processor,
                        self.last_refusal)
            else:
                raise W.FrameError(f"unknown event {kind!r}")
        except W.FrameError as exc:
            self._fault(f"event: {exc}")

    def _fault(self, what: str) -> None:
        self.protocol_faults += 1
        level = logging.WARNING if self.protocol_faults == 1 else logging.DEBUG
        log.log(level, "%s: malformed frame from the amplink service dropped: %s",
                self.processor, what)

    def rx_pending(self) -> bool:
        return bool(self._inbox) or bool(self._poll.poll(0))

    # -- sending -------------------------------------------------------------------------------
    def _check_send(self, src: int, dst: int) -> None:
        """Refuse at once what the service would refuse (it checks again)."""
        if dst == RPMSG_NS_ADDR:
            raise NotSupported("announcing endpoints through the amplink service is not "
                               "supported: open the processor's channels instead")
        opened = self._opened.get(src)
        if opened is None:
            raise AccessDenied(f"{self.processor}: 0x{src:x} is not an endpoint of this client")
        if "send" not in opened.rights:
            raise AccessDenied(f"{self.processor}: channel {opened.name!r}: this client may "
                               "not send (no 'send' right in the service's policy)")
        if dst != opened.dst:  # "pair" addressing, as /dev/rpmsgN: not a matter of rights
            raise NotSupported(f"{self.processor}: endpoint 0x{src:x} of channel "
                               f"{opened.name!r} may only send to 0x{opened.dst:x}")

    def try_send(self, src: int, dst: int, payload: bytes | bytearray | memoryview) -> bool:
        self._check_send(src, dst)
        if self._credits <= 0:
            return False
        try:
            self._sock.sendmsg([W.header(W.KIND_DATA, src, dst), payload])
        except BlockingIOError:
            self._socket_full = True
            self.socket_full += 1
            return False
        except OSError as exc:
            self.mark_down(f"lost the amplink service: {exc}")
            raise LinkDown(str(self.down)) from None
        self._credits -= 1
        self.frames_out += 1
        return True

    def tx_available(self) -> bool:
        if self._credits <= 0:
            return False
        if self._socket_full:  # rare: the service reads slower than a window fills
            poller = select.poll()
            poller.register(self._sock, select.POLLOUT)
            self._socket_full = not poller.poll(0)
        return not self._socket_full

    # -- endpoints -----------------------------------------------------------------------------
    def open_endpoint(self, addr: int | None, name: str | None, dst: int) -> int:
        """Ask the service for an endpoint (a bounded request; the link's lock is held)."""
        if name is None and dst == RPMSG_ADDR_ANY:
            raise AccessDenied(f"{self.processor}: an endpoint of a service client belongs to "
                               "a channel: give the channel's name or remote address")
        if self.down is not None:
            raise LinkDown(str(self.down))
        answer = self._requests.call(
            "open", {"name": name, "addr": addr,
                     "dst": None if dst == RPMSG_ADDR_ANY else dst},
            self.timeout, stash=self._set_aside)
        try:
            got = W.address(answer, "addr")
            got_dst = W.address(answer, "dst")
            got_name = W.field(answer, "name", str)
            rights = W.field(answer, "rights", list)
            if not all(r in W.RIGHTS for r in rights) or (addr is not None and got != addr):
                raise W.FrameError(f"rights {rights!r}, address {got!r}")
        except W.FrameError as exc:
            raise _protocol(self._requests.where, f"answer to open: {exc}") from None
        assert got is not None and got_dst is not None
        self._opened[got] = _Opened(got_name, got_dst, frozenset(rights))
        return got

    def _set_aside(self, frame: W.Frame) -> None:
        if frame.kind == W.KIND_DATA and len(self._inbox) >= MAX_INBOX:
            self.dropped_waiting += 1
            self._credit(frame.c, frame.d)
            return
        self._inbox.append(frame)

    def close_endpoint(self, addr: int) -> None:
        if self._opened.pop(addr, None) is None or self.down is not None:
            return
        try:
            self._requests.unawaited.add(self._requests.send("close", {"addr": addr}))
        except LinkDown:
            pass  # the service is gone: it released the endpoint already

    def rights(self, addr: int) -> frozenset[str]:
        """The rights of this client's endpoint ``addr`` (empty if it is not one)."""
        opened = self._opened.get(addr)
        return frozenset() if opened is None else opened.rights

    # -- notifications -------------------------------------------------------------------------
    def arm(self, *, rx: bool, tx: bool) -> bool:
        # The service sends a frame for every change, and the waiter's epoll watches the
        # socket level-triggered: a frame there wakes the sleeper at once. Only frames set
        # aside (no syscall) are work that epoll would not show.
        return (rx and bool(self._inbox)) or (tx and self.tx_available())

    def disarm(self) -> None:
        pass

    # -- state ---------------------------------------------------------------------------------
    def statistics(self) -> Mapping[str, Any]:
        return {"kind": "service", "processor": self.processor, "link": self.index,
                "watch": self.watch, "credits": self._credits, "window": self.window,
                "frames_in": self.frames_in, "frames_out": self.frames_out,
                "watched": self.watched, "service_dropped": self.service_dropped,
                "dropped_waiting": self.dropped_waiting, "refused": self.refused,
                "socket_full": self.socket_full, "protocol_faults": self.protocol_faults}

    def close(self) -> None:
        self.waiter.close()
        self._sock.close()  # the service releases everything this client held


def endpoint_socket(root: Path | str | None = None) -> Path:
    """The service's endpoint socket in ``root`` (default: the runtime directory)."""
    return Path(root if root is not None else runtime_dir()) / W.ENDPOINT_SOCKET


def connect_link(processor: str, *, root: Path | str | None = None, link: int = 0,
                 watch: bool = False, timeout: float = DEFAULT_TIMEOUT,
                 **link_options: Any) -> Link:
    """A :class:`~amplink.link.Link` to link ``link`` of ``processor`` (its name or its
    remoteprocN device), served by the amplink service of ``root`` (default: the
    per-user runtime directory, $AMPLINK_RUNTIME_DIR). ``link_options`` go to the Link."""
    backend = ServiceBackend.connect(endpoint_socket(root), processor, link=link, watch=watch,
                                     timeout=timeout)
    link_options.setdefault("name", f"{processor}@service")
    try:
        return Link(backend, **link_options)
    except BaseException:
        backend.close()
        raise


def service_status(root: Path | str | None = None, *,
                   timeout: float = DEFAULT_TIMEOUT) -> list[ProcessorStatus]:
    """What the service of ``root`` serves, as far as this client may see it."""
    path = endpoint_socket(root)
    sock = connect_socket(path, timeout)
    try:
        answer = Requests(sock, str(path)).call("status", {}, timeout)
    finally:
        sock.close()
    items = answer.get("processors")
    if not isinstance(items, list) or len(items) > 4096:
        raise _protocol(str(path), "status: 'processors' is not a list")
    return [from_json(ProcessorStatus, item, f"processors[{i}]") for i, item in enumerate(items)]
