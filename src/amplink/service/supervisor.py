"""Processors that outlive one command: the simulator's supervisor process.

``amplink boot`` starts a supervisor on demand (detached: its own session, cwd "/",
stdio on a log file) which holds simulated processors and exposes them like the
kernel's remoteproc class, in a per-user runtime directory (:func:`runtime_dir`)::

    $AMPLINK_RUNTIME_DIR | $XDG_RUNTIME_DIR/amplink | /tmp/amplink-$UID
      .control               the control socket (protocol: amplink.platforms.linux.protocol)
      remoteprocN/           state firmware name recovery coredump (kept up to date for cat)
      debug/remoteprocN/     crash, trace0 (like debugfs; trace0: the firmware's RSC_TRACE)
      coredumps/             NAME-crashN-TIME.core when coredump is enabled (kept)
      supervisor.pid         while it serves;  supervisor.log: its log
      supervisor.lock        held (flock) for its whole life; spawn.lock: serialises starts

The processors are :class:`~amplink.platforms.sim.SimRemoteProc` (the remoteproc
lifecycle: crash recovery, coredumps, the RSC_TRACE buffer; see :func:`make_sim_processor`)
or, added with the kind "rtkit" (``amplink boot --rtkit``), Apple RTKit co-processors
(:class:`~amplink.platforms.rtkit.RtkitRemoteProc`: trace0 is their syslog, and
``crashlog`` answers their last crash report); their firmware's output goes to the
supervisor's log. Plain files cannot refuse a write,
so every operation goes through the socket, which answers with the kernel's errno (see
:class:`~amplink.service.model.RemoteprocModel`);
:class:`~amplink.platforms.linux.LinuxRemoteProc` and the CLI therefore work unchanged on
this tree and on ``/sys/class/remoteproc``.

Lifetime: once its last processor is removed, the supervisor exits as soon as no client
is connected; if no processor ever comes, it exits after ``idle_grace`` seconds (the
command that started it was killed). SIGTERM / SIGINT shut every processor down first.
If the supervisor itself is killed, the firmware processes notice their host is gone
and exit, and the next start cleans up the stale files.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import functools
import logging
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

from ..handover.port import AttachedBuffer
from ..memory.buffers import SharedBuffer
from ..memory.iommu import Attachment
from ..memory.providers import allocate_buffer
from ..paths import COREDUMP_DIR, ENV_RUNTIME_DIR, PrivateDirError, private_dir, runtime_dir
from ..platforms.linux import protocol
from ..platforms.linux.attributes import DEVICE_NAME, ControlSocketTree
from ..platforms.linux.errors import (
    RprocControlError,
    SupervisorError,
    SupervisorUnavailable,
    error_from_errno,
)
from ..platforms.sim import SimRemoteProc
from ..remoteproc.api import RemoteProcessor
from ..remoteproc.core import RemoteProc
from ..remoteproc.states import RprocState
from .model import RemoteprocModel

log = logging.getLogger(__name__)

PID_FILE = "supervisor.pid"
LOCK_FILE = "supervisor.lock"
SPAWN_LOCK = "spawn.lock"
LOG_FILE = "supervisor.log"
DEBUG_DIR = "debug"
STDERR_FD = 2  # the fd itself: sys.stderr may be replaced (and have no fd) in-process
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the NUL
_PROCESSOR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_MAX_FIRMWARE = 4096
#: clients served at once; one more is refused (told EAGAIN and closed). Each buffers at
#: most one line of protocol.MAX_MESSAGE bytes (protocol.LineReader).
MAX_CLIENTS = 64
#: after a failed accept() (EMFILE, ENFILE, ENOMEM, ...): wait this long before the next
ACCEPT_BACKOFF = 0.1
#: the least time between two log lines about failed or refused connections (or updates)
ACCEPT_LOG_INTERVAL = 5.0

#: makes the processor called ``name`` (first argument) with ``firmware`` (second)
ProcessorFactory = Callable[[str, str], RemoteProcessor]
#: the kinds of processor ``add`` makes, and the default name of each (with a number)
KINDS = {"sim": "sim", "rtkit": "rtkit"}

# Started with `python -c`: spawns the supervisor in a new session and exits at once,
# so the supervisor is nobody's child (no zombie, no signal from the caller's terminal).
_LAUNCHER = (
    "import subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[1:], start_new_session=True, "
    "stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)\n"
    "print(p.pid)\n"
)


@runtime_checkable
class ReportsChannels(Protocol):
    """Optional: a processor that can list its rpmsg channels for ``amplink ls``."""

    def channels(self) -> list[tuple[str, int, int]]:
        """(name, local address, remote address) of each channel."""


@runtime_checkable
class ReportsCrashlog(Protocol):
    """Optional: a processor that keeps its last crash report (an RTKit co-processor)."""

    def crashlog(self) -> str:
        """The report of the last crash ("" if it never crashed)."""


class Channel(NamedTuple):
    """One rpmsg channel of a simulated processor, as ``amplink ls`` shows it."""

    name: str
    src: int
    dst: int


class Crashes(NamedTuple):
    """A simulated processor's crash record, as ``amplink ls`` shows it."""

    total: int
    last: str
    recovery_stopped: str


