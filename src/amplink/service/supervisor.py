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
``crashlog`` answers their last crash report), or, with the kind "keembay" (``amplink
boot --keembay``), Keem Bay VPUs (:class:`~amplink.platforms.sim.keembay.KeemBayRemoteProc`);
their firmware's output goes to the supervisor's log. Plain files cannot refuse a write,
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
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

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
from ..platforms.openamp.rproc import SPEC_PREFIX as OPENAMP_SPEC
from ..platforms.openamp.rproc import OpenAmpRemoteProc
from ..platforms.sim import SimRemoteProc
from ..remoteproc.api import RemoteProcessor
from ..remoteproc.states import RprocState
from ..transports.service_wire import ENDPOINT_SOCKET
from .control import PROCESSOR_NAME, ControlConnection, ControlOps
from .endpoints import EndpointService
from .model import RemoteprocModel
from .policy import (
    ENV_POLICY,
    POLICY_FILE,
    Peer,
    Policy,
    PolicyError,
    default_policy,
    find_policy,
    load_policy,
    peer_of,
)

log = logging.getLogger(__name__)

PID_FILE = "supervisor.pid"
LOCK_FILE = "supervisor.lock"
SPAWN_LOCK = "spawn.lock"
#: the control socket's name until the supervisor answers on it
CONTROL_PENDING = ".control.starting"
LOG_FILE = "supervisor.log"
DEBUG_DIR = "debug"
STDERR_FD = 2  # the fd itself: sys.stderr may be replaced (and have no fd) in-process
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the NUL
#: clients served at once; one more is refused (told EAGAIN and closed). Each buffers at
#: most one line of protocol.MAX_MESSAGE bytes (protocol.LineReader).
MAX_CLIENTS = 64
#: control connections of one user other than the owner
MAX_CLIENTS_PER_USER = 16
#: how long an answer may wait for a client that does not read it
SEND_TIMEOUT = 2.0
#: how long stopping waits for the control connections' threads
CLIENT_JOIN_TIMEOUT = 5.0
#: after a failed accept() (EMFILE, ENFILE, ENOMEM, ...): wait this long before the next
ACCEPT_BACKOFF = 0.1
#: the least time between two restarts of an endpoint service that died
ENDPOINTS_RESTART_INTERVAL = 1.0
#: the least time between two log lines about failed or refused connections (or updates)
ACCEPT_LOG_INTERVAL = 5.0

#: makes the processor called ``name`` (first argument) with ``firmware`` (second)
ProcessorFactory = Callable[[str, str], RemoteProcessor]
#: the largest buffer `amplink attach` allocates (memfds are sparse: untouched pages cost
#: nothing)
MAX_ATTACH = 1 << 34

# Started with `python -c`: spawns the supervisor in a new session and exits at once,
# so the supervisor is nobody's child (no zombie, no signal from the caller's terminal).
_LAUNCHER = (
    "import subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[1:], start_new_session=True, "
    "stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)\n"
    "print(p.pid)\n"
)


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


def make_sim_processor(name: str, firmware: str, *, coredump_dir: Path) -> SimRemoteProc:
    """The supervisor's processors: simulated, with the remoteproc lifecycle (a missing
    firmware fails the boot with ENOENT). Crash dumps go to ``coredump_dir``; the
    firmware's stdout and stderr to the supervisor's stderr (its log). The firmware spins
    before it sleeps, as every link does by default: a spinner yields its core to
    whoever is runnable, so the clients, the service and the firmware take turns on two
    cores without waiting for time slices, and a message through the service finds the
    firmware awake (16 B round trip ~166 -> ~89 us on 2 cores)."""
    return SimRemoteProc(firmware, name=name, coredump_dir=coredump_dir, stdout=STDERR_FD)


def make_rtkit_processor(name: str, firmware: str, *, coredump_dir: Path) -> RemoteProcessor:
    """The supervisor's simulated Apple RTKit co-processors (``amplink boot --rtkit``)."""
    from ..platforms.rtkit import RtkitRemoteProc  # only where RTKit is used

    return RtkitRemoteProc(firmware, name=name, coredump_dir=coredump_dir, stdout=STDERR_FD)


