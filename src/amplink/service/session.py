"""One client connection of the endpoint service: what goes out to it, and its credits.

Frames for a client are written from several threads: the service's I/O thread
(answers, announcements) and the processor links' dispatcher threads (messages). None of
them ever blocks on a client: a frame goes out at once if the socket takes it, else
into the client's queue, which the I/O thread writes when the socket is writable. The
queue is bounded: past :data:`MAX_QUEUED` frames, messages for that client are dropped
and counted (the client learns the count with its next frame), so a client that does
not read costs only itself. A client that does not even read its answers and events
(:data:`MAX_CONTROL_EXTRA` more) is disconnected.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..rpmsg.wire import RPMSG_NS_ADDR, RPMSG_NS_CREATE, RPMSG_NS_DESTROY, NameServiceMessage
from ..transports import service_wire as W
from .buffers import ClientBuffers
from .policy import Peer

if TYPE_CHECKING:
    from .relay import ClientEndpoint, ServedLink

log = logging.getLogger(__name__)

#: messages queued for a client that does not read; beyond, new ones are dropped
MAX_QUEUED = 1024
#: answers, events and credits may exceed that by this much; beyond, the client is cut off
MAX_CONTROL_EXTRA = 256
#: denials logged per client at WARNING (the rest at DEBUG: a hostile client floods)
LOGGED_DENIALS = 10


class Session:
    """One connected client (see the module docstring).

    ``want_write(session)`` asks the I/O thread to write the queue (or to drop the
    session, if :attr:`broken`). The I/O thread owns the socket's reading side,
    :attr:`endpoints` (with the served link's lock) and :attr:`pending` (with its TX lock).
    """

    def __init__(self, sock: socket.socket, peer: Peer, sid: int, window: int,
                 want_write: Callable[[Session], None]) -> None:
        self.sock = sock
        self.peer = peer
        self.id = sid
        self.window = window
        self._want_write = want_write
        self._lock = threading.Lock()
        self._out: deque[bytes] = deque()
        self.closed = False
        #: why writing to the client failed (the I/O thread then drops the session)
        self.broken: str | None = None
        # attachment (set by the I/O thread)
        self.served: ServedLink | None = None
        self.processor = ""
        self.link_index = 0
        self.watch = False
        #: this client's endpoints by address (guarded by the served link's lock)
        self.endpoints: dict[int, ClientEndpoint] = {}
        #: its messages waiting for a transmit buffer (guarded by the served link's TX lock)
        self.pending: deque[tuple[ClientEndpoint, bytes]] = deque()
        #: the buffers it lent to the processor by reference
        self.buffers = ClientBuffers()
        # counters
        self.dropped = 0      # messages for it dropped because it did not read
        self.owed = 0         # credits to return
        self.outstanding = 0  # its DATA frames whose credit was not returned yet
        self.refused = 0
        self.denials = 0

    @property
    def queued(self) -> int:
        return len(self._out)

    def describe(self) -> str:
        return f"client {self.id} ({self.peer.describe()})"

    # -- output ------------------------------------------------------------------------------
    def post_data(self, src: int, dst: int, payload: bytes | memoryview, *,
                  watched: bool = False) -> bool:
        """Queue (or send) one message for the client; False if it was dropped."""
        with self._lock:
            if self.closed:
                return False
            if len(self._out) >= MAX_QUEUED:
                self.dropped += 1
                return False
            credits, self.owed = self.owed, 0
            self.outstanding -= credits
            head = W.header(W.KIND_DATA, src, dst, credits, self.dropped & W.U32,
                            W.FLAG_WATCHED if watched else 0)
            if not self._out and self._send_now([head, payload]):
                return True
            self._out.append(head + bytes(payload))
            first = len(self._out) == 1
        if first:
            self._want_write(self)
        return True

    def post(self, packet: bytes) -> None:
        """Queue (or send) a frame that must not be dropped: an answer, an event."""
        with self._lock:
            if self.closed:
                return
            if len(self._out) >= MAX_QUEUED + MAX_CONTROL_EXTRA:
                self._break("it does not read what the service sends")
                return
            if not self._out and self._send_now([packet]):
                return
            self._out.append(packet)
            first = len(self._out) == 1
        if first:
            self._want_write(self)

    def post_json(self, kind: int, message: dict[str, Any], a: int = 0) -> None:
        try:
            packet = W.encode_json(kind, message, a)
        except ValueError as exc:  # an answer too large to send: say so instead
            packet = W.encode_json(kind, {"ok": False, "errno": errno.EMSGSIZE,
                                          "error": str(exc)}, a)
        self.post(packet)

    def post_event(self, event: str, **fields: Any) -> None:
        self.post_json(W.KIND_EVENT, {"event": event, **fields})

    def post_announcement(self, name: str, addr: int, *, create: bool) -> None:
        """An rpmsg name-service message, as if the processor had sent it to us."""
        ns = NameServiceMessage(name, addr, RPMSG_NS_CREATE if create else RPMSG_NS_DESTROY)
        self.post_data(addr, RPMSG_NS_ADDR, ns.encode())

    def _send_now(self, parts: list[Any]) -> bool:
        """Send at once (lock held, queue empty); False if the socket is full."""
        try:
            self.sock.sendmsg(parts)
        except BlockingIOError:
            return False
        except OSError as exc:
            self._break(f"cannot write to it: {exc}")
        return True

    def _break(self, why: str) -> None:  # lock held
        if self.broken is None and not self.closed:
            self.broken = why
            self._out.clear()
            self._want_write(self)  # the I/O thread drops a broken session

    def flush(self) -> bool:
        """Write the queue (the I/O thread, socket writable); True once it is empty."""
        with self._lock:
            out = self._out
            while out:
                try:
                    self.sock.send(out[0])
                except BlockingIOError:
                    return False
                except OSError as exc:
                    self._break(f"cannot write to it: {exc}")
                    return True
                out.popleft()
            return True

    # -- credits -----------------------------------------------------------------------------
    def took(self) -> bool:
        """A DATA frame came from the client; False if it had no credit for it."""
        with self._lock:
            self.outstanding += 1
            return self.outstanding <= self.window

    def owe(self, count: int = 1) -> None:
        """``count`` of its messages were passed on (or refused): their credits go back,
        with its next message or, once half a window is owed, in a CREDIT frame."""
        with self._lock:
            self.owed += count
            if self.owed < max(1, self.window // 2) or self.closed:
                return
            credits, self.owed = self.owed, 0
            self.outstanding -= credits
            packet = W.header(W.KIND_CREDIT, c=credits, d=self.dropped & W.U32)
        self.post(packet)

    # -- end ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection (the I/O thread; the client sees the end of the stream)."""
        with self._lock:
            self.closed = True
            self._out.clear()
        self.sock.close()
