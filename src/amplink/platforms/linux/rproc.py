"""Remote processors driven through Linux's remoteproc files (or a simulator's copy of them).

Power references
----------------
The kernel counts power references (rproc_boot() / rproc_shutdown()), but user space
reaches that count only through a switch: sysfs ``state`` "start" takes one reference
and fails with EBUSY while the processor is running or attached, whoever started it;
"stop" drops one and fails with EINVAL unless it is running or attached. Hence:

* A :class:`LinuxRemoteProc` counts its own users. Its first :meth:`~LinuxRemoteProc.boot`
  writes "start"; later ones only count. The last :meth:`~LinuxRemoteProc.shutdown`
  writes "stop". Two objects (or two programs) on one processor share no count.
* If the processor is already running when an object's first boot() comes (another
  program, ``amplink boot`` or the kernel's auto_boot took the reference), boot()
  raises :class:`~amplink.remoteproc.errors.RprocBusy`: the kernel cannot share that
  reference.
* By default the processor outlives the object and the process (that is how
  ``amplink boot`` leaves it running); :meth:`~LinuxRemoteProc.stop` drops the
  reference whoever took it.
* With ``hold_device=True`` the first boot() opens ``/dev/remoteprocN``, writes "start"
  there and sets RPROC_SET_SHUTDOWN_ON_RELEASE; the file stays open until the last
  shutdown() or :meth:`~LinuxRemoteProc.close`. If the process dies, the kernel closes
  the file and stops the processor. Caveat: the kernel keeps that flag per processor and
  acts on every close of any file of the device, so another program that opens and
  closes ``/dev/remoteprocN`` meanwhile also stops it.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable

from ..._subscribers import Subscribers
from ...errors import LinkDown
from ...link.runtime import Link
from ...remoteproc.api import CrashReason, RemoteProcessor, RprocEvent
from ...remoteproc.coredump import CoredumpMode
from ...remoteproc.states import RprocState
from ...transports.rpmsg_char import (
    ChannelDevice,
    ControlDevice,
    RpmsgCharBackend,
    RpmsgSysfs,
    rpmsg_char_link,
)
from .attributes import ControlTree, RprocDevice, SysfsAttributes, check_device, open_tree
from .errors import (
    FirmwareNotFound,
    InvalidControlValue,
    MalformedAttribute,
    NotBooted,
    NotSupported,
    ProcessorNotFound,
    RprocBusy,
    RprocControlError,
)

log = logging.getLogger(__name__)

#: what :meth:`LinuxRemoteProc.crash` writes to debugfs ``crash`` (enum rproc_crash_type);
#: the kernel has no "injected" type: an injected crash reports a fatal error
CRASH_TYPE_OF_REASON: dict[CrashReason, int] = {
    CrashReason.MMUFAULT: 0,
    CrashReason.WATCHDOG: 1,
    CrashReason.FATAL_ERROR: 2,
    CrashReason.INJECTED: 2,
    CrashReason.PROCESS_EXIT: 3,  # types >= 3 are reported as "unknown"
    CrashReason.UNKNOWN: 3,
}
_ACTIVE = (RprocState.RUNNING, RprocState.ATTACHED)


def _one_line(text: str, what: str) -> str:
    """An attribute's value without its trailing newline; MalformedAttribute if more lines."""
    value = text.removesuffix("\n")
    if "\n" in value or "\0" in value:
        raise MalformedAttribute(f"{what} holds more than one line: {text[:80]!r}")
    return value


def list_processors(tree: ControlTree | None = None) -> dict[str, str]:
    """Processor name -> ``remoteprocN``, in device order.

    The kernel allows two processors one name; such names are listed once per device
    as ``name@remoteprocN``.
    """
    tree = tree or open_tree()
    names: list[tuple[str, str]] = []
    for dev in tree.devices():
        try:
            names.append((_one_line(tree.read(dev, "name"), f"{dev}/name"), dev))
        except ProcessorNotFound:
            continue  # removed while listing
    counts: dict[str, int] = {}
    for name, _ in names:
        counts[name] = counts.get(name, 0) + 1
    return {(name if counts[name] == 1 else f"{name}@{dev}"): dev for name, dev in names}


