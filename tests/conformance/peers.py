"""The far side of a conformance case, wherever it lives.

A :class:`Peer` runs the commands of :class:`peer_ops.PeerOps` on the far side's link:

* :class:`LocalPeer`: the far link is in this process; ``call`` runs a command in the
  calling thread, ``start`` in a worker thread.
* :class:`AgentPeer`: the far link belongs to the peer agent firmware
  (``peer_agent.py``) in a simulated processor; commands and replies travel over a Unix
  socket of their own (never the link under test), each executed in a thread of the
  agent, so that a long command (sending 1000 messages) runs while the case drives its
  side.

Errors raised by a command come back as the same amplink exception type.
"""

from __future__ import annotations

import builtins
import itertools
import os
import shutil
import socket
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from backends import Side
from peer_ops import PeerOps

import amplink.errors as amplink_errors
from amplink.errors import LinkDown, NotSupported
from amplink.link import Link
from amplink.notify.waiter import wait_readable
from amplink.rpmsg.wire import RPMSG_ADDR_ANY

#: how long a peer command may take by default (each has its own, shorter, waits)
CALL_TIMEOUT = 30.0


class Peer(ABC):
    """The far side of a harness (see the module docstring)."""

    #: the far side's role
    role: Side

    @abstractmethod
    def start(self, op: str, **kwargs: Any) -> Future[Any]:
        """Run command ``op`` of :class:`PeerOps` without waiting; its future."""

    def call(self, op: str, **kwargs: Any) -> Any:
        """Run command ``op`` and return its result (or raise its error)."""
        return self.start(op, **kwargs).result(CALL_TIMEOUT)

    @abstractmethod
    def die(self) -> float:
        """Make the peer disappear abruptly; returns ``time.monotonic()`` taken just
        before (the moment of death, for latency measurements). NotSupported if the
        harness cannot."""

    @abstractmethod
    def close(self) -> None:
        """Release the peer (after the harness closed the links)."""

    # -- typed shorthands for the commands ---------------------------------------------------
    def create(self, name: str | None = None, *, addr: int = RPMSG_ADDR_ANY,
               dst: int = RPMSG_ADDR_ANY, announce: bool = False, echo: bool = False) -> int:
        return self.call("create", name=name, addr=addr, dst=dst, announce=announce, echo=echo)

    def send(self, addr: int, data: bytes, dst: int | None = None, timeout: float = 10.0) -> None:
        self.call("send", addr=addr, data=data, dst=dst, timeout=timeout)

    def recv(self, addr: int, timeout: float = 5.0) -> tuple[bytes, int]:
        return self.call("recv", addr=addr, timeout=timeout)  # type: ignore[no-any-return]

    def recv_many(self, addr: int, count: int, timeout: float = 5.0) -> list[tuple[bytes, int]]:
        return self.call("recv_many", addr=addr, count=count, timeout=timeout)  # type: ignore

    def garbage(self, kind: str) -> dict[str, int]:
        return self.call("garbage", kind=kind)  # type: ignore[no-any-return]

    def statistics(self) -> dict[str, Any]:
        return self.call("statistics")  # type: ignore[no-any-return]


class LocalPeer(Peer):
    """The far link lives in this process. ``kill`` (if given) makes it vanish from the
    wire; ``kill_note`` says why it cannot otherwise."""

    def __init__(self, link: Link, *, role: Side, dispatch: str,
                 kill: Callable[[], None] | None = None, kill_note: str = "") -> None:
        self.role = role
        self.link = link
        self.ops = PeerOps(link, dispatch=dispatch)
        self._kill = kill
        self._kill_note = kill_note
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="conformance-peer")

    def start(self, op: str, **kwargs: Any) -> Future[Any]:
        return self._pool.submit(self._method(op), **kwargs)

    def call(self, op: str, **kwargs: Any) -> Any:
        return self._method(op)(**kwargs)

    def _method(self, op: str) -> Callable[..., Any]:
        if op.startswith("_") or not hasattr(PeerOps, op):
            raise ValueError(f"no peer command {op!r}")
        return getattr(self.ops, op)  # type: ignore[no-any-return]

    def die(self) -> float:
        if self._kill is None:
            raise NotSupported(f"this peer cannot be killed: {self._kill_note}")
        t0 = time.monotonic()
        self._kill()
        return t0

    def close(self) -> None:
        self.ops.shutdown()
        # the links are closed by now: commands still blocked in them have ended
        self._pool.shutdown(wait=True, cancel_futures=True)


# -- the agent --------------------------------------------------------------------------------
def _rebuild(name: str, message: str) -> BaseException:
    """The exception the agent raised, as the same type here where possible."""
    cls = getattr(amplink_errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, amplink_errors.AmplinkError)):
        cls = getattr(builtins, name, None)
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            return RuntimeError(f"the peer agent raised {name}: {message}")
    try:
        return cls(message)  # type: ignore[no-any-return]
    except TypeError:
        return RuntimeError(f"the peer agent raised {name}: {message}")


class ControlListener:
    """Where the agent connects: a Unix socket in a private temporary directory."""

    def __init__(self, prefix: str) -> None:
        self.dir = tempfile.mkdtemp(prefix=prefix)
        self.path = os.path.join(self.dir, "control.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(1)

    def accept(self, timeout: float) -> socket.socket:
        if not wait_readable(self.sock, timeout):
            raise TimeoutError(f"the peer agent did not connect to {self.path} in {timeout} s")
        conn, _ = self.sock.accept()
        return conn

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class AgentPeer(Peer):
    """The peer agent firmware in a simulated processor, driven over the connected
    socket ``sock`` (the peer owns it from now on).

    ``kill`` kills the firmware process (SIGKILL).
    """

    role: Side = "device"

    def __init__(self, sock: socket.socket, kill: Callable[[], None]) -> None:
        self._sock = sock
        # Connection frames and pickles; it gets a duplicate fd so that shutting the
        # socket down can end the reader's blocked read before the fds are closed
        self._conn = Connection(os.dup(sock.fileno()))
        self._kill = kill
        self._ids = itertools.count()
        self._pending: dict[int, Future[Any]] = {}
        self._lock = threading.Lock()
        self._gone: str | None = None
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name="conformance-agent-reader")
        self._reader.start()

    def start(self, op: str, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._gone is not None:
                raise LinkDown(f"the peer agent is gone ({self._gone})")
            req = next(self._ids)
            self._pending[req] = future
            try:
                self._conn.send((req, op, kwargs))
            except OSError as exc:
                del self._pending[req]
                raise LinkDown(f"the peer agent is gone ({exc})") from None
        return future

    def _read(self) -> None:
        why = "its control connection closed"
        try:
            while True:
                req, ok, value = self._conn.recv()
                with self._lock:
                    future = self._pending.pop(req, None)
                if future is None:
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(_rebuild(*value))
        except (EOFError, OSError) as exc:
            if not isinstance(exc, EOFError):
                why = str(exc)
        finally:
            with self._lock:
                self._gone = why
                pending, self._pending = self._pending, {}
            for future in pending.values():
                future.set_exception(LinkDown(f"the peer agent is gone ({why})"))

    def exit(self, code: int = 3) -> None:
        """Make the agent leave with ``os._exit(code)`` (it answers first)."""
        self.call("exit", code=code)

    def die(self) -> float:
        t0 = time.monotonic()
        self._kill()
        return t0

    @property
    def alive(self) -> bool:
        return self._gone is None

    def close(self) -> None:
        """Hang up: the agent's main loop ends, and the firmware with it."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the agent is gone already
        self._reader.join(5.0)
        self._conn.close()
        self._sock.close()
