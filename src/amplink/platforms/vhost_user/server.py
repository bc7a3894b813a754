"""Serving firmware as a vhost-user rpmsg device on a Unix socket, one front end at a time.

Each connection is a fresh device: a new back end, and a new firmware run (``main(link)``
called again) once the guest's driver is up. A connection that breaks the protocol is
counted and closed, and the server goes on with the next one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import stat
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from ..._unix import listen_unix
from ...errors import AmplinkError
from .backend import VhostUserBackend
from .connection import MESSAGE_TIMEOUT, Connection
from .protocol import Header
from .run import DeviceRun, FirmwareEntry, RunConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    """A snapshot of what the server saw."""

    connections: int
    protocol_errors: int
    runs_started: int
    firmware_errors: int
    last_error: str | None


def load_firmware(spec: str) -> FirmwareEntry:
    """The entry of firmware ``spec`` (module or ``.py`` path, optionally ``:function``)."""
    from ...firmware.__main__ import load_entry

    entry: FirmwareEntry = load_entry(spec)
    return entry


class VhostUserServer:
    """Listens on ``path`` and serves ``firmware`` to each front end that connects."""

    def __init__(self, path: str | os.PathLike[str], firmware: str | FirmwareEntry, *,
                 name: str = "vhost-user", args: Sequence[str] = (),
                 message_timeout: float = MESSAGE_TIMEOUT) -> None:
        self.path = os.fspath(path)
        self.firmware = load_firmware(firmware) if isinstance(firmware, str) else firmware
        self.name = name
        self.args = list(args)
        self.message_timeout = message_timeout
        self.connections = 0
        self.protocol_errors = 0
        self.runs_started = 0
        self.firmware_errors = 0
        self.last_error: str | None = None
        #: the back end of the connection being served (None between connections)
        self.backend: VhostUserBackend | None = None
        self._runs: list[DeviceRun] = []  # of the connection being served
        self._stopping = False
        self._lock = threading.Lock()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            self._remove_stale_socket()
            self.listener = listen_unix(self.path, 1)
        except BaseException:
            os.close(self._wake)
            raise

    def _remove_stale_socket(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise FileExistsError(f"{self.path} exists and is not a socket")
        os.unlink(self.path)

    # -- serving ------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Accept and serve front ends until :meth:`shutdown` (or KeyboardInterrupt)."""
        while not self._stopping:
            poller = select.poll()
            poller.register(self.listener, select.POLLIN)
            poller.register(self._wake, select.POLLIN)
            ready = {fd for fd, _ in poller.poll()}
            if self._wake in ready or self._stopping:
                return
            try:
                sock, _ = self.listener.accept()
            except OSError as exc:
                log.warning("%s: accept failed: %s", self.name, exc)
                continue
            self.serve_connection(sock)

    def serve_connection(self, sock: socket.socket) -> None:
        """Serve one connected front end until it hangs up or breaks the protocol."""
        conn = Connection(sock, message_timeout=self.message_timeout)
        backend = VhostUserBackend(self._make_run)
        with self._lock:
            self.connections += 1
            self.backend = backend
        log.info("%s: front end %d connected", self.name, self.connections)
        header: Header | None = None
        try:
            while not self._stopping:
                poller = select.poll()
                poller.register(conn.fileno(), select.POLLIN)
                poller.register(self._wake, select.POLLIN)
                kicks = backend.kick_fds_to_watch()
                for fd in kicks:
                    poller.register(fd, select.POLLIN)
                ready = {fd for fd, _ in poller.poll()}
                if self._wake in ready:
                    return
                if conn.fileno() in ready:
                    message = conn.read_message()
                    if message is None:
                        log.info("%s: the front end hung up", self.name)
                        return
                    header, payload, fds = message
                    reply = backend.handle(header, payload, fds)
                    header = None
                    if reply is not None:
                        conn.send(reply)
                elif ready & set(kicks) and backend.ready():
                    backend.start_run()
                    log.info("%s: the guest's driver is up: firmware started", self.name)
        except AmplinkError as exc:
            self._count_error(f"{type(exc).__name__}: {exc}")
            if header is not None:
                with contextlib.suppress(OSError):
                    failure = backend.failure_reply(header)
                    if failure is not None:
                        conn.send(failure)
        except OSError as exc:
            log.info("%s: connection lost: %s", self.name, exc)
        except Exception as exc:  # noqa: BLE001 - one bad connection must not end the server
            log.exception("%s: unexpected error serving the front end", self.name)
            self._count_error(f"{type(exc).__name__}: {exc}")
        finally:
            self._end_connection(backend, conn)

    def _count_error(self, text: str) -> None:
        log.warning("%s: closing the connection: %s", self.name, text)
        with self._lock:
            self.protocol_errors += 1
            self.last_error = text

    def _end_connection(self, backend: VhostUserBackend, conn: Connection) -> None:
        backend.close()
        conn.close()
        with self._lock:
            self.backend = None
            self.firmware_errors += sum(run.error is not None for run in self._runs)
            self._runs = []

    def _make_run(self, config: RunConfig) -> DeviceRun:
        run = DeviceRun(self.firmware, config, name=self.name, args=self.args)
        with self._lock:
            self.runs_started += 1
            self._runs.append(run)
        return run

    # -- control ------------------------------------------------------------------------------
    def statistics(self) -> ServerStatistics:
        with self._lock:
            return ServerStatistics(self.connections, self.protocol_errors, self.runs_started,
                                    self.firmware_errors, self.last_error)

    def shutdown(self) -> None:
        """Make :meth:`serve_forever` return (from another thread); the current
        connection is closed."""
        self._stopping = True
        with contextlib.suppress(OSError):
            os.eventfd_write(self._wake, 1)

    def close(self) -> None:
        """Stop listening and remove the socket (call after serving ended)."""
        if self.listener.fileno() < 0:
            return
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._wake)

    def __enter__(self) -> VhostUserServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