#: the largest buffer `amplink attach` allocates (memfds are sparse: untouched pages cost
#: nothing)
MAX_ATTACH = 1 << 34


def make_sim_processor(name: str, firmware: str, *, coredump_dir: Path) -> SimRemoteProc:
    """The supervisor's processors: simulated, with the remoteproc lifecycle (a missing
    firmware fails the boot with ENOENT). Crash dumps go to ``coredump_dir``; the
    firmware's stdout and stderr to the supervisor's stderr (its log)."""
    return SimRemoteProc(firmware, name=name, coredump_dir=coredump_dir, stdout=STDERR_FD)


def make_rtkit_processor(name: str, firmware: str, *, coredump_dir: Path) -> RemoteProcessor:
    """The supervisor's simulated Apple RTKit co-processors (``amplink boot --rtkit``)."""
    from ..platforms.rtkit import RtkitRemoteProc  # only where RTKit is used

    return RtkitRemoteProc(firmware, name=name, coredump_dir=coredump_dir, stdout=STDERR_FD)


# -- the runtime directory --------------------------------------------------------------
def prepare_runtime_dir(path: Path | str) -> Path:
    """Create ``path`` (mode 0700) or check that it is a directory of ours that nobody
    else can write to and short enough for the control socket; SupervisorError with what
    to do otherwise."""
    try:
        path = private_dir(path)
    except PrivateDirError as exc:
        raise SupervisorError(str(exc)) from None
    if len(os.fsencode(path / protocol.CONTROL_SOCKET)) > MAX_SOCKET_PATH:
        raise SupervisorError(f"{path} is too long for a Unix socket path: set "
                              f"{ENV_RUNTIME_DIR} to a shorter directory")
    return path