def make_keembay_processor(name: str, firmware: str, *, coredump_dir: Path
                           ) -> RemoteProcessor:
    """The supervisor's simulated Keem Bay VPUs (``amplink boot --keembay``)."""
    from ..platforms.sim.keembay import KeemBayRemoteProc  # only where Keem Bay is used

    return KeemBayRemoteProc(firmware, name=name, coredump_dir=coredump_dir, stdout=STDERR_FD)


def make_processor(name: str, firmware: str, *, coredump_dir: Path) -> RemoteProcessor:
    """The default factory: an OpenAMP-profile peer for a firmware ``openamp:SHM:SOCKET``
    (:class:`~amplink.platforms.openamp.rproc.OpenAmpRemoteProc`), else a simulated
    processor (:func:`make_sim_processor`)."""
    if firmware.startswith(OPENAMP_SPEC):
        return OpenAmpRemoteProc(firmware, name=name)
    return make_sim_processor(name, firmware, coredump_dir=coredump_dir)


# -- the runtime directory --------------------------------------------------------------
def prepare_runtime_dir(path: Path | str) -> Path:
    """Create ``path`` (mode 0700) or check that it is a directory of ours that nobody
    else can write to and short enough for the control socket; SupervisorError with what
    to do otherwise."""
    try:
        path = private_dir(path)
    except PrivateDirError as exc:
        raise SupervisorError(str(exc)) from None
    if len(os.fsencode(path / CONTROL_PENDING)) > MAX_SOCKET_PATH:  # the longest name
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
class Supervisor:
    """Holds processors made by ``factory`` and serves them on ``root``'s sockets: the
    control socket (the remoteproc files, :mod:`.control`) and the endpoint socket
    (channels of the processors, :mod:`.endpoints`), each request checked against
    ``policy`` (default: only the owner may do anything).

    ``factory`` makes the processors of the kind "sim", ``rtkit_factory`` those of the
    kind "rtkit", ``keembay_factory`` those of the kind "keembay"; the defaults are
    :func:`make_processor` (simulated processors, dumping into ``root``/coredumps, and
    OpenAMP-profile peers), :func:`make_rtkit_processor` and
    :func:`make_keembay_processor`.
    Processors of the default factories live and die with the service (``on_exit =
    "keep"`` applies to those of a factory given here). Each control connection is served
    by a thread of its own, so a slow request (a boot) delays nobody else.
    """

    def __init__(self, root: Path, factory: ProcessorFactory | None = None, *,
                 rtkit_factory: ProcessorFactory | None = None,
                 keembay_factory: ProcessorFactory | None = None,
                 idle_grace: float = 10.0, tick: float = 0.25,
                 policy: Policy | None = None) -> None:
        self.root = Path(root)
        dumps = self.root / COREDUMP_DIR
        given = {"sim": factory, "rtkit": rtkit_factory, "keembay": keembay_factory}
        defaults = {"sim": make_processor, "rtkit": make_rtkit_processor,
                    "keembay": make_keembay_processor}
        self.factories: dict[str, ProcessorFactory] = {
            kind: given[kind] or functools.partial(default, coredump_dir=dumps)
            for kind, default in defaults.items()}
        #: the kinds whose processors are the service's own (children of its process)
        self._own_kinds = {kind for kind, made in given.items() if made is None}
        self._own: set[str] = set()  # their devices
        #: each device's kind: "sim", "rtkit", "keembay", or "openamp" (a "sim" peer)
        self._kinds: dict[str, str] = {}
        self.idle_grace = idle_grace
        self.tick = tick
        self.policy = policy or default_policy()
        self.model: RemoteprocModel | None = None
        self.endpoints: EndpointService | None = None
        self._endpoints_restart_at = 0.0
        self.ops = ControlOps(self, self.policy)
        self._clients: dict[ControlConnection, threading.Thread] = {}
        self._clients_lock = threading.Lock()
        self._unsubscribe: dict[str, Callable[[], None]] = {}
        self._had_processor = False
        self._stopping = False
        self._accept_paused_until: float | None = None  # the listener is out of the selector
        self._accept_log = _RateLimitedLog(ACCEPT_LOG_INTERVAL)
        #: buffers `amplink attach` made, by (device, attachment id)
        self._attached: dict[tuple[str, int], tuple[SharedBuffer, Attachment]] = {}
        self._attached_lock = threading.Lock()
        self._refresh_log = _RateLimitedLog(ACCEPT_LOG_INTERVAL)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake_lock = threading.Lock()

    def stop(self) -> None:
        """Ask the loop to shut everything down and return (any thread, or a signal handler)."""
        self._stopping = True
        self._wake()

    def _wake(self) -> None:
        with self._wake_lock:  # never write to a closed (perhaps reused) fd number
            if self._wake_w >= 0:
                with contextlib.suppress(BlockingIOError):
                    os.write(self._wake_w, b"w")

    def serve(self) -> None:
        """Serve until idle or stopped; every processor is shut down before it returns
        (but those the policy's ``on_exit = "keep"`` leaves running)."""
        with _flock(self.root / LOCK_FILE, timeout=5.0):
            self._clean_stale_files()
            sock_path = self.root / protocol.CONTROL_SOCKET
            # Bound under another name and renamed once everything answers: a client that
            # finds the control socket is served (one that found it before listen() was
            # refused and started a second supervisor, which took over later)
            pending = self.root / CONTROL_PENDING
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sel = selectors.DefaultSelector()
            try:
                listener.bind(str(pending))
                self._open_up(pending)
                listener.listen(16)
                listener.setblocking(False)
                self.model = RemoteprocModel(self.root, self.root / DEBUG_DIR)
                self.endpoints = EndpointService(self.root, self.policy, self)
                self.endpoints.start()
                os.rename(pending, sock_path)
                _write_file(self.root / PID_FILE, f"{os.getpid()}\n")
                log.info("serving %s (pid %d; policy: %s)", self.root, os.getpid(),
                         self.policy.source)
                sel.register(listener, selectors.EVENT_READ, None)
                sel.register(self._wake_r, selectors.EVENT_READ, None)
                self._loop(sel, listener)
            finally:
                sock_path.unlink(missing_ok=True)  # first: no new client from now on
                pending.unlink(missing_ok=True)
                listener.close()
                if self.endpoints is not None:
                    self.endpoints.stop()  # its clients see the connection end: LinkDown
                self._close_clients()
                self._shut_processors()
                sel.close()
                with self._wake_lock:
                    os.close(self._wake_r)
                    os.close(self._wake_w)
                    self._wake_r = self._wake_w = -1
                self._clean_stale_files()
                (self.root / PID_FILE).unlink(missing_ok=True)  # last: everything is gone
                log.info("stopped")

    def _open_up(self, control: Path) -> None:
        """Let the users the policy names reach the sockets (else: the owner only)."""
        if self.policy.grants_others:
            os.chmod(self.root, 0o711)  # others may reach known names, not list them
            os.chmod(control, 0o666)    # the policy decides, per request
        else:
            os.chmod(control, 0o600)

    def _clean_stale_files(self) -> None:
        """Remove what a killed supervisor left (the caller holds the lock)."""
        (self.root / protocol.CONTROL_SOCKET).unlink(missing_ok=True)
        (self.root / CONTROL_PENDING).unlink(missing_ok=True)
        (self.root / ENDPOINT_SOCKET).unlink(missing_ok=True)
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
                else:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
            # the files follow what changed on its own: a crash, a recovery, the trace
            try:
                self.model.refresh()
            except OSError as exc:  # out of fds or space: the next tick tries again
                self._refresh_log.warning("cannot update the files: %s", exc)
            if self.endpoints is not None and self.endpoints.failed:
                self._restart_endpoints()
            if not self.model.devices() and not self.connected_clients and (
                    self._had_processor or time.monotonic() - started > self.idle_grace):
                log.info("no processor left: exiting")
                return

    def _restart_endpoints(self) -> None:
        """The endpoint service's I/O thread died of a fault of ours (logged; its clients
        got LinkDown as the connections closed): serve the processors' channels again with
        a new one, as after a restart of the service. At most once per
        :data:`ENDPOINTS_RESTART_INTERVAL`, so a fault that recurs at once cannot spin."""
        now = time.monotonic()
        if now < self._endpoints_restart_at:
            return
        self._endpoints_restart_at = now + ENDPOINTS_RESTART_INTERVAL
        assert self.endpoints is not None
        self.endpoints.stop()
        endpoints = EndpointService(self.root, self.policy, self)
        try:
            endpoints.start()
        except OSError as exc:  # out of fds: the next interval tries again
            log.warning("cannot restart the endpoint service: %s", exc)
            endpoints.stop()
            return
        self.endpoints = endpoints
        for _, rproc in self.entries():
            endpoints.watch_processor(rproc)
        log.info("the endpoint service was restarted")

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
        try:
            peer = peer_of(sock)
        except OSError as exc:
            self._accept_log.warning("refusing a client without credentials: %s", exc)
            sock.close()
            return
        refusal = self._too_many(peer)
        if refusal is not None:
            self._accept_log.warning("refusing a client: %s", refusal)
            with contextlib.suppress(OSError):
                sock.setblocking(False)
                sock.send(protocol.encode({"ok": False, "errno": errno.EAGAIN,
                                           "error": refusal}))
            sock.close()
            return
        client = ControlConnection(sock, peer)
        thread = threading.Thread(target=self._serve_client, args=(client,), daemon=True,
                                  name=f"amplink-control-{peer.pid}")
        with self._clients_lock:
            self._clients[client] = thread
        thread.start()

    def _too_many(self, peer: Peer) -> str | None:
        with self._clients_lock:
            if len(self._clients) >= MAX_CLIENTS:
                return (f"the supervisor serves {MAX_CLIENTS} clients already: retry when one "
                        "has gone")
            if not self.policy.is_owner(peer) and sum(
                    c.peer.uid == peer.uid for c in self._clients) >= MAX_CLIENTS_PER_USER:
                return f"uid {peer.uid} has {MAX_CLIENTS_PER_USER} connections already"
        return None

    def _serve_client(self, client: ControlConnection) -> None:
        """One connection's thread: its requests, in order, until it closes."""
        try:
            while not self._stopping:
                data = client.sock.recv(65536)
                if not data:
                    return
                try:
                    lines = client.reader.feed(data)
                except ValueError as exc:
                    self._send(client, {"ok": False, "errno": errno.EMSGSIZE, "error": str(exc)})
                    return
                for line in lines:
                    if not self._send(client, self.ops.handle(client, line)):
                        return
        except OSError:
            return  # reset by the client, or shut down by stop()
        finally:
            self._close_client(client)

    def _send(self, client: ControlConnection, response: dict[str, Any]) -> bool:
        try:
            data = protocol.encode(response)
        except ValueError as exc:
            data = protocol.encode({"ok": False, "errno": errno.EMSGSIZE, "error": str(exc)})
        try:
            client.sock.settimeout(SEND_TIMEOUT)  # a client that does not read goes
            client.sock.sendall(data)
            client.sock.settimeout(None)
            return True
        except OSError as exc:
            log.info("dropping a client: %s", exc)
            return False

    def _close_client(self, client: ControlConnection) -> None:
        if client.dev is not None and self.model is not None:
            dev, client.dev = client.dev, None
            try:
                self.model.cdev_release(dev)  # the client closed /dev/remoteprocN (or died)
            except RprocControlError as exc:
                log.warning("release of %s: %s", dev, exc)
        client.sock.close()  # after the release: the client's close() waits for this
        with self._clients_lock:
            self._clients.pop(client, None)
        self._wake()  # the loop may be waiting for the last client to go

    def _close_clients(self) -> None:
        """End every control connection (each thread finishes the request it serves)."""
        with self._clients_lock:
            clients = dict(self._clients)
        for client in clients:
            with contextlib.suppress(OSError):
                client.sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + CLIENT_JOIN_TIMEOUT
        for thread in clients.values():
            thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def connected_clients(self) -> int:
        """How many clients hold a connection to either socket now."""
        with self._clients_lock:
            control = len(self._clients)
        return control + (self.endpoints.session_count if self.endpoints is not None else 0)

    # -- processors (for the control operations and the endpoint service) ------------------
    @property
    def live_model(self) -> RemoteprocModel:
        """The model of the processors (while serving)."""
        assert self.model is not None
        return self.model

    _m = live_model

    def entries(self) -> list[tuple[str, RemoteProcessor]]:
        """(remoteprocN, processor) of every processor, in device order."""
        if self.model is None:
            return []
        found = []
        for dev in self.model.devices():
            try:
                found.append((dev, self.model.processor(dev)))
            except RprocControlError:
                continue  # removed meanwhile
        return found

    def add_processor(self, name: str, firmware: str, kind: str = "sim") -> str:
        rproc = self.factories[kind](name, firmware)
        dev = self._m.add(rproc)
        self._kinds[dev] = "openamp" if isinstance(rproc, OpenAmpRemoteProc) else kind
        self._had_processor = True
        if kind in self._own_kinds:
            self._own.add(dev)
        self._unsubscribe[dev] = rproc.subscribe(lambda _event: self._wake())
        if self.endpoints is not None:
            self.endpoints.watch_processor(rproc)
        log.info("%s: added %s (%s) with firmware %s", dev, name, kind, firmware)
        return dev

    def kind_of(self, dev: str) -> str:
        return self._kinds.get(dev, "sim")

    def remove_processor(self, dev: str) -> None:
        unsubscribe = self._unsubscribe.pop(dev, None)
        if unsubscribe is not None:
            unsubscribe()
        rproc = self._m.remove(dev)
        self._own.discard(dev)
        self._kinds.pop(dev, None)
        self._collect_buffers()  # its run ended: its buffers are detached
        if self.endpoints is not None:
            self.endpoints.forget_processor(rproc)
        log.info("%s: removed", dev)

    def attach_buffer(self, dev: str, rproc: SimRemoteProc, size: int, access: int
                      ) -> tuple[int, int]:
        """A new buffer of ``size`` bytes attached to ``rproc`` (`amplink attach`); its id
        and device address."""
        if not 0 < size <= MAX_ATTACH or access not in (1, 2, 3):
            raise error_from_errno(errno.EINVAL, f"attach: size must be 1..{MAX_ATTACH} and "
                                                 f"access 1..3, got {size} and {access}")
        if rproc.state is not RprocState.RUNNING:
            raise error_from_errno(errno.EINVAL, f"{rproc.name} is {rproc.state}: attach "
                                                 "needs it running")
        buffer = allocate_buffer(size, name=f"{rproc.name}-buf")
        try:
            attachment = rproc.attach(buffer, access)
        except BaseException:
            buffer.close()
            raise
        att_id = rproc.buffers.id_of(buffer)
        assert att_id is not None
        with self._attached_lock:
            self._attached[(dev, att_id)] = (buffer, attachment)
        self._collect_buffers()
        return att_id, attachment.da

    def detach_buffer(self, dev: str, rproc: SimRemoteProc, att_id: int) -> None:
        """Detach and free a buffer :meth:`attach_buffer` made."""
        with self._attached_lock:
            got = self._attached.pop((dev, att_id), None)
        if got is None:
            raise error_from_errno(errno.ENOENT, f"{dev}: no buffer {att_id} attached by "
                                                 "amplink attach")
        buffer, attachment = got
        if attachment in rproc.iommu.attachments:
            rproc.detach(attachment)
        buffer.close()

    def _collect_buffers(self) -> None:
        """Close the buffers of `amplink attach` whose run ended (detached with it)."""
        with self._attached_lock:
            for key, (buffer, _attachment) in list(self._attached.items()):
                if not buffer.attachments:
                    del self._attached[key]
                    buffer.close()

    def _shut_processors(self) -> None:
        """At exit: stop every processor, but leave those that outlive the service
        (not simulated) running if the policy says ``on_exit = "keep"``."""
        for dev, rproc in self.entries():
            if self.policy.on_exit == "keep" and dev not in self._own:  # they die with us
                log.info("%s: %s left %s (on_exit = keep)", dev, rproc.name, rproc.state)
                continue
            try:
                self.remove_processor(dev)
            except Exception:  # shutting down: stop the others whatever one of them does
                log.exception("%s: shutdown failed", dev)


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
        """Create an offline processor of ``kind`` ("sim" by default, "rtkit", "keembay"); returns
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
        if not DEVICE_NAME.fullmatch(dev) or not PROCESSOR_NAME.fullmatch(got):
            raise SupervisorError(f"{self.root}: add answered {dev!r}, {got!r}")
        return dev, got

    def remove(self, dev: str) -> None:
        """Shut ``dev`` down (whatever its state) and remove it; the last one ends the
        supervisor."""
        self.tree.request({"op": "remove", "dev": dev}, dev)

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

    def kind(self, dev: str) -> str:
        """What ``dev`` is: "sim", "rtkit", "keembay" or "openamp" (``amplink boot``'s kinds)."""
        response = self.tree.request({"op": "kind", "dev": dev}, dev)
        try:
            kind = protocol.field(response, "kind", str)
        except ValueError as exc:
            raise SupervisorError(f"{dev}: malformed answer to kind: {exc}") from None
        if not PROCESSOR_NAME.fullmatch(kind):
            raise SupervisorError(f"{dev}: kind answered {kind[:40]!r}")
        return kind

    def crashlog(self, dev: str) -> str:
        """The report of the last crash of RTKit co-processor ``dev`` ("" if none)."""
        response = self.tree.request({"op": "crashlog", "dev": dev}, dev)
        try:
            return protocol.field(response, "report", str)
        except ValueError as exc:
            raise SupervisorError(f"{dev}: malformed crashlog answer: {exc}") from None


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
    """The running supervisor of ``root``, started (detached) if there is none.

    A supervisor that answers is used whoever runs it (another user's, if its policy
    lets us in); only starting one needs ``root`` to be our own private directory.
    """
    client = connect_supervisor(root, timeout=request_timeout)
    if client is not None:
        return client
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
    # the firmware's output goes there: the owner's alone, as the directory is
    log_fd = os.open(root / LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
    with open(log_fd, "ab") as logf:
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
        description="Hold simulated remote processors (and OpenAMP-profile peers), serve "
                    "them like /sys/class/remoteproc in a runtime directory, and serve "
                    "their channels to client programs as the policy allows.")
    parser.add_argument("--root", type=Path, default=None,
                        help=f"the runtime directory (default: ${ENV_RUNTIME_DIR}, "
                             "$XDG_RUNTIME_DIR/amplink or /tmp/amplink-$UID)")
    parser.add_argument("--idle-grace", type=float, default=10.0, metavar="S",
                        help="exit after S seconds if no processor is ever added (default 10)")
    parser.add_argument("--policy", type=Path, default=None, metavar="FILE",
                        help=f"who may use the processors (default: ${ENV_POLICY}, else "
                             f"{POLICY_FILE} in the runtime directory if it exists, else only "
                             "this user); see amplink.service.policy")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s amplink-supervisor[%(process)d] "
                        "%(levelname)s %(name)s: %(message)s")
    try:
        root = prepare_runtime_dir(args.root if args.root is not None else runtime_dir())
        policy_file = find_policy(root, args.policy)
        policy = default_policy() if policy_file is None else load_policy(policy_file)
        supervisor = Supervisor(root, idle_grace=args.idle_grace, policy=policy)
    except (SupervisorError, PolicyError) as exc:
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

