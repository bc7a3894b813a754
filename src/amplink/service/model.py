"""The kernel's side of the remoteproc control files, over any :class:`RemoteProcessor`.

:class:`RemoteprocModel` answers reads and writes of ``remoteprocN/<attr>``, of the
debugfs files and of ``/dev/remoteprocN`` the way Linux's remoteproc core does
(drivers/remoteproc/remoteproc_sysfs.c, _debugfs.c, _cdev.c), and renders the current
values as files in a directory tree so that ``cat`` works. It is the second
implementation of those semantics (the first is the kernel): the simulator's supervisor
serves it over its control socket, and the tests' fake kernel behind a
:class:`~amplink.platforms.linux.attributes.FileOps`.

Refusals raise the typed errors of :mod:`amplink.platforms.linux.errors` with the
kernel's errno:

===========  =========================================================================
state        "start": EBUSY if running or attached; "stop": EINVAL unless running or
             attached; "detach": EINVAL (not supported here); anything else: EINVAL
firmware     EBUSY unless offline; the name ends at the first newline; empty: EINVAL
recovery     "enabled" (and recover if crashed), "disabled", "recover" (acts only when
             crashed); anything else: EINVAL
coredump     EBUSY while crashed; "disabled", "enabled", "inline"; anything else: EINVAL
name         read-only: EACCES
crash        (debugfs) an unsigned integer, the crash type (else EINVAL); ignored while
             crashed (handled once) or offline
trace0       (debugfs) the trace text; exists while the processor is not offline
===========  =========================================================================

Values compare like sysfs_streq(): one trailing newline is accepted.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ..platforms.linux.attributes import device_sort_key
from ..platforms.linux.errors import RprocControlError, error_from_errno
from ..remoteproc.api import CrashReason, RemoteProcessor
from ..remoteproc.coredump import CoredumpMode
from ..remoteproc.states import RprocState

log = logging.getLogger(__name__)

T = TypeVar("T")

#: the kernel's enum rproc_crash_type, as written to debugfs ``crash``
CRASH_TYPES: dict[int, CrashReason] = {
    0: CrashReason.MMUFAULT,
    1: CrashReason.WATCHDOG,
    2: CrashReason.FATAL_ERROR,
}
_KSTRTOUINT = re.compile(r"\+?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
_UINT_MAX = 0xFFFFFFFF
_ACTIVE = (RprocState.RUNNING, RprocState.ATTACHED)


def _streq(value: str, expected: str) -> bool:
    """sysfs_streq(): equal, except for one trailing newline."""
    return value.removesuffix("\n") == expected


def _kstrtouint(value: str) -> int | None:
    """kstrtouint(s, 0): decimal, 0x hex or 0 octal, one trailing newline; None if invalid."""
    match = _KSTRTOUINT.fullmatch(value.removesuffix("\n"))
    if match is None:
        return None
    digits = match.group(1)
    if digits[:2].lower() == "0x":
        return int(digits[2:], 16)
    return int(digits, 8) if digits.startswith("0") else int(digits)


def _fail(err: int, message: str) -> RprocControlError:
    return error_from_errno(err, message)


def _kernel_error(exc: BaseException, what: str) -> RprocControlError:
    """The errno answer for an exception raised by a RemoteProcessor implementation."""
    if isinstance(exc, RprocControlError):
        return exc
    reason = str(exc)
    if isinstance(exc, OSError) and exc.errno:
        err = exc.errno
        reason = exc.strerror or reason  # without the "[Errno N]" prefix
        if exc.filename is not None:  # e.g. a firmware file that does not exist
            reason = f"{exc.filename}: {reason}"
    elif isinstance(exc, TimeoutError):
        err = errno.ETIMEDOUT
    elif isinstance(exc, ValueError):
        err = errno.EINVAL
    elif isinstance(exc, LookupError):
        err = errno.ENOENT
    elif isinstance(exc, NotImplementedError):
        err = errno.EOPNOTSUPP
    else:
        err = errno.EIO
    return _fail(err, f"{what}: {reason}")


@dataclass
class _Entry:
    rproc: RemoteProcessor
    shutdown_on_release: bool = False
    rendered: dict[Path, str] = field(default_factory=dict)
    #: held by an operation on this processor (a boot may take seconds) and its rendering
    lock: threading.RLock = field(default_factory=threading.RLock)


class RemoteprocModel:
    """Remote processors exposed like the kernel's remoteproc class.

    ``class_root`` receives ``remoteprocN/{state,firmware,name,recovery,coredump}``,
    ``debug_root`` (if not None) ``remoteprocN/{crash,trace0}``. With
    ``sysfs_config=False`` recovery and coredump live in debugfs instead, as before
    Linux 5.13. Thread-safe, and an operation on one processor (a boot may take
    seconds) holds only that processor's lock: the others, and every read, go on
    meanwhile. Call :meth:`refresh` when a processor may have changed on its own (a
    crash), so the files follow.
    """

    def __init__(self, class_root: Path | str, debug_root: Path | str | None = None, *,
                 sysfs_config: bool = True) -> None:
        self.class_root = Path(class_root)
        self.debug_root = None if debug_root is None else Path(debug_root)
        self.sysfs_config = sysfs_config
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.RLock()  # the table of entries only
        self.class_root.mkdir(parents=True, exist_ok=True)
        if self.debug_root is not None:
            self.debug_root.mkdir(parents=True, exist_ok=True)

    # -- devices ------------------------------------------------------------------------
    def add(self, rproc: RemoteProcessor) -> str:
        """Register ``rproc`` as the lowest free ``remoteprocN`` (like ida_alloc) and render it."""
        with self._lock:
            index = 0
            while f"remoteproc{index}" in self._entries:
                index += 1
            dev = f"remoteproc{index}"
            entry = self._entries[dev] = _Entry(rproc)
            with entry.lock:
                self._render(dev, entry)
            return dev

    def remove(self, dev: str) -> RemoteProcessor:
        """Unregister ``dev`` (rproc_del): shut it down whatever its state, delete its files."""
        with self._operation(dev) as entry:
            try:
                _power_off(entry.rproc)
            finally:
                with self._lock:
                    del self._entries[dev]
                for base in (self.class_root, self.debug_root):
                    if base is not None:
                        shutil.rmtree(base / dev, ignore_errors=True)
            return entry.rproc

    @contextlib.contextmanager
    def _operation(self, dev: str) -> Iterator[_Entry]:
        """Hold ``dev``'s lock (ENOENT if it is gone, also after waiting for the lock)."""
        with self._lock:
            entry = self._entry(dev)
        with entry.lock:
            with self._lock:
                if self._entries.get(dev) is not entry:
                    raise _fail(errno.ENOENT, f"{dev}: no such remote processor")
            yield entry

    def devices(self) -> list[str]:
        """The registered ``remoteprocN`` names, in numeric order."""
        with self._lock:
            return sorted(self._entries, key=device_sort_key)

    def processor(self, dev: str) -> RemoteProcessor:
        """The processor behind ``dev`` (ENOENT if none)."""
        with self._lock:
            return self._entry(dev).rproc

    def find(self, name: str) -> str | None:
        """The device of the processor called ``name``, if any."""
        with self._lock:
            for dev, entry in self._entries.items():
                if entry.rproc.name == name:
                    return dev
            return None

    def _entry(self, dev: str) -> _Entry:
        entry = self._entries.get(dev)
        if entry is None:
            raise _fail(errno.ENOENT, f"{dev}: no such remote processor")
        return entry

    # -- sysfs --------------------------------------------------------------------------
    def _class_attrs(self) -> tuple[str, ...]:
        base = ("state", "firmware", "name")
        return base + ("recovery", "coredump") if self.sysfs_config else base

    def _debug_attrs(self) -> tuple[str, ...]:
        return () if self.sysfs_config else ("recovery", "coredump")

    def show(self, dev: str, attr: str) -> str:
        """The text of ``remoteprocN/<attr>``, as the kernel prints it (without waiting
        for an operation on the processor, as sysfs reads do not)."""
        with self._lock:
            rproc = self._entry(dev).rproc
        if attr not in self._class_attrs():
            raise _fail(errno.ENOENT, f"{dev}/{attr}: no such attribute")
        return self._show(rproc, attr, dev)

    def _show(self, rproc: RemoteProcessor, attr: str, dev: str) -> str:
        what = f"{dev}/{attr}"
        if attr == "state":
            return f"{self._call(lambda: rproc.state, what)}\n"
        if attr == "firmware":
            if self._call(lambda: rproc.state, what) is RprocState.ATTACHED:
                return "unknown\n"  # started by someone else: the kernel cannot know
            return f"{self._call(lambda: rproc.firmware, what)}\n"
        if attr == "name":
            return f"{rproc.name}\n"
        if attr == "recovery":
            return "enabled\n" if self._call(lambda: rproc.recovery, what) else "disabled\n"
        if attr == "coredump":
            return f"{self._call(lambda: rproc.coredump, what)}\n"
        if attr == "trace0":
            return self._call(rproc.trace, what)
        raise _fail(errno.ENOENT, f"{what}: no such file")

    def store(self, dev: str, attr: str, value: str) -> None:
        """Write ``value`` to ``remoteprocN/<attr>`` with the kernel's checks."""
        with self._operation(dev) as entry:
            try:
                if attr == "name":
                    raise _fail(errno.EACCES, f"{dev}/name is read-only")
                if attr not in self._class_attrs():
                    raise _fail(errno.ENOENT, f"{dev}/{attr}: no such attribute")
                self._store(entry.rproc, dev, attr, value)
            finally:
                self._render(dev, entry)

    def _store(self, rproc: RemoteProcessor, dev: str, attr: str, value: str) -> None:
        what = f"{dev}/{attr}"
        state = self._call(lambda: rproc.state, what)
        if attr == "state":
            if _streq(value, "start"):
                if state in _ACTIVE:
                    raise _fail(errno.EBUSY, f"{dev} is already {state}")
                self._call(rproc.boot, f"{dev}: boot failed")
            elif _streq(value, "stop"):
                if state not in _ACTIVE:
                    raise _fail(errno.EINVAL, f"{dev} is {state}, not running: nothing to stop")
                self._call(rproc.shutdown, f"{dev}: shutdown failed")
            elif _streq(value, "detach"):
                raise _fail(errno.EINVAL, f"{dev}: this processor cannot detach")
            else:
                raise _fail(errno.EINVAL, f"{what}: unrecognised option {value!r}")
        elif attr == "firmware":
            if state is not RprocState.OFFLINE:
                raise _fail(errno.EBUSY, f"{dev}: cannot change the firmware while {state}")
            name = value.split("\n", 1)[0]
            if not name:
                raise _fail(errno.EINVAL, f"{what}: the firmware name cannot be empty")

            def set_firmware() -> None:
                rproc.firmware = name
            self._call(set_firmware, what)
        elif attr == "recovery":
            self._store_recovery(rproc, state, what, value)
        elif attr == "coredump":
            self._store_coredump(rproc, state, what, value)

    def _store_recovery(self, rproc: RemoteProcessor, state: RprocState, what: str,
                        value: str) -> None:
        def enable(flag: bool) -> Callable[[], None]:
            def set_recovery() -> None:
                rproc.recovery = flag
            return set_recovery

        if _streq(value, "enabled"):
            self._call(enable(True), what)
        elif _streq(value, "disabled"):
            self._call(enable(False), what)
            return
        elif not _streq(value, "recover"):
            raise _fail(errno.EINVAL, f"{what}: expected enabled, disabled or recover, "
                                      f"got {value!r}")
        if state is RprocState.CRASHED:  # rproc_trigger_recovery() ignores other states
            self._call(rproc.recover, f"{what}: recovery failed")

    def _store_coredump(self, rproc: RemoteProcessor, state: RprocState, what: str,
                        value: str) -> None:
        if state is RprocState.CRASHED:
            raise _fail(errno.EBUSY, f"{what}: cannot change the coredump setting while crashed")
        try:
            mode = CoredumpMode.from_sysfs(value)
        except ValueError:
            raise _fail(errno.EINVAL, f"{what}: expected disabled, enabled or inline, "
                                      f"got {value!r}") from None

        def set_coredump() -> None:
            rproc.coredump = mode
        self._call(set_coredump, what)

    # -- debugfs ------------------------------------------------------------------------
    def debug_show(self, dev: str, name: str) -> str:
        """The text of debugfs ``remoteprocN/<name>`` (trace0; recovery, coredump if old)."""
        with self._lock:
            rproc = self._entry(dev).rproc
        if name == "trace0":
            if self._call(lambda: rproc.state, dev) is RprocState.OFFLINE:
                raise _fail(errno.ENOENT, f"{dev}/trace0: no trace buffer while offline")
            return self._show(rproc, name, dev)
        if name in self._debug_attrs():
            return self._show(rproc, name, dev)
        if name == "crash":
            raise _fail(errno.EACCES, f"{dev}/crash is write-only")
        raise _fail(errno.ENOENT, f"{dev}/{name}: no such debugfs file")

    def debug_store(self, dev: str, name: str, value: str) -> None:
        """Write to debugfs ``remoteprocN/<name>``: crash (the crash type), recovery, coredump."""
        with self._operation(dev) as entry:
            try:
                if name == "crash":
                    self._crash(entry.rproc, dev, value)
                elif name in self._debug_attrs():
                    self._store(entry.rproc, dev, name, value)
                elif name == "trace0":
                    raise _fail(errno.EACCES, f"{dev}/trace0 is read-only")
                else:
                    raise _fail(errno.ENOENT, f"{dev}/{name}: no such debugfs file")
            finally:
                self._render(dev, entry)

    def _crash(self, rproc: RemoteProcessor, dev: str, value: str) -> None:
        crash_type = _kstrtouint(value)
        if crash_type is None:
            raise _fail(errno.EINVAL, f"{dev}/crash: expected an unsigned integer (0 mmufault, "
                                      f"1 watchdog, 2 fatal error), got {value!r}")
        if crash_type > _UINT_MAX:
            raise _fail(errno.ERANGE, f"{dev}/crash: {value!r} is out of range")
        state = self._call(lambda: rproc.state, dev)
        if state in (RprocState.CRASHED, RprocState.OFFLINE):
            # the kernel's crash handler: only the first crash counts, and a stopped
            # processor is not recovered; the write itself succeeds
            log.info("%s: crash report ignored: %s", dev, state)
            return
        reason = CRASH_TYPES.get(crash_type, CrashReason.UNKNOWN)
        self._call(lambda: rproc.crash(reason), f"{dev}: crash")

    # -- /dev/remoteprocN ---------------------------------------------------------------
    def cdev_write(self, dev: str, command: str) -> None:
        """A write to ``/dev/remoteprocN``: the exact word, no newline (the kernel compares
        the bytes written), at most 10 bytes; the state checks of sysfs apply."""
        with self._operation(dev) as entry:
            try:
                if not command or len(command.encode()) > 10:
                    raise _fail(errno.EINVAL, f"/dev/{dev}: expected start, stop or detach")
                if command not in ("start", "stop", "detach"):
                    raise _fail(errno.EINVAL, f"/dev/{dev}: unrecognised command {command!r}")
                self._store(entry.rproc, dev, "state", command)
            finally:
                self._render(dev, entry)

    def cdev_set_release(self, dev: str, enabled: bool) -> None:
        """RPROC_SET_SHUTDOWN_ON_RELEASE (one flag per processor, as in the kernel)."""
        with self._operation(dev) as entry:
            entry.shutdown_on_release = enabled

    def cdev_get_release(self, dev: str) -> bool:
        """RPROC_GET_SHUTDOWN_ON_RELEASE."""
        with self._lock:
            return self._entry(dev).shutdown_on_release

    def cdev_release(self, dev: str) -> None:
        """A close of ``/dev/remoteprocN``: with the flag set, shut a running processor down."""
        with self._lock:
            if dev not in self._entries:
                return
        with self._operation(dev) as entry:
            if not entry.shutdown_on_release:
                return
            try:
                if self._call(lambda: entry.rproc.state, dev) is RprocState.RUNNING:
                    self._call(entry.rproc.shutdown, f"{dev}: shutdown on release")
            finally:
                self._render(dev, entry)

    # -- files --------------------------------------------------------------------------
    def refresh(self, dev: str | None = None) -> None:
        """Re-render the files of ``dev`` (default: every processor) from current values.

        A processor in the middle of an operation is skipped: the operation renders it
        when it ends.
        """
        with self._lock:
            entries = [(d, self._entries[d]) for d in ([dev] if dev is not None
                                                        else list(self._entries))
                       if d in self._entries]
        for d, entry in entries:
            if entry.lock.acquire(blocking=False):
                try:
                    with self._lock:
                        present = self._entries.get(d) is entry
                    if present:
                        self._render(d, entry)
                finally:
                    entry.lock.release()

    def _render(self, dev: str, entry: _Entry) -> None:  # entry.lock held
        files: dict[Path, tuple[str, int]] = {}
        for attr in self._class_attrs():
            files[self.class_root / dev / attr] = (
                self._show_or_error(entry.rproc, attr, dev), 0o444 if attr == "name" else 0o644)
        if self.debug_root is not None:
            debug = self.debug_root / dev
            files[debug / "crash"] = ("", 0o200)
            for attr in self._debug_attrs():
                files[debug / attr] = (self._show_or_error(entry.rproc, attr, dev), 0o600)
            trace = debug / "trace0"
            try:
                files[trace] = (self.debug_show(dev, "trace0"), 0o400)
            except RprocControlError:
                entry.rendered.pop(trace, None)
                trace.unlink(missing_ok=True)
        for path, (text, mode) in files.items():
            if entry.rendered.get(path) != text:
                _write_atomically(path, text, mode)
                entry.rendered[path] = text

    def _show_or_error(self, rproc: RemoteProcessor, attr: str, dev: str) -> str:
        try:
            return self._show(rproc, attr, dev)
        except RprocControlError as exc:
            log.warning("%s", exc)
            return ""

    @staticmethod
    def _call(fn: Callable[[], T], what: str) -> T:
        try:
            return fn()
        except RprocControlError:
            raise
        # the boundary to any RemoteProcessor implementation: whatever it raises must
        # become an errno answer, never take the tree (or the supervisor) down
        except Exception as exc:  # noqa: BLE001
            log.debug("%s", what, exc_info=True)
            raise _kernel_error(exc, what) from exc


def _power_off(rproc: RemoteProcessor, max_users: int = 64) -> None:
    """Shut ``rproc`` down whatever its state and user count (bounded: a count is finite)."""
    for _ in range(max_users):
        state = rproc.state
        if state in (RprocState.OFFLINE, RprocState.DELETED, RprocState.DETACHED):
            return
        rproc.shutdown()
    raise _fail(errno.EBUSY, f"{rproc.name} is still {rproc.state} after {max_users} shutdowns")


def _write_atomically(path: Path, text: str, mode: int) -> None:
    # the processor's directory is the owner's alone (the runtime directory may be
    # traversable by the users a service policy lets in)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)  # readers see the old or the new value, never half of one