class LinuxRemoteProc(RemoteProcessor):
    """A remote processor behind ``remoteprocN`` in ``tree`` (default: the kernel's).

    See the module documentation for how :meth:`boot` and :meth:`shutdown` map onto the
    kernel. Events for :meth:`subscribe` come from polling ``state`` every
    ``poll_interval`` seconds in a thread (the kernel sends no notification), so a
    crash that recovers faster than that is not seen.
    """

    def __init__(self, dev: str, tree: ControlTree | None = None, *,
                 hold_device: bool = False, poll_interval: float = 0.5) -> None:
        self.dev = check_device(dev)
        self.tree = tree or open_tree()
        self.hold_device = hold_device
        self.poll_interval = poll_interval
        try:
            self.name = _one_line(self.tree.read(dev, "name"), f"{dev}/name")
        except ProcessorNotFound:
            raise ProcessorNotFound(errno.ENOENT, f"no remote processor {dev} in "
                                    f"{self.tree.root} (see `amplink ls`)") from None
        self._lock = threading.Lock()
        self._users = 0
        self._device: RprocDevice | None = None
        self._subscribers: Subscribers[RprocEvent] = Subscribers(self.label, log)
        self._poll_stop: threading.Event | None = None
        self._poller: threading.Thread | None = None
        self._link: Link | None = None

    @classmethod
    def find(cls, name: str, tree: ControlTree | None = None, *, hold_device: bool = False,
             poll_interval: float = 0.5) -> LinuxRemoteProc:
        """The processor called ``name`` (or the device ``remoteprocN``) in ``tree``."""
        tree = tree or open_tree()
        processors = list_processors(tree)
        dev = processors.get(name)
        if dev is None and name in processors.values():
            dev = name
        if dev is None:
            ambiguous = [key for key in processors if key.startswith(f"{name}@")]
            if ambiguous:
                raise ProcessorNotFound(errno.ENOENT, f"several processors are called {name!r}: "
                                        f"say which: {', '.join(ambiguous)}")
            known = ", ".join(processors) or "none"
            raise ProcessorNotFound(errno.ENOENT, f"no remote processor called {name!r} in "
                                    f"{tree.root} (known: {known})")
        return cls(dev, tree, hold_device=hold_device, poll_interval=poll_interval)

    def __repr__(self) -> str:
        return f"LinuxRemoteProc({self.dev!r}, name={self.name!r}, tree={self.tree!r})"

    @property
    def label(self) -> str:
        """``name (remoteprocN)``, for messages."""
        return f"{self.name} ({self.dev})"

    # -- attributes ---------------------------------------------------------------------
    @property
    def state(self) -> RprocState:
        text = self.tree.read(self.dev, "state")
        try:
            return RprocState.from_sysfs(text)
        except ValueError:
            raise MalformedAttribute(f"{self.dev}/state holds {text!r}, which is not a "
                                     "remoteproc state") from None

    @property
    def firmware(self) -> str:
        value = _one_line(self.tree.read(self.dev, "firmware"), f"{self.dev}/firmware")
        if not value:
            raise MalformedAttribute(f"{self.dev}/firmware is empty")
        return value

    @firmware.setter
    def firmware(self, value: str) -> None:
        if not isinstance(value, str) or not value or "\n" in value or "\0" in value:
            raise InvalidControlValue(errno.EINVAL, f"{self.label}: a firmware name is one "
                                      f"non-empty line, got {value!r}")
        try:
            self.tree.write(self.dev, "firmware", value)
        except RprocBusy:
            raise RprocBusy(errno.EBUSY, f"{self.label}: the firmware can only be changed "
                                f"while offline (it is {self._state_or()}): stop it first "
                            f"(`amplink stop {self.name}`)") from None

    @property
    def recovery(self) -> bool:
        text = _one_line(self._read_config("recovery"), f"{self.dev}/recovery")
        if text not in ("enabled", "disabled"):
            raise MalformedAttribute(f"{self.dev}/recovery holds {text!r}, not enabled/disabled")
        return text == "enabled"

    @recovery.setter
    def recovery(self, enabled: bool) -> None:
        self._write_config("recovery", "enabled" if enabled else "disabled")

    @property
    def coredump(self) -> CoredumpMode:
        text = self._read_config("coredump")
        try:
            return CoredumpMode.from_sysfs(text)
        except ValueError:
            raise MalformedAttribute(f"{self.dev}/coredump holds {text!r}, not "
                                     "disabled/enabled/inline") from None

    @coredump.setter
    def coredump(self, mode: CoredumpMode) -> None:
        mode = CoredumpMode(mode)
        try:
            self._write_config("coredump", mode.value)
        except RprocBusy:
            raise RprocBusy(errno.EBUSY, f"{self.label}: the coredump setting cannot change "
                                "while the processor is crashed: recover it first "
                            f"(`amplink recovery {self.name} recover`)") from None

    def _read_config(self, attr: str) -> str:
        """sysfs since Linux 5.13, debugfs before."""
        try:
            return self.tree.read(self.dev, attr)
        except ProcessorNotFound:
            text = self.tree.read_debug(self.dev, attr) if self.tree.exists(self.dev) else None
            if text is None:
                raise self._no_config(attr) from None
            return text

    def _write_config(self, attr: str, value: str) -> None:
        try:
            self.tree.write(self.dev, attr, value)
        except ProcessorNotFound:
            if not self.tree.exists(self.dev) or self.tree.read_debug(self.dev, attr) is None:
                raise self._no_config(attr) from None
            self.tree.write_debug(self.dev, attr, value)

    def _no_config(self, attr: str) -> RprocControlError:
        if not self.tree.exists(self.dev):
            return ProcessorNotFound(errno.ENOENT, f"{self.label} is gone")
        return NotSupported(errno.EOPNOTSUPP, f"{self.label} has no {attr} setting: neither "
                            f"sysfs {attr} (Linux >= 5.13) nor debugfs (mounted, as root)")

    def _state_or(self) -> str:
        """The state for a message (never raises for a control error)."""
        try:
            return str(self.state)
        except (RprocControlError, MalformedAttribute):
            return "in an unreadable state"

    # -- power references ---------------------------------------------------------------
    @property
    def users(self) -> int:
        """This object's boot() calls not yet matched by shutdown()."""
        return self._users

    def boot(self) -> None:
        """One user more; the first one starts the processor (see the module doc)."""
        with self._lock:
            if self._users == 0:
                self._start()
            self._users += 1

    def _start(self) -> None:
        try:
            if self.hold_device:
                self._start_held()
            else:
                self.tree.write(self.dev, "state", "start")
        except RprocBusy:
            raise RprocBusy(
                errno.EBUSY, f"{self.label} is already {self._state_or()}: it was "
                "started elsewhere (another program, `amplink boot` or the kernel's auto_boot) "
                "and the kernel cannot share that reference; use it without boot(), or stop it "
                f"first (`amplink stop {self.name}`)") from None
        except ProcessorNotFound as exc:
            if not self.tree.exists(self.dev):
                raise
            if self.tree.firmware_dir is None:  # the tree said why
                raise FirmwareNotFound(errno.ENOENT, str(exc)) from None
            raise FirmwareNotFound(
                errno.ENOENT, f"{self.label}: the kernel found no firmware "
                f"{self._firmware_or('?')!r} (it looks in {self.tree.firmware_dir} and "
                "firmware_class.path): copy the file there or set another firmware") from None

    def _firmware_or(self, default: str) -> str:
        try:
            return self.firmware
        except (RprocControlError, MalformedAttribute):
            return default

    def _start_held(self) -> None:
        device = self.tree.open_device(self.dev)
        try:
            # start first, then the flag: a failed start must not leave it set for others
            device.write("start")
        except BaseException:
            device.close()
            raise
        try:
            device.set_shutdown_on_release(True)
        except BaseException:
            try:
                device.write("stop")
            finally:
                device.close()
            raise
        self._device = device

    def shutdown(self) -> None:
        """One user less; the last one stops the processor.

        NotBooted if this object has no user (use :meth:`stop` for a processor started
        elsewhere).
        """
        with self._lock:
            if self._users == 0:
                raise NotBooted(errno.EINVAL, f"{self.label}: shutdown() without boot() on "
                                "this object; stop() stops a processor started elsewhere")
            self._users -= 1
            if self._users:
                return
            device, self._device = self._device, None
            if device is None:
                self.stop()
                return
            try:
                self._stop_via(device.write)
            finally:
                try:
                    device.set_shutdown_on_release(False)  # leave the flag as others expect it
                finally:
                    device.close()

    def stop(self) -> None:
        """Stop the processor whoever started it (sysfs "stop"); nothing if already offline.

        A crashed processor cannot be stopped (the kernel answers EINVAL): recover it
        first. This object's user count is not changed.
        """
        self._stop_via(lambda command: self.tree.write(self.dev, "state", command))

    def _stop_via(self, write: Callable[[str], None]) -> None:
        try:
            write("stop")
        except InvalidControlValue:
            state = self.state
            if state is RprocState.OFFLINE:
                return
            if state is RprocState.CRASHED:
                raise InvalidControlValue(
                    errno.EINVAL, f"{self.label} crashed (with recovery disabled) and the kernel "
                    "cannot stop a crashed processor: recover it first "
                    f"(`amplink recovery {self.name} recover`), then stop it") from None
            raise

    def close(self) -> None:
        """Stop watching for events, close the link, forget this object's users and release
        a held device (the kernel then stops a running processor); without
        ``hold_device`` the processor is left as it is."""
        self._stop_polling()
        with self._lock:
            device, self._device = self._device, None
            link, self._link = self._link, None
            self._users = 0
        if link is not None:
            link.close()
        if device is not None:
            device.close()

    def __enter__(self) -> LinuxRemoteProc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- rpmsg ---------------------------------------------------------------------------
    def rpmsg_sysfs(self) -> tuple[RpmsgSysfs, list[ControlDevice]]:
        """The rpmsg part of this tree's sysfs and the control devices of this processor
        (one per rpmsg vdev, found below its device in sysfs).

        NotSupported for a tree that is not a sysfs tree (a simulator's: its processors'
        links are its own, see :class:`~amplink.platforms.sim.SimRemoteProc`).
        """
        tree = self.tree
        if not isinstance(tree, SysfsAttributes) or tree.root.parts[-2:] != ("class",
                                                                             "remoteproc"):
            raise NotSupported(errno.EOPNOTSUPP, f"{self.label}: {tree!r} is not a sysfs tree "
                               "(.../class/remoteproc): its rpmsg devices cannot be found")
        sysfs = RpmsgSysfs(tree.root.parent.parent)
        try:
            # realpath raises if the link is removed while it is resolved (the device goes)
            where = os.path.realpath(tree.root / self.dev)
        except OSError as exc:
            raise ProcessorNotFound(errno.ENOENT, f"{self.label} went away: "
                                                  f"{exc.strerror}") from None
        return sysfs, sysfs.devices_below(where)

    def channels(self) -> list[ChannelDevice]:
        """The rpmsg channels the processor's firmware announced (read from sysfs)."""
        sysfs, controls = self.rpmsg_sysfs()
        return [c for ctrl in controls for c in sysfs.channels(ctrl.transport)]

    @property
    def link(self) -> Link:
        """The link of the processor's (first) rpmsg device, through the kernel's rpmsg_char:
        its endpoints are ``/dev/rpmsgN`` devices. LinkDown (ENODEV) while the processor
        has none (not running, or firmware without an rpmsg vdev). The same link is
        returned while it is up; once it went down (a crash, a stop) the next access
        opens the new device's."""
        with self._lock:
            link = self._link
            if link is not None and link.is_up and self._device_present(link):
                return link
            self._link = None
        if link is not None:
            link.close("the rpmsg device went away")
        sysfs, controls = self.rpmsg_sysfs()
        if not controls:
            raise LinkDown(errno.ENODEV, f"{self.label} has no rpmsg device now (it is "
                           f"{self._state_or()}): boot it with firmware that has an rpmsg "
                           "vdev, and the kernel needs CONFIG_RPMSG_CHAR and CONFIG_RPMSG_CTRL")
        assert isinstance(self.tree, SysfsAttributes)
        link = rpmsg_char_link(controls[0].node, sys_root=sysfs.sys_root,
                               dev_root=self.tree.dev_root, name=self.name)
        with self._lock:
            if self._link is None:
                self._link, link = link, None  # type: ignore[assignment]
            current = self._link
        if link is not None:  # another thread was quicker
            link.close()
        return current

    @staticmethod
    def _device_present(link: Link) -> bool:
        """Whether the link's control device is still there (a link with no endpoint
        open would notice its removal only at its next look at sysfs)."""
        backend = link.backend
        return not isinstance(backend, RpmsgCharBackend) or backend.sysfs.exists(backend.ctrl)

    # -- crash, recovery, trace ---------------------------------------------------------
    def recover(self) -> None:
        """Write "recover": the kernel recovers a crashed processor and ignores others."""
        self._write_config("recovery", "recover")

    def crash(self, reason: CrashReason = CrashReason.INJECTED) -> None:
        """Inject a crash through debugfs ``crash`` (root only; see CRASH_TYPE_OF_REASON)."""
        crash_type = CRASH_TYPE_OF_REASON[CrashReason(reason)]
        try:
            self.tree.write_debug(self.dev, "crash", str(crash_type))
        except NotSupported as exc:
            raise NotSupported(exc.errno or errno.EOPNOTSUPP,
                               f"{self.label}: cannot inject a crash: {exc}") from None

    def trace(self) -> str:
        """The text of debugfs ``trace0``, or "" if there is none (offline, no trace buffer)."""
        text = self.tree.read_debug(self.dev, "trace0")
        if text is None:
            return ""
        end = text.find("\0")
        return text if end < 0 else text[:end]

    # -- events -------------------------------------------------------------------------
    def subscribe(self, callback: Callable[[RprocEvent], object]) -> Callable[[], None]:
        unsubscribe = self._subscribers.subscribe(callback)
        self._start_polling()

        def unsubscribe_and_stop() -> None:
            unsubscribe()
            self._stop_polling()

        return unsubscribe_and_stop

    def _start_polling(self) -> None:
        with self._lock:
            if self._poller is None:
                self._poll_stop = threading.Event()
                # the first state is read here: a change right after subscribe() counts
                self._poller = threading.Thread(
                    target=self._poll, args=(self._poll_stop, self._poll_state()),
                    name=f"amplink-{self.dev}-events", daemon=True)
                self._poller.start()

    def _stop_polling(self) -> None:
        """Stop watching once nobody is subscribed (a subscriber added meanwhile starts
        a new watch: both are decided under the lock)."""
        with self._lock:
            if self._subscribers:
                return
            stop, poller = self._poll_stop, self._poller
            self._poll_stop = self._poller = None
        if stop is not None and poller is not None:
            stop.set()
            if poller is not threading.current_thread():
                poller.join(max(1.0, 4 * self.poll_interval))

    def _poll(self, stop: threading.Event, last: RprocState | None) -> None:
        while not stop.wait(self.poll_interval):
            state = self._poll_state()
            if state is None or state == last:
                continue
            events = [RprocEvent("state", state, f"{last} -> {state}")]
            if state is RprocState.CRASHED:
                events.append(RprocEvent("crash", state))
            elif last is RprocState.CRASHED and state is RprocState.RUNNING:
                events.append(RprocEvent("recovered", state))
            last = state
            for event in events:
                self._subscribers.emit(event)
            if state is RprocState.DELETED:
                return

    def _poll_state(self) -> RprocState | None:
        try:
            return self.state
        except ProcessorNotFound:
            return RprocState.DELETED  # the device is gone
        except (RprocControlError, MalformedAttribute) as exc:
            log.debug("%s: cannot read the state: %s", self.label, exc)
            return None

