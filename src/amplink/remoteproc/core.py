"""The lifecycle engine: a :class:`RemoteProcessor` driven by a platform's :class:`PlatformOps`.

First boot (power count 0 -> 1), as Linux's rproc_fw_boot:

1. the platform finds the image and gives the processor's memory;
2. the image's resource table is processed into a copy (see :mod:`.resources`);
3. the image's segments are loaded, and the processed table is copied over the loaded
   ``.resource_table`` (or into memory the engine allocated);
4. the processor is started, and **only then** the vdevs are registered: the remote
   waits for DRIVER_OK before it touches its vrings;
5. the platform confirms the processor is up, the state becomes running and the
   platform's crash watch starts.

The last shutdown removes the vdevs (channels, endpoints, drivers' remove callbacks),
stops the processor and releases its memory. A crash is handled once per run: the
state becomes crashed, the links go down at once, and a crash-handler thread (Linux's
crash work item) recovers when recovery is enabled: stop, coredump, reload the image
into the same memory with the same processed table, start, register the vdevs again
(the firmware announces its channels again; drivers registered on the processor bind
again). With recovery disabled the processor stays crashed until ``recover()`` or
the last ``shutdown()``.

Locks: ``_op_lock`` serialises lifecycle operations (boot, shutdown, recovery, firmware
changes); ``_state_lock`` guards the state and run number and is only held briefly, so
a crash report never waits for an operation in progress; ``_mem_lock`` guards the
memory that ``trace()`` reads against its release.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .._args import finite_seconds_arg, int_arg, str_arg
from .._subscribers import Subscribers
from ..errors import EndpointClosed, InvalidArgument, InvalidArgumentType, LinkDown
from ..link.channel import RpmsgDriver
from ..link.runtime import Link
from ..paths import coredump_dir
from ..rpmsg.wire import RPMSG_BUF_SIZE
from .api import CrashReason, RemoteProcessor, RprocEvent
from .coredump import CoredumpMode, coredump_mode
from .devmem import Allocation, DeviceMemory
from .dumps import coredump_path, prune_coredumps, take_coredump
from .errors import NotBooted, RprocBusy
from .image import LoadableImage
from .ops import PlatformOps, StartInfo
from .resources import ProcessedResources, process_resources
from .rsc_table import ResourceTable
from .states import InvalidTransition, RprocState, check_transition
from .trace import TraceFollower, read_trace
from .vdevs import register_vdevs, remove_vdevs

log = logging.getLogger(__name__)

_S = RprocState
#: states in which a crash report is taken
_CAN_CRASH = frozenset({_S.RUNNING, _S.SUSPENDED, _S.ATTACHED})
#: how long the last shutdown waits for background coredump writers
COREDUMP_JOIN_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How automatic recovery backs off, and when it gives up (as systemd's Restart=).

    The n-th crash within ``interval`` seconds waits ``delay * 2**(n-1)`` seconds (at most
    ``max_delay``) before the restart; more than ``burst`` crashes within ``interval``
    stop automatic recovery: the processor stays crashed until ``recover()`` or the last
    ``shutdown()``, and an "error" event says why.
    """

    burst: int = 5
    interval: float = 10.0
    delay: float = 0.1
    max_delay: float = 5.0

    def __post_init__(self) -> None:
        int_arg(self.burst, "burst", minimum=1)
        finite_seconds_arg(self.interval, "interval", positive=True)
        finite_seconds_arg(self.delay, "delay")
        finite_seconds_arg(self.max_delay, "max_delay")


@dataclass(frozen=True, slots=True)
class RprocStatistics:
    """A snapshot of a processor's lifecycle counters."""

    name: str
    state: RprocState
    firmware: str
    power: int
    crash_count: int
    recoveries: int
    last_crash: str
    coredumps: tuple[str, ...]
    links: int
    #: why automatic recovery stopped ("" while it goes on)
    recovery_stopped: str = ""


