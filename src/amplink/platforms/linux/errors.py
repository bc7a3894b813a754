"""Typed errors of the remoteproc control files (sysfs, debugfs, /dev/remoteprocN).

The kernel answers a refused write with an errno and nothing else (the reason goes to
the kernel log). :func:`error_from_errno` turns that errno into one of the classes
below; each derives from :class:`~amplink.errors.AmplinkError`, from :class:`OSError`
(``.errno`` is the kernel's answer) and from the built-in that matches it, so
``except ValueError`` catches a rejected string and ``except FileNotFoundError`` a
missing processor. :class:`~amplink.platforms.linux.rproc.LinuxRemoteProc` re-raises
them with a message that says what to do. The base class, EBUSY
(:class:`~amplink.remoteproc.errors.RprocBusy`) and
:class:`~amplink.remoteproc.errors.NotBooted` are those of the lifecycle engine
(:mod:`amplink.remoteproc.errors`), shared by every platform.
"""

from __future__ import annotations

import errno
import os

from ...errors import AmplinkError
from ...remoteproc.errors import NotBooted, RprocBusy, RprocControlError

__all__ = [
    "ControlPermissionError", "FirmwareNotFound", "InvalidControlValue", "MalformedAttribute",
    "NotBooted", "NotSupported", "ProcessorExists", "ProcessorNotFound", "RprocBusy",
    "RprocControlError", "SupervisorError", "SupervisorUnavailable", "error_from_errno",
    "error_from_oserror",
]


class InvalidControlValue(RprocControlError, ValueError):
    """EINVAL: a value the kernel does not accept, or an operation this state does not allow."""


class ProcessorNotFound(RprocControlError, FileNotFoundError):
    """ENOENT: no such processor, attribute or debugfs file."""


class FirmwareNotFound(ProcessorNotFound):
    """ENOENT on boot: the kernel (or simulator) found no firmware of that name."""


class ControlPermissionError(RprocControlError, PermissionError):
    """EACCES / EPERM: read-only attribute, or not allowed (run as root or add a udev rule)."""


class NotSupported(RprocControlError):
    """The kernel lacks the feature (no debugfs, no /dev/remoteprocN, no such ioctl)."""


class ProcessorExists(RprocControlError, FileExistsError):
    """EEXIST: a simulated processor of that name already exists."""


class MalformedAttribute(AmplinkError, ValueError):
    """A control file holds a value the kernel does not document (e.g. state "invalid")."""


class SupervisorError(AmplinkError, ConnectionError):
    """The simulator's supervisor is unreachable or broke its protocol."""


class SupervisorUnavailable(SupervisorError):
    """No supervisor answers (none runs, a stale socket, or one on its way out)."""


_BY_ERRNO: dict[int, type[RprocControlError]] = {
    errno.EBUSY: RprocBusy,
    errno.EINVAL: InvalidControlValue,
    errno.ERANGE: InvalidControlValue,
    errno.ENOENT: ProcessorNotFound,
    errno.ENODEV: ProcessorNotFound,
    errno.EACCES: ControlPermissionError,
    errno.EPERM: ControlPermissionError,
    errno.EOPNOTSUPP: NotSupported,
    errno.ENOTTY: NotSupported,
    errno.ENOSYS: NotSupported,
    errno.EEXIST: ProcessorExists,
}


def error_from_errno(err: int | None, message: str) -> RprocControlError:
    """The typed error for ``err`` (an unknown or missing errno becomes EIO)."""
    if err is None or err not in errno.errorcode:
        err = errno.EIO
    return _BY_ERRNO.get(err, RprocControlError)(err, message)


def error_from_oserror(exc: OSError, what: str) -> RprocControlError:
    """The typed error for an OSError raised while accessing ``what`` (a path or name)."""
    if isinstance(exc, RprocControlError):
        return exc
    reason = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
    return error_from_errno(exc.errno, f"{what}: {reason}")