@contextlib.contextmanager
def _flock(path: Path, timeout: float) -> Iterator[int]:
    """Hold an exclusive flock on ``path``; SupervisorError after ``timeout`` seconds."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise SupervisorError(f"{path} stayed locked for {timeout} s: another "
                                          "supervisor is starting or stopping; retry") from None
                time.sleep(0.02)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # the state follows the command name, which is in parentheses
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def read_pid_file(root: Path) -> int | None:
    """The pid in ``root``/supervisor.pid, if the file exists and holds one."""
    try:
        text = (root / PID_FILE).read_text()
    except OSError:
        return None
    return int(text) if text.strip().isdigit() else None


# -- the server -------------------------------------------------------------------------
class _Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = protocol.LineReader()
        self.dev: str | None = None  # set by dev_open: this connection is /dev/remoteprocN


def _fail(err: int, message: str) -> RprocControlError:
    return error_from_errno(err, message)


class Supervisor:
    """Holds processors made by ``factory`` (and ``rtkit_factory`` for the kind "rtkit")
    and serves them on ``root``'s control socket.

    The default factories are :func:`make_sim_processor` and :func:`make_rtkit_processor`,
    dumping into ``root``/coredumps.
    """

    def __init__(self, root: Path, factory: ProcessorFactory | None = None, *,
                 rtkit_factory: ProcessorFactory | None = None,
                 idle_grace: float = 10.0, tick: float = 0.25) -> None:
        self.root = Path(root)
        dumps = self.root / COREDUMP_DIR
        self.factories: dict[str, ProcessorFactory] = {
            "sim": factory or functools.partial(make_sim_processor, coredump_dir=dumps),
            "rtkit": rtkit_factory or functools.partial(make_rtkit_processor,
                                                        coredump_dir=dumps),
        }
        self.idle_grace = idle_grace
        self.tick = tick
        self.model: RemoteprocModel | None = None
        self._clients: dict[int, _Client] = {}
        self._unsubscribe: dict[str, Callable[[], None]] = {}
        self._had_processor = False
        self._stopping = False
        self._accept_paused_until: float | None = None  # the listener is out of the selector
        self._accept_log = _RateLimitedLog(ACCEPT_LOG_INTERVAL)
        #: buffers `amplink attach` made, by (device, attachment id)
        self._attached: dict[tuple[str, int], tuple[SharedBuffer, Attachment]] = {}
        self._refresh_log = _RateLimitedLog(ACCEPT_LOG_INTERVAL)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._ops: dict[str, Callable[[_Client, dict[str, Any]], dict[str, Any] | None]] = {
            "hello": self._op_hello, "list": self._op_list, "read": self._op_read,
            "write": self._op_write, "debug_read": self._op_debug_read,
            "debug_write": self._op_debug_write, "add": self._op_add, "remove": self._op_remove,
            "channels": self._op_channels, "crashes": self._op_crashes,
            "buffers": self._op_buffers, "attach": self._op_attach, "detach": self._op_detach,
            "crashlog": self._op_crashlog,
            "dev_open": self._op_dev_open,
            "dev_write": self._op_dev_write, "dev_set_release": self._op_dev_set_release,
            "dev_get_release": self._op_dev_get_release,
        }
        assert self._ops.keys() == protocol.OPS.keys(), "the protocol table and the server differ"

    def stop(self) -> None:
        """Ask the loop to shut everything down and return (any thread, or a signal handler)."""
        self._stopping = True
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"w")

    def serve(self) -> None:
        """Serve until idle or stopped; every processor is shut down before it returns."""
        with _flock(self.root / LOCK_FILE, timeout=5.0):
            self._clean_stale_files()
            sock_path = self.root / protocol.CONTROL_SOCKET
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sel = selectors.DefaultSelector()
            try:
                listener.bind(str(sock_path))
                os.chmod(sock_path, 0o600)
                listener.listen(16)
                listener.setblocking(False)
                self.model = RemoteprocModel(self.root, self.root / DEBUG_DIR)
                _write_file(self.root / PID_FILE, f"{os.getpid()}\n")
                log.info("serving %s (pid %d)", self.root, os.getpid())
                sel.register(listener, selectors.EVENT_READ, None)
                sel.register(self._wake_r, selectors.EVENT_READ, None)
                self._loop(sel, listener)
            finally:
                sock_path.unlink(missing_ok=True)  # first: no new client from now on
                listener.close()
                for client in list(self._clients.values()):
                    self._close_client(sel, client)
                self._remove_all()
                sel.close()
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._clean_stale_files()
                (self.root / PID_FILE).unlink(missing_ok=True)  # last: everything is gone
                log.info("stopped")

    def _clean_stale_files(self) -> None:
        """Remove what a killed supervisor left (the caller holds the lock)."""
        (self.root / protocol.CONTROL_SOCKET).unlink(missing_ok=True)
        shutil.rmtree(self.root / DEBUG_DIR, ignore_errors=True)
        for entry in os.listdir(self.root):
            if DEVICE_NAME.fullmatch(entry):
                shutil.rmtree(self.root / entry, ignore_errors=True)

    def _loop(self, sel: selectors.BaseSelector, listener: socket.socket) -> None:
        started = time.monotonic()
        assert self.model is not None
        while not self._stopping:
            timeout = self.tick
            if self._accept_paused_until is not None:
                paused = self._accept_paused_until - time.monotonic()
                if paused <= 0:
                    self._accept_paused_until = None
                    sel.register(listener, selectors.EVENT_READ, None)
                else:
                    timeout = min(timeout, paused)
            for key, _ in sel.select(timeout):
                if key.fileobj is listener:
                    self._accept(sel, listener)
                elif key.fileobj == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                else:
                    self._on_readable(sel, key.data)
            # the files follow what changed on its own: a crash, a recovery, the trace
            try:
                self.model.refresh()
            except OSError as exc:  # out of fds or space: the next tick tries again
                self._refresh_log.warning("cannot update the files: %s", exc)
            if not self.model.devices() and not self._clients and (
                    self._had_processor or time.monotonic() - started > self.idle_grace):
                log.info("no processor left: exiting")
                return

    def _accept(self, sel: selectors.BaseSelector, listener: socket.socket) -> None:
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            # Out of fds or memory, or the client gave up: the processors live on. The
            # connection waits in the backlog; stop polling the listener for a moment
            # (it stays readable, and retrying at once would spin).
            self._accept_log.warning("cannot accept a client: %s", exc)
            sel.unregister(listener)
            self._accept_paused_until = time.monotonic() + ACCEPT_BACKOFF
            return
        if len(self._clients) >= MAX_CLIENTS:
            self._accept_log.warning("refusing a client: %d are connected already",
                                     len(self._clients))
            with contextlib.suppress(OSError):
                sock.setblocking(False)
                sock.send(protocol.encode({
                    "ok": False, "errno": errno.EAGAIN,
                    "error": f"the supervisor serves {MAX_CLIENTS} clients already: retry "
                             "when one has gone"}))
            sock.close()
            return
        sock.setblocking(False)
        client = _Client(sock)
        self._clients[sock.fileno()] = client
        sel.register(sock, selectors.EVENT_READ, client)

    def _close_client(self, sel: selectors.BaseSelector, client: _Client) -> None:
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(client.sock)
        self._clients.pop(client.sock.fileno(), None)
        client.sock.close()
        if client.dev is not None and self.model is not None:
            dev, client.dev = client.dev, None
            try:
                self.model.cdev_release(dev)  # the client closed /dev/remoteprocN (or died)
            except RprocControlError as exc:
                log.warning("release of %s: %s", dev, exc)

    def _on_readable(self, sel: selectors.BaseSelector, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close_client(sel, client)
            return
        try:
            lines = client.reader.feed(data)
        except ValueError as exc:
            self._send(client, {"ok": False, "errno": errno.EMSGSIZE, "error": str(exc)})
            self._close_client(sel, client)
            return
        for line in lines:
            if not self._send(client, self._handle(client, line)):
                self._close_client(sel, client)
                return

    def _send(self, client: _Client, response: dict[str, Any]) -> bool:
        try:
            data = protocol.encode(response)
        except ValueError as exc:
            data = protocol.encode({"ok": False, "errno": errno.EMSGSIZE, "error": str(exc)})
        try:
            client.sock.settimeout(2.0)  # a client that does not read must not stall the others
            client.sock.sendall(data)
            client.sock.setblocking(False)
            return True
        except OSError as exc:
            log.info("dropping a client: %s", exc)
            return False

    def _handle(self, client: _Client, line: bytes) -> dict[str, Any]:
        op = "?"
        try:
            message = protocol.decode(line)
            op = protocol.field(message, "op", str)
            handler = self._ops.get(op)
            if handler is None:
                raise _fail(errno.EINVAL, f"unknown operation {op!r} (known: "
                                          f"{', '.join(self._ops)})")
            missing = [key for key in protocol.OPS[op] if key not in message]
            if missing:
                raise _fail(errno.EINVAL, f"{op} needs the fields {', '.join(missing)}")
            return {"ok": True, **(handler(client, message) or {})}
        except RprocControlError as exc:
            return {"ok": False, "errno": exc.errno, "error": str(exc)}
        except ValueError as exc:
            return {"ok": False, "errno": errno.EINVAL, "error": f"bad {op} request: {exc}"}
        except Exception as exc:  # a bug must cost one request, not every processor
            log.exception("%s request failed", op)
            return {"ok": False, "errno": errno.EIO, "error": f"{op}: internal error: {exc}"}

    @property
    def connected_clients(self) -> int:
        """How many clients hold a connection to the control socket now."""
        return len(self._clients)

    # -- operations ---------------------------------------------------------------------
    @property
    def _m(self) -> RemoteprocModel:
        assert self.model is not None
        return self.model

    @staticmethod
    def _dev(message: dict[str, Any]) -> str:
        dev = protocol.field(message, "dev", str)
        if not DEVICE_NAME.fullmatch(dev):
            raise _fail(errno.ENOENT, f"{dev!r} is not a remoteprocN device name")
        return dev

    def _op_hello(self, _c: _Client, _m: dict[str, Any]) -> dict[str, Any]:
        return {"protocol": protocol.PROTOCOL_VERSION, "pid": os.getpid()}

    def _op_list(self, _c: _Client, _m: dict[str, Any]) -> dict[str, Any]:
        return {"devices": self._m.devices()}

    def _op_read(self, _c: _Client, m: dict[str, Any]) -> dict[str, Any]:
        return {"value": self._m.show(self._dev(m), protocol.field(m, "attr", str))}

    def _op_write(self, _c: _Client, m: dict[str, Any]) -> None:
        self._m.store(self._dev(m), protocol.field(m, "attr", str),
                      protocol.field(m, "value", str))

    def _op_debug_read(self, _c: _Client, m: dict[str, Any]) -> dict[str, Any]:
        return {"value": self._m.debug_show(self._dev(m), protocol.field(m, "attr", str))}

    def _op_debug_write(self, _c: _Client, m: dict[str, Any]) -> None:
        self._m.debug_store(self._dev(m), protocol.field(m, "attr", str),
                            protocol.field(m, "value", str))

    def _op_add(self, _c: _Client, m: dict[str, Any]) -> dict[str, Any]:
        firmware = protocol.field(m, "firmware", str)
        if not firmware or len(firmware) > _MAX_FIRMWARE or "\n" in firmware or "\0" in firmware:
            raise _fail(errno.EINVAL, f"a firmware name is one non-empty line, "
                                      f"got {firmware[:80]!r}")
        kind = protocol.field(m, "kind", str, optional=True) or "sim"
        if kind not in self.factories:
            raise _fail(errno.EINVAL, f"kind {kind!r}: expected one of "
                                      f"{', '.join(self.factories)}")
        name = protocol.field(m, "name", str, optional=True)
        if name is None:
            index = 0
            while self._m.find(f"{KINDS[kind]}{index}") is not None:
                index += 1
            name = f"{KINDS[kind]}{index}"
        elif not _PROCESSOR_NAME.fullmatch(name):
            raise _fail(errno.EINVAL, f"processor name {name!r}: use 1-32 letters, digits, "
                                      "'_', '.' or '-'")
        if self._m.find(name) is not None:
            raise _fail(errno.EEXIST, f"a processor called {name!r} exists already: stop it "
                                      f"first (`amplink stop {name}`) or choose another --name")
        rproc = self.factories[kind](name, firmware)
        dev = self._m.add(rproc)
        self._had_processor = True
        self._unsubscribe[dev] = rproc.subscribe(lambda _event: self._wake())
        log.info("%s: added %s (%s) with firmware %s", dev, name, kind, firmware)
        return {"dev": dev, "name": name}

    def _op_remove(self, _c: _Client, m: dict[str, Any]) -> None:
        self._remove(self._dev(m))

    def _remove(self, dev: str) -> None:
        unsubscribe = self._unsubscribe.pop(dev, None)
        if unsubscribe is not None:
            unsubscribe()
        self._m.remove(dev)
        self._collect_buffers()  # its run ended: its buffers are detached
        log.info("%s: removed", dev)

    def _remove_all(self) -> None:
        if self.model is None:
            return
        for dev in self.model.devices():
            try:
                self._remove(dev)
            except Exception:  # shutting down: stop the others whatever one of them does
                log.exception("%s: shutdown failed", dev)

    def _op_channels(self, _c: _Client, m: dict[str, Any]) -> dict[str, Any]:
        rproc = self._m.processor(self._dev(m))
        if not isinstance(rproc, ReportsChannels):
            raise _fail(errno.EOPNOTSUPP, f"{rproc.name} cannot list its channels")
        return {"channels": [{"name": n, "src": s, "dst": d} for n, s, d in rproc.channels()]}

    def _sim(self, m: dict[str, Any]) -> SimRemoteProc:
        rproc = self._m.processor(self._dev(m))
        if not isinstance(rproc, SimRemoteProc):
            raise _fail(errno.EOPNOTSUPP, f"{rproc.name} has no simulated IOMMU")
        return rproc

    def _op_buffers(self, _c: _Client, m: dict[str, Any]) -> dict[str, Any]:
        return {"buffers": [{"id": b.id, "name": b.name, "da": b.da, "length": b.length,
                             "access": b.access, "holder": b.holder}
                            for b in self._sim(m).attached()]}

    def _op_attach(self, _c: _Client, m: dict[str, Any]) -> dict[str, Any]:
        rproc = self._sim(m)
        size = protocol.field(m, "size", int)
        access = protocol.field(m, "access", int)
        if not 0 < size <= MAX_ATTACH or access not in (1, 2, 3):
            raise _fail(errno.EINVAL, f"attach: size must be 1..{MAX_ATTACH} and access "
                                      f"1..3, got {size} and {access}")
        if rproc.state is not RprocState.RUNNING:
            raise _fail(errno.EINVAL, f"{rproc.name} is {rproc.state}: attach needs it running")
        buffer = allocate_buffer(size, name=f"{rproc.name}-buf")
        try:
            attachment = rproc.attach(buffer, access)
        except BaseException:
            buffer.close()
            raise
        att_id = rproc.buffers.id_of(buffer)
        assert att_id is not None
        self._attached[(self._dev(m), att_id)] = (buffer, attachment)
        self._collect_buffers()
        return {"id": att_id, "da": attachment.da}

    def _op_detach(self, _c: _Client, m: dict[str, Any]) -> None:
        key = (self._dev(m), protocol.field(m, "id", int))
        got = self._attached.pop(key, None)
        if got is None:
            raise _fail(errno.ENOENT, f"{key[0]}: no buffer {key[1]} attached by amplink attach")
        buffer, attachment = got
        rproc = self._sim(m)
        if attachment in rproc.iommu.attachments:
            rproc.detach(attachment)
        buffer.close()

    def _collect_buffers(self) -> None:
        """Close the buffers of `amplink attach` whose run ended (detached with it)."""
        for key, (buffer, _attachment) in list(self._attached.items()):
            if not buffer.attachments:
                del self._attached[key]
                buffer.close()

    def _op_crashes(self, _c: _Client, m: dict[str, Any]) -> dict[str, Any]:
        rproc = self._m.processor(self._dev(m))
        if not isinstance(rproc, RemoteProc):
            raise _fail(errno.EOPNOTSUPP, f"{rproc.name} does not count its crashes")
        stats = rproc.statistics()
        return {"count": stats.crash_count, "last": stats.last_crash,
                "recovery_stopped": stats.recovery_stopped}

    def _op_crashlog(self, _c: _Client, m: dict[str, Any]) -> dict[str, Any]:
        rproc = self._m.processor(self._dev(m))
        if not isinstance(rproc, ReportsCrashlog):
            raise _fail(errno.EOPNOTSUPP, f"{rproc.name} keeps no crashlog (only RTKit "
                                          "co-processors do)")
        return {"report": rproc.crashlog()}

    def _op_dev_open(self, c: _Client, m: dict[str, Any]) -> None:
        dev = self._dev(m)
        if c.dev is not None:
            raise _fail(errno.EBUSY, f"this connection is /dev/{c.dev} already")
        self._m.processor(dev)  # ENOENT if there is no such processor
        c.dev = dev

    def _device_of(self, c: _Client) -> str:
        if c.dev is None:
            raise _fail(errno.EBADF, "no device open on this connection: send dev_open first")
        return c.dev

    def _op_dev_write(self, c: _Client, m: dict[str, Any]) -> None:
        self._m.cdev_write(self._device_of(c), protocol.field(m, "value", str))

    def _op_dev_set_release(self, c: _Client, m: dict[str, Any]) -> None:
        self._m.cdev_set_release(self._device_of(c), protocol.field(m, "value", int) != 0)

    def _op_dev_get_release(self, c: _Client, _m: dict[str, Any]) -> dict[str, Any]:
        return {"value": int(self._m.cdev_get_release(self._device_of(c)))}


class _RateLimitedLog:
    """Logs a warning at most once per ``interval`` s; says how many it held back."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: float | None = None
        self._held = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval:
            self._held += 1
            return
        if self._held:
            message += f" ({self._held} more like it not logged)"
        self._last, self._held = now, 0
        log.warning(message, *args)


