"""rpmsg through the Linux kernel's character devices (``/dev/rpmsg_ctrlN``, ``/dev/rpmsgN``).

:func:`rpmsg_char_link` builds a :class:`~amplink.link.runtime.Link` whose endpoints are
the kernel's endpoint devices; :class:`RpmsgSysfs` lists the rpmsg bus's channels and
devices; :class:`DeviceOps` is the seam every system call goes through.
"""

from .backend import DEFAULT_MAX_PAYLOAD, RpmsgCharBackend
from .device import DeviceOps, OsDeviceOps
from .errors import (
    DeviceBusy,
    DeviceNotFound,
    DevicePermissionError,
    InvalidRequest,
    MalformedSysfs,
    RpmsgCharError,
    kernel_error,
)
from .link import find_control, rpmsg_char_link
from .sysfs import ChannelDevice, ControlDevice, EndpointDevice, RpmsgSysfs

__all__ = [
    "DEFAULT_MAX_PAYLOAD", "ChannelDevice", "ControlDevice", "DeviceBusy", "DeviceNotFound",
    "DeviceOps", "DevicePermissionError", "EndpointDevice", "InvalidRequest",
    "MalformedSysfs", "OsDeviceOps", "RpmsgCharBackend", "RpmsgCharError",
    "RpmsgSysfs", "find_control", "kernel_error", "rpmsg_char_link",
]
