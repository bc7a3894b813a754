"""Real remote processors through Linux's remoteproc class (sysfs, debugfs, /dev/remoteprocN).

The same code drives a simulator's tree (see :mod:`amplink.service.supervisor`): every
file access goes through the :class:`ControlTree` seam of :mod:`.attributes`.
"""

from .attributes import (
    CLASS_ROOT,
    DEBUG_ROOT,
    DEV_ROOT,
    FIRMWARE_DIR,
    ControlSocketTree,
    ControlTree,
    FileOps,
    RprocDevice,
    SysfsAttributes,
    is_simulator_tree,
    open_tree,
)
from .errors import (
    ControlPermissionError,
    FirmwareNotFound,
    InvalidControlValue,
    MalformedAttribute,
    NotBooted,
    NotSupported,
    ProcessorExists,
    ProcessorNotFound,
    RprocBusy,
    RprocControlError,
    SupervisorError,
    SupervisorUnavailable,
)
from .rproc import LinuxRemoteProc, list_processors

__all__ = [
    "CLASS_ROOT", "DEBUG_ROOT", "DEV_ROOT", "FIRMWARE_DIR", "ControlPermissionError",
    "ControlSocketTree", "ControlTree", "FileOps", "FirmwareNotFound", "InvalidControlValue",
    "LinuxRemoteProc", "MalformedAttribute", "NotBooted", "NotSupported", "ProcessorExists",
    "ProcessorNotFound", "RprocBusy", "RprocControlError", "RprocDevice",
    "SupervisorError", "SupervisorUnavailable", "SysfsAttributes", "is_simulator_tree",
    "list_processors", "open_tree",
]