def _write_file(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- the client side --------------------------------------------------------------------
class SupervisorClient:
    """The supervisor-only operations (add, remove, channels); attributes go through
    :attr:`tree` like any remoteproc tree."""

    def __init__(self, root: Path, *, timeout: float = 30.0) -> None:
        self.root = Path(root)
        self.tree = ControlSocketTree(self.root, timeout=timeout)

    def hello(self) -> int:
        """The supervisor's pid (checks that it speaks this protocol)."""
        response = self.tree.request({"op": "hello"}, "supervisor")
        try:
            version = protocol.field(response, "protocol", int)
            pid = protocol.field(response, "pid", int)
        except ValueError as exc:
            raise SupervisorError(f"{self.root}: malformed hello: {exc}") from None
        if version != protocol.PROTOCOL_VERSION:
            raise SupervisorError(f"the supervisor at {self.root} speaks protocol {version}, "
                                  f"not {protocol.PROTOCOL_VERSION}: stop its processors and "
                                  "let it exit")
        return pid

    def add(self, firmware: str, name: str | None = None, kind: str | None = None
            ) -> tuple[str, str]:
        """Create an offline processor of ``kind`` ("sim" by default, "rtkit"); returns
        (device, name)."""
        request = {"op": "add", "name": name, "firmware": firmware}
        if kind is not None:
            request["kind"] = kind
        response = self.tree.request(request, name or "add")
        try:
            dev = protocol.field(response, "dev", str)
            got = protocol.field(response, "name", str)
        except ValueError as exc:
            raise SupervisorError(f"{self.root}: malformed answer to add: {exc}") from None
        if not DEVICE_NAME.fullmatch(dev) or not _PROCESSOR_NAME.fullmatch(got):
            raise SupervisorError(f"{self.root}: add answered {dev!r}, {got!r}")
        return dev, got

    def remove(self, dev: str) -> None:
        """Shut ``dev`` down (whatever its state) and remove it; the last one ends the
        supervisor."""
        self.tree.request({"op": "remove", "dev": dev}, dev)

    def buffers(self, dev: str) -> list[AttachedBuffer]:
        """The buffers attached to ``dev`` (a simulated processor)."""
        response = self.tree.request({"op": "buffers", "dev": dev}, dev)
        try:
            return [AttachedBuffer(protocol.field(b, "id", int), protocol.field(b, "name", str),
                                   protocol.field(b, "da", int), protocol.field(b, "length", int),
                                   protocol.field(b, "access", str),
                                   protocol.field(b, "holder", str))
                    for b in protocol.field(response, "buffers", list)]
        except (ValueError, TypeError, AttributeError) as exc:
            raise SupervisorError(f"{dev}: malformed buffer list: {exc}") from None

    def attach(self, dev: str, size: int, access: int) -> tuple[int, int]:
        """Allocate a buffer of ``size`` bytes in the supervisor and attach it to ``dev``;
        returns its id and device address."""
        response = self.tree.request({"op": "attach", "dev": dev, "size": size,
                                      "access": access}, dev)
        return protocol.field(response, "id", int), protocol.field(response, "da", int)

    def detach(self, dev: str, att_id: int) -> None:
        """Detach and free a buffer :meth:`attach` made."""
        self.tree.request({"op": "detach", "dev": dev, "id": att_id}, dev)

    def channels(self, dev: str) -> list[Channel]:
        """The rpmsg channels of ``dev``."""
        response = self.tree.request({"op": "channels", "dev": dev}, dev)
        try:
            items = protocol.field(response, "channels", list)
            channels = [Channel(protocol.field(c, "name", str), protocol.field(c, "src", int),
                                protocol.field(c, "dst", int)) for c in items]
            if any(not 0 <= v <= 0xFFFFFFFF for c in channels for v in (c.src, c.dst)):
                raise ValueError("an rpmsg address outside 32 bits")
        except (ValueError, TypeError, AttributeError) as exc:
            raise SupervisorError(f"{dev}: malformed channel list: {exc}") from None
        return channels


    def crashlog(self, dev: str) -> str:
        """The report of the last crash of RTKit co-processor ``dev`` ("" if none)."""
        response = self.tree.request({"op": "crashlog", "dev": dev}, dev)
        try:
            return protocol.field(response, "report", str)
        except ValueError as exc:
            raise SupervisorError(f"{dev}: malformed crashlog answer: {exc}") from None

    def crashes(self, dev: str) -> Crashes:
        """How often ``dev`` crashed, the last reason, and why recovery stopped (if it did)."""
        response = self.tree.request({"op": "crashes", "dev": dev}, dev)
        try:
            crashes = Crashes(protocol.field(response, "count", int),
                              protocol.field(response, "last", str),
                              protocol.field(response, "recovery_stopped", str))
        except (ValueError, TypeError) as exc:
            raise SupervisorError(f"{dev}: malformed crash record: {exc}") from None
        return crashes


def connect_supervisor(root: Path | str | None = None, *, timeout: float = 30.0
                       ) -> SupervisorClient | None:
    """A client of the running supervisor of ``root`` (default :func:`runtime_dir`), or None."""
    root = Path(root) if root is not None else runtime_dir()
    if not (root / protocol.CONTROL_SOCKET).exists():
        return None
    client = SupervisorClient(root, timeout=timeout)
    try:
        client.hello()
    except SupervisorUnavailable:
        return None  # a stale socket, or a supervisor on its way out
    return client


def ensure_supervisor(root: Path | str | None = None, *, timeout: float = 10.0,
                      request_timeout: float = 30.0) -> SupervisorClient:
    """The running supervisor of ``root``, started (detached) if there is none."""
    root = prepare_runtime_dir(root if root is not None else runtime_dir())
    with _flock(root / SPAWN_LOCK, timeout):
        client = connect_supervisor(root, timeout=request_timeout)
        if client is not None:
            return client
        pid = _spawn(root, timeout)
        deadline = time.monotonic() + timeout
        while True:
            client = connect_supervisor(root, timeout=request_timeout)
            if client is not None:
                return client
            if not process_alive(pid) or time.monotonic() >= deadline:
                reason = "exited" if not process_alive(pid) else f"did not answer in {timeout} s"
                raise SupervisorError(f"the supervisor (pid {pid}) {reason}; its log "
                                      f"{root / LOG_FILE} ends: {_log_tail(root)}")
            time.sleep(0.02)


def _spawn(root: Path, timeout: float) -> int:
    env = dict(os.environ)
    # the supervisor runs in "/": keep relative import paths working
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(
            os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    argv = [sys.executable, "-c", _LAUNCHER,
            sys.executable, "-m", "amplink.service", "--root", str(root)]
    with open(root / LOG_FILE, "ab") as logf:
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=logf, cwd="/", env=env, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise SupervisorError(f"starting the supervisor took over {timeout} s") from None
    text = done.stdout.decode(errors="replace").strip()
    if done.returncode != 0 or not text.isdigit():
        raise SupervisorError(f"could not start the supervisor (status {done.returncode}); "
                              f"{root / LOG_FILE} ends: {_log_tail(root)}")
    return int(text)


def _log_tail(root: Path, lines: int = 5) -> str:
    try:
        text = (root / LOG_FILE).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join(text.strip().splitlines()[-lines:]) or "(empty)"


# -- python -m amplink.service ----------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Run a supervisor in the foreground (``amplink boot`` starts it detached)."""
    parser = argparse.ArgumentParser(
        prog="python -m amplink.service",
        description="Hold simulated remote processors and serve them like "
                    "/sys/class/remoteproc in a runtime directory.")
    parser.add_argument("--root", type=Path, default=None,
                        help=f"the runtime directory (default: ${ENV_RUNTIME_DIR}, "
                             "$XDG_RUNTIME_DIR/amplink or /tmp/amplink-$UID)")
    parser.add_argument("--idle-grace", type=float, default=10.0, metavar="S",
                        help="exit after S seconds if no processor is ever added (default 10)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s amplink-supervisor[%(process)d] "
                        "%(levelname)s %(name)s: %(message)s")
    try:
        root = prepare_runtime_dir(args.root if args.root is not None else runtime_dir())
        supervisor = Supervisor(root, idle_grace=args.idle_grace)
    except SupervisorError as exc:
        log.error("%s", exc)
        return 1
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    for signum in (signal.SIGTERM, signal.SIGINT):
        # Python runs the handler in the loop's thread; stop() wakes the loop's select()
        signal.signal(signum, lambda *_: supervisor.stop())
    try:
        supervisor.serve()
    except SupervisorError as exc:
        log.error("%s", exc)
        return 1
    return 0

