"""Building a link over the kernel's rpmsg character devices."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from ...link.runtime import Link
from .backend import DEFAULT_MAX_PAYLOAD, RpmsgCharBackend
from .device import DeviceOps, OsDeviceOps
from .errors import DeviceNotFound, kernel_error
from .sysfs import DEV_ROOT, SYS_ROOT, ControlDevice, RpmsgSysfs


def find_control(sysfs: RpmsgSysfs, ctrl: str | None) -> ControlDevice:
    """The control device ``ctrl`` (``rpmsg_ctrlN``), or the only one there is."""
    if ctrl is not None:
        return sysfs.control(ctrl)
    controls = sysfs.controls()
    if len(controls) != 1:
        names = ", ".join(c.node for c in controls) or "none"
        raise DeviceNotFound(errno.ENOENT, f"{sysfs.class_dir} has {len(controls)} rpmsg "
                             f"control devices ({names}): say which")
    return controls[0]


def rpmsg_char_link(
    ctrl: str | None = None,
    *,
    sys_root: Path | str = SYS_ROOT,
    dev_root: Path | str = DEV_ROOT,
    ops: DeviceOps | None = None,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    writable_poll: bool | None = None,
    open_timeout: float = 2.0,
    name: str | None = None,
    **link_options: Any,
) -> Link:
    """A link over the rpmsg device of control device ``ctrl`` (``rpmsg_ctrlN``; default:
    the only one). The control device is opened once here, so that a missing permission
    shows now; ``link_options`` go to :class:`~amplink.link.runtime.Link`."""
    sysfs = RpmsgSysfs(sys_root)
    control = find_control(sysfs, ctrl)
    ops = ops or OsDeviceOps()
    path = Path(dev_root) / control.node
    try:
        ops.close(ops.open(path, os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        raise kernel_error(exc, f"{path} open") from None
    backend = RpmsgCharBackend(control, sysfs, dev_root=dev_root, ops=ops,
                               max_payload=max_payload, writable_poll=writable_poll,
                               open_timeout=open_timeout)
    try:
        link = Link(backend, name=name or control.node, **link_options)
    except BaseException:
        backend.close()
        raise
    backend.on_device_gone = link.mark_down
    return link
