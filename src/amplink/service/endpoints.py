"""The endpoint service: client programs open channels of the service's processors.

The supervisor (:mod:`.supervisor`) holds the processors; this serves their links on a
Unix ``SOCK_SEQPACKET`` socket (the protocol: :mod:`amplink.transports.service_wire`;
the client: :mod:`amplink.transports.service`). Every request is checked against the
:class:`~.policy.Policy` with the client's credentials; a refusal is EACCES, and logged.

One I/O thread accepts clients, reads their frames and answers their requests (none of
which waits for a processor: attach, open, close and status are table operations), and
writes what could not be written at once. Messages from processors reach clients from
the links' own dispatcher threads (:mod:`.relay`), so no message waits for this thread
on its way back. Any processor with a ``links`` list of :class:`~amplink.link.Link`
(simulated and OpenAMP-profile ones) or one ``link`` (a real kernel's ``/dev/rpmsg*``,
:class:`~amplink.platforms.linux.LinuxRemoteProc`) is served, see :func:`links_of`; the
service attaches to each link when it comes up (processor events, and a periodic look)
and tells the clients when it goes down.

Hostile clients cost only themselves: frames are bounded (a longer one, or one carrying
file descriptors, which are closed at once, is a typed error and the end of the
connection), a client that sends without credit is disconnected, the clients of one
user are limited, and nothing a client sends is used before it is checked.
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import errno
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from .._unix import listen_unix
from ..errors import AmplinkError, LinkDown
from ..link.runtime import Link
from ..remoteproc.api import RemoteProcessor
from ..rpmsg.wire import RPMSG_NAME_SIZE
from ..transports import service_wire as W
from ..transports.service import queued_bytes
from ..transports.service_status import ClientStatus, LinkStatus, ProcessorStatus, to_json
from .buffers import BufferRefusal, header_of
from .policy import Peer, Policy, peer_of
from .relay import ServedLink
from .session import LOGGED_DENIALS, Session

log = logging.getLogger(__name__)

#: credits (messages in flight) per client
WINDOW = 64
#: clients at once, and of one user other than the owner
MAX_SESSIONS = 256
MAX_SESSIONS_PER_USER = 32
#: endpoints one client may hold, links one processor may have served
MAX_ENDPOINTS = 64
MAX_LINKS = 16
#: frames read from one client per turn (the others get theirs)
READ_BATCH = 64
#: how often the links' health is looked at without an event, and how often processors
#: without a served link are asked for one
TICK = 0.1
FULL_LOOK = 1.0
STOP_TIMEOUT = 5.0
_FD_SPACE = socket.CMSG_SPACE(array.array("i").itemsize)
# plain ints: the flags are IntFlag members, whose operators are slow on the hot path
_MSG_TRUNC = int(socket.MSG_TRUNC)
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
_MSG_CMSG_CLOEXEC = int(socket.MSG_CMSG_CLOEXEC)
_REQUEST = bytes([W.KIND_REQUEST])
#: requests about buffers lent by reference (see .buffers): they wait for the firmware
_BUFFER_OPS = ("attach_buffer", "detach_buffer")
_EPOLLOUT = int(select.EPOLLOUT)
_READABLE = int(select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR)


class ProcessorDirectory(Protocol):
    """Where the service finds its processors (the supervisor's model)."""

    def entries(self) -> list[tuple[str, RemoteProcessor]]:
        """(remoteprocN, processor) of every processor, in device order."""
        ...


def links_of(rproc: RemoteProcessor) -> list[Link]:
    """The links a processor has now: its ``links`` (a simulated or OpenAMP-profile one),
    else its one ``link`` if it has one (a real kernel's /dev/rpmsg*:
    :attr:`~amplink.platforms.linux.LinuxRemoteProc.link`), else none."""
    links = getattr(rproc, "links", None)
    if links is not None:
        return list(links)
    if isinstance(getattr(type(rproc), "link", None), property):
        try:
            return [rproc.link]  # type: ignore[attr-defined]
        except (AmplinkError, OSError):
            return []  # not running, or no rpmsg device (yet)
    return []


class _Refusal(Exception):
    """A request is refused with ``err`` (the message goes to the client)."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


class EndpointService:
    """Serves the links of ``directory``'s processors on ``root``/.endpoints."""

    def __init__(self, root: Path, policy: Policy, directory: ProcessorDirectory, *,
                 window: int = WINDOW) -> None:
        self.path = Path(root) / W.ENDPOINT_SOCKET
        self.policy = policy
        self.directory = directory
        self.window = window
        self._listener: socket.socket | None = None
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lock = threading.Lock()  # the two sets below
        self._want_write: set[Session] = set()
        self._dirty: set[RemoteProcessor] = set()
        self._sessions: dict[int, Session] = {}  # by fd
        self._served: dict[tuple[RemoteProcessor, int], ServedLink] = {}
        self._unsubscribe: dict[RemoteProcessor, Callable[[], None]] = {}
        self._next_id = 1
        self._queued = array.array("i", [0])
        self._stopping = False
        #: the I/O thread died of a fault of ours (the supervisor starts a new service)
        self.failed = False
        self._thread: threading.Thread | None = None

    # -- life ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Listen on the socket and start the I/O thread."""
        self.path.unlink(missing_ok=True)
        listener = listen_unix(self.path, 64, kind=socket.SOCK_SEQPACKET,
                               mode=0o666 if self.policy.grants_others else 0o600)
        listener.setblocking(False)
        self._listener = listener
        self._epoll.register(listener.fileno(), select.EPOLLIN)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._thread = threading.Thread(target=self._run, name="amplink-service-io", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Disconnect every client (they get LinkDown) and stop serving; the processors
        are the supervisor's to stop."""
        self._stopping = True
        self._wake()
        if self._thread is None:
            if self._wake_w >= 0:  # never started: only the fds to close
                self._shutdown()
        else:
            self._thread.join(STOP_TIMEOUT)
            if self._thread.is_alive():
                log.warning("the endpoint service did not stop within %s s", STOP_TIMEOUT)
        for unsubscribe in self._unsubscribe.values():
            unsubscribe()
        self._unsubscribe.clear()

    def _wake(self) -> None:
        with self._lock:  # never write to a closed (perhaps reused) fd number
            if self._wake_w >= 0:
                with contextlib.suppress(BlockingIOError):
                    os.write(self._wake_w, b"w")

    @property
    def session_count(self) -> int:
        """Clients connected now."""
        return len(self._sessions)

    # -- processors ---------------------------------------------------------------------------
    def watch_processor(self, rproc: RemoteProcessor) -> None:
        """Serve ``rproc``'s links whenever it has them (call when it is added)."""
        self._unsubscribe[rproc] = rproc.subscribe(lambda _event: self._mark_dirty(rproc))
        self._mark_dirty(rproc)

    def forget_processor(self, rproc: RemoteProcessor) -> None:
        """``rproc`` is removed: its clients get LinkDown."""
        unsubscribe = self._unsubscribe.pop(rproc, None)
        if unsubscribe is not None:
            unsubscribe()
        self._mark_dirty(rproc)

    def _mark_dirty(self, rproc: RemoteProcessor) -> None:
        with self._lock:
            self._dirty.add(rproc)
        self._wake()

    def _reconcile(self, rproc: RemoteProcessor, dev: str | None) -> None:
        """Serve the links ``rproc`` has up; tell the clients of the others."""
        links = links_of(rproc)[:MAX_LINKS] if dev else []
        for (owner, index), served in list(self._served.items()):
            if owner is not rproc:
                continue
            link = links[index] if index < len(links) else None
            if served.down is not None or link is not served.link or not link.is_up:
                del self._served[(owner, index)]
                served.fail(str(served.link.backend.down or "") or
                            ("removed" if dev is None else str(rproc.state)))
                served.stop()
                for session in served.sessions:  # that run's buffers are detached
                    _release_buffers(session)
        for index, link in enumerate(links):
            if link.is_up and (rproc, index) not in self._served:
                served = ServedLink(rproc.name, index, link, self._visible, owner=rproc)
                served.start()
                self._served[(rproc, index)] = served
                log.info("%s: serving link %d to clients", rproc.name, index)

    def _look(self, *, everyone: bool = False) -> None:
        """Reconcile the processors that changed, the links that went down quietly and,
        with ``everyone``, the processors not served (whose link may have come without
        an event, as a kernel's rpmsg device does)."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        entries = self.directory.entries()
        devs = {id(rproc): dev for dev, rproc in entries}
        if everyone:
            served = {id(rproc) for rproc, _ in self._served}
            dirty |= {rproc for _, rproc in entries if id(rproc) not in served}
        stale = {rproc for (rproc, _), link in self._served.items()
                 if link.down is not None or not link.link.is_up}
        for rproc in dirty | stale:
            try:
                self._reconcile(rproc, devs.get(id(rproc)))
            except Exception:  # noqa: BLE001 - logged: one processor's fault, not the service's
                log.exception("%s: serving its links failed", rproc.name)

    # -- the I/O thread -----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            next_look = next_full_look = 0.0
            assert self._listener is not None
            listener, wake, sessions = self._listener.fileno(), self._wake_r, self._sessions
            while not self._stopping:
                for fd, mask in self._epoll.poll(TICK):
                    session = sessions.get(fd)
                    if session is not None:
                        self._serve_session(session, mask)
                    elif fd == listener:
                        self._accept()
                    elif fd == wake:
                        with contextlib.suppress(BlockingIOError):
                            os.read(wake, 4096)
                if self._want_write:
                    self._service_writers()
                now = time.monotonic()
                if self._dirty or now >= next_look:
                    everyone = now >= next_full_look
                    self._look(everyone=everyone)
                    next_look = now + TICK
                    if everyone:
                        next_full_look = now + FULL_LOOK
        except Exception:  # noqa: BLE001 - logged; the supervisor starts a new service
            log.exception("the endpoint service failed: its clients are disconnected")
            self.failed = True
        finally:
            self._shutdown()

    def _serve_session(self, session: Session, mask: int) -> None:
        """Write what waits for ``session`` and read what it sent. A fault of ours met
        while serving one client costs that client its connection, not every client
        theirs."""
        try:
            if mask & _EPOLLOUT and session.flush():
                self._interest(session, write=False)
            if mask & _READABLE and not session.closed:
                self._read(session)
        except Exception:  # noqa: BLE001 - logged; the service goes on for the others
            log.exception("serving %s failed: disconnecting it", session.describe())
            self._protocol_error(session, errno.EIO, "the service failed to serve it "
                                                     "(its log says why)")

    def _shutdown(self) -> None:
        if self._listener is not None:
            self.path.unlink(missing_ok=True)
            self._listener.close()
        for session in list(self._sessions.values()):
            self._drop(session, "the service is stopping")
        for served in self._served.values():
            served.stop()
        self._served.clear()
        self._epoll.close()
        with self._lock:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1

    def _service_writers(self) -> None:
        with self._lock:
            writers, self._want_write = self._want_write, set()
        for session in writers:
            if session.broken is not None:
                self._drop(session, session.broken)
            elif not session.closed:
                self._interest(session, write=True)

    def _interest(self, session: Session, *, write: bool) -> None:
        with contextlib.suppress(ValueError, OSError):  # closed meanwhile
            self._epoll.modify(session.sock.fileno(), select.EPOLLIN | (_EPOLLOUT if write else 0))

    def _ask_write(self, session: Session) -> None:
        with self._lock:
            self._want_write.add(session)
        self._wake()

    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(16):
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of fds: the client waits in the backlog
                log.warning("cannot accept a client: %s", exc)
                return
            try:
                peer = peer_of(sock)
            except OSError as exc:
                log.warning("a client without credentials refused: %s", exc)
                sock.close()
                continue
            why = self._too_many(peer)
            if why is not None:
                with contextlib.suppress(OSError):
                    sock.setblocking(False)
                    sock.send(W.encode_json(W.KIND_EVENT, {"event": "error", "errno": errno.EUSERS,
                                                           "error": why}))
                sock.close()
                continue
            sock.setblocking(False)
            session = Session(sock, peer, self._next_id, self.window, self._ask_write)
            self._next_id += 1
            self._sessions[sock.fileno()] = session
            self._epoll.register(sock.fileno(), select.EPOLLIN)
            log.debug("%s connected", session.describe())

    def _too_many(self, peer: Peer) -> str | None:
        if len(self._sessions) >= MAX_SESSIONS:
            return f"the service serves {MAX_SESSIONS} clients already: retry later"
        if not self.policy.is_owner(peer):
            mine = sum(1 for s in self._sessions.values() if s.peer.uid == peer.uid)
            if mine >= MAX_SESSIONS_PER_USER:
                return f"uid {peer.uid} has {MAX_SESSIONS_PER_USER} connections already"
        return None

    def _drop(self, session: Session, why: str) -> None:
        """Disconnect ``session``; everything it held is released."""
        if session.closed:
            return
        log.debug("%s disconnected: %s", session.describe(), why)
        fd = session.sock.fileno()
        with contextlib.suppress(ValueError, OSError):
            self._epoll.unregister(fd)
        self._sessions.pop(fd, None)
        session.close()
        if session.served is not None:
            session.served.detach(session)
        _release_buffers(session)

    def _protocol_error(self, session: Session, err: int, why: str) -> None:
        log.warning("%s: %s: disconnected", session.describe(), why)
        session.post_event("error", errno=err, error=why)
        self._drop(session, why)

    # -- reading ------------------------------------------------------------------------------
    def _read(self, session: Session) -> None:
        sock = session.sock
        for n in range(READ_BATCH):
            if n and not queued_bytes(sock, self._queued):
                return  # cheaper than a read that fails; the first read sees an end
            try:
                packet, ancillary, flags, _ = sock.recvmsg(W.MAX_FRAME + 1, _FD_SPACE,
                                                           _MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._drop(session, f"read failed: {exc}")
                return
            fds = _fds(ancillary)
            if flags & _MSG_CTRUNC or len(fds) > 1 or (fds and packet[:1] != _REQUEST):
                _close(fds)  # (what did not fit the ancillary buffer the kernel closed)
                self._protocol_error(session, errno.EBADF, "it sent file descriptors, but "
                                                           "only attach_buffer takes one")
                return
            if not packet:
                self._drop(session, "it closed the connection")
                return
            if flags & _MSG_TRUNC or len(packet) > W.MAX_FRAME:
                self._protocol_error(session, errno.EMSGSIZE, f"a frame longer than "
                                                              f"{W.MAX_FRAME} bytes")
                return
            if len(packet) >= W.HEADER_SIZE and packet[0] == W.KIND_DATA and not any(
                    packet[1:4]):  # the common case, without building a Frame
                _, _, _, src, dst, _, _ = W.HEADER.unpack_from(packet)
                if not self._data(session, src, dst, packet[W.HEADER_SIZE:]):
                    return
                continue
            try:
                frame = W.decode(packet)
            except W.FrameError as exc:
                _close(fds)
                self._protocol_error(session, errno.EPROTO, f"a malformed frame: {exc}")
                return
            if frame.kind == W.KIND_REQUEST:
                self._request(session, frame, fds[0] if fds else None)
            else:
                self._protocol_error(session, errno.EPROTO, f"a frame of kind {frame.kind} "
                                                            "from a client")
                return
            if session.closed:
                return

    def _data(self, session: Session, src: int, dst: int, payload: bytes) -> bool:
        """A message from the client; False if the client was disconnected."""
        if not session.took():
            self._protocol_error(session, errno.EPROTO, f"it sent more than its window of "
                                                        f"{self.window} messages")
            return False
        served = session.served
        if served is None:
            self._protocol_error(session, errno.ENOTCONN, "a message before attach")
            return False
        ce = session.endpoints.get(src)
        if ce is not None and served.down is None and dst == ce.channel.dst and (
                "send" in ce.rights):
            served.send(ce, payload)
            return True
        why: tuple[int, str]
        if served.down is not None:
            why = errno.ENOTCONN, f"{served.processor}: {served.down}"
        elif ce is None:
            why = errno.ENOENT, f"0x{src:x} is not an endpoint of this client"
        elif "send" not in ce.rights:
            why = errno.EACCES, f"channel {ce.channel.name!r}: no 'send' right"
        else:
            why = errno.EACCES, (f"channel {ce.channel.name!r}: 0x{src:x} may only send "
                                 f"to 0x{ce.channel.dst:x}")
        if why[0] == errno.EACCES:
            self._deny(session, f"send on {served.processor}: {why[1]}")
        served.refuse(session, ce.channel if ce else None, why[0], why[1], src)
        session.owe()
        return True

    def _deny(self, session: Session, what: str) -> None:
        session.denials += 1
        level = logging.WARNING if session.denials <= LOGGED_DENIALS else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(level, "denied %s: %s%s", session.describe(), what,
                    " (further denials of this client at debug level)"
                    if session.denials == LOGGED_DENIALS else "")

    # -- requests -----------------------------------------------------------------------------
    def _request(self, session: Session, frame: W.Frame, fd: int | None) -> None:
        op = "?"
        try:
            try:
                message = W.decode_json(frame.body)
                op = W.field(message, "op", str)
            except W.FrameError:
                if fd is not None:
                    _close([fd])
                raise
            if op in _BUFFER_OPS:
                self._buffer_request(session, frame.a, op, message, fd)  # takes the fd
                return
            if fd is not None:
                _close([fd])
                self._protocol_error(session, errno.EBADF, f"a file descriptor with {op!r}")
                return
            handler = self._ops.get(op)
            if handler is None:
                raise _Refusal(errno.EINVAL, f"unknown operation {op[:40]!r} (known: "
                                             f"{', '.join([*self._ops, *_BUFFER_OPS])})")
            answer = {"ok": True, **handler(self, session, message)}
        except _Refusal as exc:
            if exc.errno == errno.EACCES:
                self._deny(session, f"{op}: {exc}")
            answer = {"ok": False, "errno": exc.errno, "error": str(exc)}
        except AmplinkError as exc:  # the link's refusals: AddressError, LinkDown, ...
            answer = {"ok": False, "errno": W.errno_of(exc), "error": W.describe(exc)}
        except (W.FrameError, ValueError, TypeError) as exc:
            answer = {"ok": False, "errno": errno.EINVAL, "error": f"bad {op} request: {exc}"}
        except Exception as exc:  # noqa: BLE001 - a bug costs one request, not the service
            log.exception("%s request failed", op)
            answer = {"ok": False, "errno": errno.EIO, "error": f"{op}: internal error: {exc}"}
        session.post_json(W.KIND_RESPONSE, answer, frame.a)

    def _find(self, name: str) -> tuple[str, RemoteProcessor] | None:
        for dev, rproc in self.directory.entries():
            if name in (rproc.name, dev):
                return dev, rproc
        return None

    def _visible(self, session: Session, channel: str) -> bool:
        return bool(self.policy.channel_rights(session.peer, session.processor, channel))

    def _op_status(self, session: Session, _m: dict[str, Any]) -> dict[str, Any]:
        processors = []
        for dev, rproc in self.directory.entries():
            if not self.policy.may_see(session.peer, rproc.name):
                continue
            links = tuple(served.status() for (owner, _), served in self._served.items()
                          if owner is rproc)
            if not self.policy.is_owner(session.peer):  # only the channels it may see
                def keep(channel: str, name: str = rproc.name) -> bool:
                    return bool(self.policy.channel_rights(session.peer, name, channel))
                links = tuple(_filtered(link, keep) for link in links)
            clients = tuple(_client_status(s) for s in self._sessions.values()
                            if s.served is not None and s.processor == rproc.name
                            and (self.policy.is_owner(session.peer) or s is session))
            processors.append(to_json(ProcessorStatus(rproc.name, dev, str(rproc.state),
                                                      links, clients)))
        return {"processors": processors}

    def _op_attach(self, session: Session, m: dict[str, Any]) -> dict[str, Any]:
        if W.field(m, "version", int) != W.PROTOCOL_VERSION:
            raise _Refusal(errno.EPROTO, f"this service speaks protocol {W.PROTOCOL_VERSION}")
        if session.served is not None:
            raise _Refusal(errno.EISCONN, "this connection is attached already: open another")
        name = W.field(m, "processor", str)[:64]
        index = W.field(m, "link", int)
        watch = W.field(m, "watch", bool)
        found = self._find(name)
        if not self.policy.is_owner(session.peer) and (
                found is None or not self.policy.may_see(session.peer, found[1].name)):
            # the same answer whether it exists or not: a client learns nothing it may not
            raise _Refusal(errno.EACCES, f"no processor {name!r} that uid "
                                         f"{session.peer.uid} may use")
        if found is None:
            raise _Refusal(errno.ENOENT, f"no processor called {name!r}: see `amplink ls`")
        _, rproc = found
        served = self._served.get((rproc, index))
        if served is None:
            if not 0 <= index < MAX_LINKS or index >= len(links_of(rproc)):
                raise _Refusal(errno.ENOTCONN, f"{rproc.name} is {rproc.state} and has no "
                                               f"link {index} now: boot it first")
            raise _Refusal(errno.ENOTCONN, f"{rproc.name}: link {index} is not up")
        session.processor, session.link_index, session.watch = rproc.name, index, watch
        served.attach(session)
        first, last = served.link.capabilities.address_range
        return {"mtu": served.link.mtu, "min_payload": served.link.min_payload,
                "window": self.window, "link": served.link.name,
                "address_range": [first, last],
                "buffers": hasattr(rproc, "attach") and hasattr(rproc, "buffers")}

    def _op_open(self, session: Session, m: dict[str, Any]) -> dict[str, Any]:
        served = session.served
        if served is None:
            raise _Refusal(errno.ENOTCONN, "attach to a processor first")
        if served.down is not None:
            raise LinkDown(f"{served.processor}: {served.down}")
        name = W.field(m, "name", str, optional=True)
        if name is not None and not 0 < len(name.encode()) < RPMSG_NAME_SIZE:
            raise _Refusal(errno.EINVAL, f"channel name {name[:40]!r}: 1 to "
                                         f"{RPMSG_NAME_SIZE - 1} bytes")
        addr = W.address(m, "addr", optional=True)
        dst = W.address(m, "dst", optional=True)
        if len(session.endpoints) >= MAX_ENDPOINTS:
            raise _Refusal(errno.EMFILE, f"a client may hold {MAX_ENDPOINTS} endpoints")
        state = served.find(name, dst)
        if state is None:
            raise _Refusal(errno.ENOENT, f"{served.processor} has no channel "
                                         f"{name if name is not None else hex(dst or 0)!r}")
        rights = self.policy.channel_rights(session.peer, served.processor, state.name)
        if not rights:
            raise _Refusal(errno.EACCES, f"channel {state.name!r} of {served.processor}: no "
                                         f"right for uid {session.peer.uid}")
        if session.watch and "watch" not in rights:
            raise _Refusal(errno.EACCES, f"channel {state.name!r} of {served.processor}: no "
                                         "'watch' right (open it without watch)")
        try:
            ce = served.open(session, state, rights, addr)
        except LookupError as exc:
            raise _Refusal(errno.ENOENT, str(exc)) from None
        return {"addr": ce.addr, "dst": state.dst, "name": state.name,
                "rights": sorted(rights)}

    def _op_close(self, session: Session, m: dict[str, Any]) -> dict[str, Any]:
        addr = W.address(m, "addr")
        ce = session.endpoints.get(addr or 0)
        if ce is None or session.served is None:
            raise _Refusal(errno.ENOENT, f"0x{addr:x} is not an endpoint of this client")
        session.served.close_endpoint(ce)
        return {}

    # -- buffers lent by reference (see .buffers) -------------------------------------------
    def _buffer_request(self, session: Session, rid: int, op: str, m: dict[str, Any],
                        fd: int | None) -> None:
        """attach_buffer (with one fd) or detach_buffer: checked here, carried out by a
        thread of its own (the firmware answers), answered from there."""
        try:
            work = self._buffer_work(session, op, m, fd)
        except (_Refusal, BufferRefusal, W.FrameError, ValueError) as exc:
            if fd is not None:
                _close([fd])
            err = getattr(exc, "errno", errno.EINVAL)
            if err == errno.EACCES:
                self._deny(session, f"{op}: {exc}")
            session.post_json(W.KIND_RESPONSE, {"ok": False, "errno": err, "error": str(exc)},
                              rid)
            return
        session.buffers.busy = True

        def run() -> None:
            try:
                answer = {"ok": True, **work()}
            except BufferRefusal as exc:
                answer = {"ok": False, "errno": exc.errno, "error": str(exc)}
            except (AmplinkError, OSError) as exc:
                answer = {"ok": False, "errno": W.errno_of(exc), "error": W.describe(exc)}
            except Exception:  # noqa: BLE001 - a bug costs one request
                log.exception("%s request failed", op)
                answer = {"ok": False, "errno": errno.EIO, "error": f"{op}: internal error"}
            finally:
                session.buffers.busy = False
            session.post_json(W.KIND_RESPONSE, answer, rid)

        threading.Thread(target=run, daemon=True, name=f"amplink-service-{op}").start()

    def _buffer_work(self, session: Session, op: str, m: dict[str, Any],
                     fd: int | None) -> Callable[[], dict[str, Any]]:
        """Check a buffer request; what is left to do (it waits for the firmware)."""
        served = session.served
        if served is None or served.down is not None:
            raise _Refusal(errno.ENOTCONN, "attach to a running processor first")
        if session.buffers.busy:
            raise _Refusal(errno.EBUSY, "one buffer request at a time: wait for the answer")
        if op == "detach_buffer":
            if fd is not None:
                raise _Refusal(errno.EINVAL, "detach_buffer takes no file descriptor")
            att_id = W.field(m, "id", int)

            def detach() -> dict[str, Any]:
                session.buffers.detach(att_id)
                return {}

            return detach
        if fd is None:
            raise _Refusal(errno.EINVAL, "attach_buffer needs the buffer's file descriptor "
                                         "(SCM_RIGHTS)")
        channel = W.field(m, "channel", str)[:64]
        if "send" not in self.policy.channel_rights(session.peer, served.processor, channel):
            raise _Refusal(errno.EACCES, f"{served.processor}: buffers go to a channel this "
                                         "client may send on")
        if served.find(channel, None) is None:
            raise _Refusal(errno.ENOENT, f"{served.processor} has no channel {channel!r} "
                                         "(yet?)")
        header, access = header_of(m)
        owner = served.owner
        assert owner is not None  # the service makes its served links with their owner

        def attach() -> dict[str, Any]:
            att_id, da = session.buffers.attach(owner, fd, header, access)
            return {"id": att_id, "da": da}

        return attach

    _ops: dict[str, Callable[[EndpointService, Session, dict[str, Any]], dict[str, Any]]] = {
        "status": _op_status, "attach": _op_attach, "open": _op_open, "close": _op_close,
    }


def _filtered(link: LinkStatus, keep: Callable[[str], bool]) -> LinkStatus:
    return dataclasses.replace(link, channels=tuple(c for c in link.channels if keep(c.name)))


def _client_status(session: Session) -> ClientStatus:
    pending = len(session.pending)
    return ClientStatus(
        id=session.id, pid=session.peer.pid, uid=session.peer.uid, user=session.peer.user,
        processor=session.processor, link=session.link_index, watch=session.watch,
        endpoints=len(session.endpoints), queued=session.queued, dropped=session.dropped,
        pending=pending, refused=session.refused)


def _release_buffers(session: Session) -> None:
    """Detach and close what ``session`` lent (in a thread: detaching waits for the
    firmware)."""
    if session.buffers.items:
        threading.Thread(target=session.buffers.release_all, daemon=True,
                         name="amplink-service-release").start()


def _fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The file descriptors a client passed (SCM_RIGHTS): now ours to close."""
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    return list(fds)


def _close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)