class RemoteProc(RemoteProcessor):
    """A remote processor whose platform specifics are ``ops``.

    ``coredump_dir`` (default: ``coredumps/`` in the per-user runtime directory) receives
    one ELF core file per crash when coredumps are enabled, of which the newest
    ``coredump_keep`` of this processor are kept; ``restart`` is the back-off and limit of
    automatic recovery;
    ``buf_size`` is the rpmsg buffer size of the host's links.
    """

    def __init__(
        self,
        ops: PlatformOps,
        firmware: str,
        *,
        name: str = "rproc0",
        recovery: bool = True,
        coredump: CoredumpMode | str = CoredumpMode.DISABLED,
        coredump_dir: str | os.PathLike[str] | None = None,
        buf_size: int = RPMSG_BUF_SIZE,
        restart: RestartPolicy | None = None,
        coredump_keep: int = 20,
    ) -> None:
        if not str_arg(firmware, "firmware"):
            raise InvalidArgument("firmware: the firmware name must not be empty")
        str_arg(name, "name")
        if restart is not None and not isinstance(restart, RestartPolicy):
            raise InvalidArgumentType(f"restart must be a RestartPolicy, got {restart!r}")
        self.name = name
        self.restart = restart or RestartPolicy()
        self.buf_size = buf_size
        #: where dumps go (None: coredumps/ in the per-user runtime directory, made 0700)
        self.coredump_dir = Path(coredump_dir) if coredump_dir else None
        #: the newest dumps of this processor kept in that directory; older ones are deleted
        self.coredump_keep = int_arg(coredump_keep, "coredump_keep", minimum=1)
        self._ops = ops
        self._firmware = firmware
        self._recovery = bool(recovery)
        self._coredump = coredump_mode(coredump)
        self._op_lock = threading.RLock()
        self._state_lock = threading.Lock()
        self._state_changed = threading.Condition(self._state_lock)
        self._mem_lock = threading.Lock()
        self._state = _S.OFFLINE
        self._power = 0
        self._run = 0  # bumped by every start and stop: reports of another run are stale
        self._active = False  # a run is started and not yet stopped
        self._image: LoadableImage | None = None
        self._memory: DeviceMemory | None = None
        self._resources: ProcessedResources | None = None
        self._links: list[Link] = []
        self._drivers: list[RpmsgDriver] = []
        self._subscribers: Subscribers[RprocEvent] = Subscribers(f"{self.name} events", log)
        self._crash_count = 0
        self._recoveries = 0
        self._last_crash = ""
        self._recent_crashes: list[float] = []  # monotonic times, within restart.interval
        self._recovery_stopped = ""
        self._dump_pending = False
        self._coredumps: list[Path] = []
        self._handlers: list[threading.Thread] = []  # crash handlers
        self._writers: list[threading.Thread] = []  # background coredump writers

    # -- settings ----------------------------------------------------------------------------
    @property
    def state(self) -> RprocState:
        return self._state

    @property
    def firmware(self) -> str:
        return self._firmware

    @firmware.setter
    def firmware(self, value: str) -> None:
        if not value:
            raise ValueError("the firmware name must not be empty")
        with self._op_lock:
            if self._state is not _S.OFFLINE:
                raise RprocBusy(errno.EBUSY, f"{self.name} is {self._state}: firmware can "
                                "only change while offline")
            self._firmware = value

    @property
    def recovery(self) -> bool:
        return self._recovery

    @recovery.setter
    def recovery(self, enabled: bool) -> None:
        self._recovery = bool(enabled)

    @property
    def coredump(self) -> CoredumpMode:
        return self._coredump

    @coredump.setter
    def coredump(self, mode: CoredumpMode | str) -> None:
        mode = coredump_mode(mode)
        with self._state_lock:
            if self._state is _S.CRASHED:
                raise RprocBusy(errno.EBUSY, f"{self.name} is crashed: coredump cannot change now")
            self._coredump = mode

    # -- what users look at ----------------------------------------------------------------
    @property
    def power(self) -> int:
        """The number of users (boots not yet matched by a shutdown)."""
        return self._power

    @property
    def crash_count(self) -> int:
        """Crashes handled since this object was made."""
        return self._crash_count

    @property
    def links(self) -> list[Link]:
        """The host's links, one per rpmsg vdev, then those the platform builds itself
        (Keem Bay IPC, RTKit's application endpoints; empty unless running)."""
        return list(self._links)

    @property
    def link(self) -> Link:
        """The host's first link (that of the first rpmsg vdev, if any, else the
        platform's own: RTKit's application endpoints); LinkDown unless running."""
        links = self._links
        if not links:
            raise LinkDown(f"{self.name} is {self._state} and has no link now")
        return links[0]

    @property
    def memory(self) -> DeviceMemory | None:
        """The processor's memory (None while offline)."""
        return self._memory

    @property
    def resources(self) -> ProcessedResources | None:
        """Where the processed table, carveouts, vrings and buffers lie (None while offline)."""
        return self._resources

    @property
    def resource_table(self) -> ResourceTable | None:
        """The processed resource table (None while offline or if the image has none)."""
        res = self._resources
        return None if res is None else res.table

    @property
    def coredumps(self) -> list[Path]:
        """The coredump files written so far, oldest first."""
        return list(self._coredumps)

    def channels(self) -> list[tuple[str, int, int]]:
        """(name, local address, remote address) of every channel of every link ([] unless up).

        Takes in the announcements that arrived since the last look.
        """
        found: list[tuple[str, int, int]] = []
        for bus in self.links:
            try:
                bus.poll(dispatch=False)
            except (LinkDown, EndpointClosed):
                continue
            found += [(c.name, c.endpoint.addr if c.endpoint is not None else c.src, c.dst)
                      for c in bus.channels()]
        return found

    def statistics(self) -> RprocStatistics:
        """A snapshot of the lifecycle counters."""
        return RprocStatistics(
            name=self.name, state=self._state, firmware=self._firmware, power=self._power,
            crash_count=self._crash_count, recoveries=self._recoveries,
            last_crash=self._last_crash, coredumps=tuple(str(p) for p in self._coredumps),
            links=len(self._links), recovery_stopped=self._recovery_stopped,
        )

    def wait_for_state(self, state: RprocState | str, timeout: float | None = None) -> bool:
        """Wait until the processor is in ``state``; False on timeout."""
        state = RprocState(state)
        with self._state_changed:
            return self._state_changed.wait_for(lambda: self._state is state, timeout)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self._state} firmware={self._firmware!r}>"

    # -- drivers -----------------------------------------------------------------------------
    def register_driver(self, driver: RpmsgDriver) -> None:
        """Bind ``driver`` to channels of the first rpmsg link, now and after every restart."""
        with self._op_lock:
            self._drivers.append(driver)
            if self._links:
                self._links[0].register_driver(driver)

    def unregister_driver(self, driver: RpmsgDriver) -> None:
        """Undo :meth:`register_driver` (its channels are unbound, ``remove`` runs)."""
        with self._op_lock:
            if driver in self._drivers:
                self._drivers.remove(driver)
            if self._links:
                self._links[0].unregister_driver(driver)

    # -- events ------------------------------------------------------------------------------
    def subscribe(self, callback: Callable[[RprocEvent], object]) -> Callable[[], None]:
        return self._subscribers.subscribe(callback)

    def _emit(self, kind: str, detail: str = "") -> None:
        self._subscribers.emit(RprocEvent(kind, self._state, detail))

    def _set_state(self, new: RprocState) -> None:
        with self._state_changed:
            old = self._state
            check_transition(old, new)
            self._state = new
            self._state_changed.notify_all()
        self._emit("state", f"{old} -> {new}")

    # -- boot and shutdown -------------------------------------------------------------------
    def boot(self) -> None:
        with self._op_lock:
            if self._power > 0:
                self._power += 1
                return
            if self._state is not _S.OFFLINE:
                raise InvalidTransition(f"{self.name} is {self._state} and cannot boot")
            self._first_boot()
            self._power = 1

    def _first_boot(self) -> None:
        image = self._ops.load_image(self._firmware)
        memory = self._ops.allocate_memory()
        try:
            resources = process_resources(
                image.resource_table(), memory, loaded_table_da=image.loaded_table_da(),
                buf_size=self.buf_size, vendor_hook=self._ops.handle_vendor,
            )
            with self._mem_lock:
                self._memory, self._resources = memory, resources
            self._start_run(image, on_failure=_S.OFFLINE)
        except BaseException:
            self._release_memory(memory)
            raise

    def _start_run(self, image: LoadableImage, *, on_failure: RprocState) -> None:
        """Load, place the table, start, register the vdevs; the state becomes running."""
        res = self._resources
        assert res is not None and self._memory is not None
        image.load(res.addr_map)
        res.write_table()
        with self._state_lock:
            self._run += 1
            run = self._run
        self._image = image
        self._active = True
        try:
            self._ops.start(StartInfo(image, self._memory, res))
            self._links = register_vdevs(res, self._ops.vdev_drivers, self._ops.doorbell,
                                         name=self.name, buf_size=self.buf_size,
                                         poll_mode=self._ops.poll_mode, spin=self._ops.spin)
            self._links += self._ops.links(res, name=self.name)
            if self._links:
                for driver in self._drivers:
                    self._links[0].register_driver(driver)
            self._ops.wait_started()
            self._set_state(_S.RUNNING)
            self._ops.watch(lambda reason, detail: self._report(run, reason, detail))
        except BaseException:
            self._stop_run(f"{self.name}: start failed", crashed=True)
            if self._state is _S.RUNNING:
                self._set_state(on_failure)
            raise

    def _stop_run(self, reason: str, *, crashed: bool) -> None:
        """Remove the vdevs and stop the processor (if a run is active)."""
        if not self._active:
            return
        self._active = False
        with self._state_lock:
            self._run += 1  # from here on, a report about the stopped run is stale
        links, self._links = self._links, []
        with self._state_changed:
            self._state_changed.notify_all()  # a crash handler backing off stops waiting
        try:
            remove_vdevs(links, reason, crashed=crashed)
        finally:
            self._ops.stop(crashed=crashed)

    def _release_memory(self, memory: DeviceMemory) -> None:
        with self._mem_lock:
            self._memory = self._resources = None
            self._ops.release_memory(memory)

    def shutdown(self) -> None:
        with self._op_lock:
            if self._power == 0:
                raise NotBooted(errno.EINVAL,
                                f"{self.name}: shutdown() without a matching boot(): no users")
            self._power -= 1
            if self._power:
                return
            crashed = self._state is _S.CRASHED
            try:
                self._stop_run(f"{self.name} was shut down", crashed=crashed)
            finally:
                self._writers = _join(self._writers, COREDUMP_JOIN_TIMEOUT)
                if self._memory is not None:
                    self._release_memory(self._memory)
                self._image = None
                self._set_state(_S.OFFLINE)
        # Pending crash handlers waited for the lock; they now see a stopped run and end.
        self._handlers = _join(self._handlers, COREDUMP_JOIN_TIMEOUT)

    # -- crashes -----------------------------------------------------------------------------
    def crash(self, reason: CrashReason = CrashReason.INJECTED) -> None:
        """Report a crash of the current run (ignored unless running); handled in a thread."""
        with self._state_lock:
            run = self._run
        self._report(run, CrashReason(reason), "reported by the host")

    def _report(self, run: int, reason: CrashReason, detail: str) -> None:
        """Take a crash report of ``run``: only the first one of a live run counts."""
        with self._state_changed:
            old = self._state
            if run != self._run or old not in _CAN_CRASH:
                log.debug("%s: crash report (%s) of a stopped run ignored", self.name, reason)
                return
            check_transition(old, _S.CRASHED)
            self._state = _S.CRASHED
            self._crash_count += 1
            self._last_crash = f"{reason}: {detail}" if detail else str(reason)
            self._dump_pending = True
            self._state_changed.notify_all()
            handler = threading.Thread(
                target=self._handle_crash, args=(run, old, list(self._links)), daemon=True,
                name=f"amplink-{self.name}-crash{self._crash_count}",
            )
            self._handlers = [t for t in self._handlers if t.is_alive()] + [handler]
        # The reporter may be the platform's watcher, which a stop joins: everything
        # else happens in the handler thread.
        handler.start()

    def _handle_crash(self, run: int, old: RprocState, links: list[Link]) -> None:
        what = self._last_crash
        # Recovered, a crash would go unseen: a warning. Without recovery its users see it
        # (LinkDown, the state, the event): information.
        log.log(logging.WARNING if self._recovery else logging.INFO, "%s crashed (%s)",
                self.name, what)
        for bus in links:
            bus.mark_down(f"{self.name} crashed ({what})")
        self._emit("state", f"{old} -> {_S.CRASHED}")
        self._emit("crash", what)
        if not self._recovery:
            log.info("%s: recovery is disabled; it stays crashed until recover() or "
                     "shutdown()", self.name)
            return
        delay = self._restart_delay()
        if delay is None:
            return
        with self._state_changed:  # a shutdown or manual recovery meanwhile ends the wait
            if self._state_changed.wait_for(lambda: run != self._run, delay):
                return
        with self._op_lock:
            if run != self._run or self._state is not _S.CRASHED:
                return  # shut down (or recovered) meanwhile
            try:
                self._recover_locked()
            except Exception:  # noqa: BLE001 - reported as an "error" event; stays crashed
                log.exception("%s: recovery failed", self.name)

    def _restart_delay(self) -> float | None:
        """The back-off before this restart, or None when the burst limit is reached."""
        policy = self.restart
        now = time.monotonic()
        recent = [t for t in self._recent_crashes if now - t < policy.interval] + [now]
        self._recent_crashes = recent
        if len(recent) > policy.burst:
            self._recovery_stopped = (f"{len(recent)} crashes within {policy.interval:g} s "
                                      f"(limit {policy.burst})")
            log.error("%s: %s: automatic recovery stopped; recover() or shutdown() it",
                      self.name, self._recovery_stopped)
            self._emit("error", f"restart limit reached: {self._recovery_stopped}")
            return None
        return min(policy.delay * 2 ** (len(recent) - 1), policy.max_delay)

    def recover(self) -> None:
        """Recover a crashed processor now, whatever the recovery setting (no-op if running)."""
        with self._op_lock:
            if self._state is _S.RUNNING:
                return
            if self._state is not _S.CRASHED:
                raise InvalidTransition(f"{self.name} is {self._state}: only a crashed "
                                        "processor can be recovered")
            self._recent_crashes = []  # as systemd's reset-failed: the burst starts afresh
            self._recover_locked()

    def _recover_locked(self) -> None:
        self._recovery_stopped = ""
        self._stop_run(f"{self.name} crashed ({self._last_crash})", crashed=True)
        if self._dump_pending and self._coredump is not CoredumpMode.DISABLED:
            self._dump()
        self._dump_pending = False
        try:
            self._start_run(self._ops.load_image(self._firmware), on_failure=_S.CRASHED)
        except Exception as exc:
            self._emit("error", f"recovery failed: {exc}")
            raise
        self._recoveries += 1
        self._emit("recovered", f"after {self._last_crash}")

    def _dump(self) -> None:
        res, image = self._resources, self._image
        assert res is not None and image is not None
        try:
            directory = self.coredump_dir or coredump_dir()
        except OSError as exc:
            self._dump_done(None, exc)
            return
        path = coredump_path(directory, self.name, self._crash_count)
        thread = take_coredump(self._coredump, res.dump_segments, path, self._dump_done,
                               machine=image.machine, elfclass=image.elfclass)
        if thread is not None:
            self._writers = [t for t in self._writers if t.is_alive()] + [thread]

    def _dump_done(self, path: Path | None, error: Exception | None) -> None:
        if path is None:
            log.error("%s: coredump failed: %s", self.name, error)
            self._emit("error", f"coredump failed: {error}")
            return
        log.warning("%s: coredump written to %s", self.name, path)
        pruned = set(prune_coredumps(path.parent, self.name, self.coredump_keep))
        self._coredumps = [p for p in self._coredumps if p not in pruned] + [path]
        self._emit("coredump", str(path))

    # -- trace -------------------------------------------------------------------------------
    def trace(self, index: int = 0) -> str:
        """The text of trace buffer ``index`` ("" if there is none or the processor is off)."""
        int_arg(index, "index", minimum=0)
        with self._mem_lock:
            buf = self._trace_buffer(index)
            return "" if buf is None else read_trace(buf.region, buf.offset, buf.length)

    def _trace_buffer(self, index: int) -> Allocation | None:
        res = self._resources
        if res is None or not 0 <= index < len(res.traces):
            return None
        return res.traces[index]

    def trace_follower(self, index: int = 0) -> RprocTraceFollower:
        """A follower of trace buffer ``index`` that survives restarts and shutdowns."""
        int_arg(index, "index", minimum=0)
        return RprocTraceFollower(self, index)


def _join(threads: list[threading.Thread], timeout: float) -> list[threading.Thread]:
    """Join ``threads`` (but not the calling one) within ``timeout``; return those still alive."""
    deadline = time.monotonic() + timeout
    for thread in threads:
        if thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
    return [t for t in threads if t.is_alive()]


class RprocTraceFollower:
    """Returns the text added to a processor's trace buffer since the previous call.

    Across a new boot (new memory) it starts afresh; while offline it returns "".
    """

    def __init__(self, rproc: RemoteProc, index: int = 0) -> None:
        self._rproc = rproc
        self._index = index
        self._buffer: Allocation | None = None
        self._follower: TraceFollower | None = None

    def poll(self) -> str:
        """New text since the last call."""
        rproc = self._rproc
        with rproc._mem_lock:
            buf = rproc._trace_buffer(self._index)
            if buf is None:
                self._buffer = self._follower = None
                return ""
            if buf is not self._buffer or self._follower is None:
                self._buffer = buf
                self._follower = TraceFollower(buf.region, buf.offset, buf.length)
            return self._follower.poll()

    __call__ = poll
