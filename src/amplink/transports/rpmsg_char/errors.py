"""Typed errors of the rpmsg character devices: every errno of the kernel, kept.

:func:`kernel_error` turns the OSError of a system call on ``/dev/rpmsg_ctrlN`` or
``/dev/rpmsgN`` into amplink's error for that condition; ``.errno`` stays the kernel's
answer (for :class:`~amplink.errors.MessageTooLarge` it is EMSGSIZE by class).
"""

from __future__ import annotations

import errno
import os

from ...errors import AmplinkError, LinkDown, MessageTooLarge, NoBufferAvailable, NotSupported

#: what a vanished device answers: the endpoint (or the whole rpmsg device) is gone.
#: EPIPE: read/write/poll after the kernel removed the endpoint; ENETRESET: open of an
#: endpoint device whose channel went; ENODEV/ENXIO: the character device is gone.
VANISHED = frozenset({errno.EPIPE, errno.ENODEV, errno.ENXIO, errno.ENETRESET})


class RpmsgCharError(AmplinkError, OSError):
    """The kernel refused an rpmsg_char operation (``.errno`` is its answer)."""


class DeviceBusy(RpmsgCharError):
    """EBUSY: the endpoint device is open already (the kernel allows one opener)."""


class InvalidRequest(RpmsgCharError, ValueError):
    """EINVAL: the kernel refused the request (an address in use, a channel's own
    endpoint that cannot be destroyed, an unknown ioctl)."""


class DevicePermissionError(RpmsgCharError, PermissionError):
    """EACCES / EPERM: not allowed (run as root or add a udev rule for the devices)."""


class DeviceNotFound(RpmsgCharError, FileNotFoundError):
    """ENOENT: no such device (or sysfs entry)."""


class MalformedSysfs(AmplinkError, ValueError):
    """A sysfs file of the rpmsg bus holds what the kernel never writes there."""


_BY_ERRNO: dict[int, type[RpmsgCharError]] = {
    errno.EBUSY: DeviceBusy,
    errno.EINVAL: InvalidRequest,
    errno.EACCES: DevicePermissionError,
    errno.EPERM: DevicePermissionError,
    errno.ENOENT: DeviceNotFound,
}


def kernel_error(exc: OSError, what: str) -> AmplinkError:
    """The typed error for ``exc``, raised by a system call on ``what`` (a path, and the
    operation); the errno is kept."""
    if isinstance(exc, AmplinkError):
        return exc
    err = exc.errno if exc.errno is not None else errno.EIO
    reason = exc.strerror or os.strerror(err)
    if err == errno.EMSGSIZE:
        return MessageTooLarge(f"{what}: the kernel refused the message as larger than its "
                               "MTU (EMSGSIZE): nothing was sent")
    if err == errno.EAGAIN:
        return NoBufferAvailable(f"{what}: no transmit buffer free (EAGAIN)")
    if err in VANISHED:
        return LinkDown(err, f"{what}: the device went away ({reason})")
    if err in (errno.EOPNOTSUPP, errno.ENOTTY, errno.ENOSYS):
        return NotSupported(f"{what}: not supported by this kernel ({reason})", err)
    return _BY_ERRNO.get(err, RpmsgCharError)(err, f"{what}: {reason}")
