"""Remote processors: resource table, firmware loading, states, coredump and trace log,
and the lifecycle engine that puts them together (:class:`RemoteProc` over a platform's
:class:`PlatformOps`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs
    from .addrmap import DeviceAddressMap
    from .api import CrashReason, RemoteProcessor, RprocEvent
    from .constants import (
        FW_RSC_ADDR_ANY,
        RSC_CARVEOUT,
        RSC_DEVMEM,
        RSC_TRACE,
        RSC_VDEV,
        RSC_VENDOR_END,
        RSC_VENDOR_START,
    )
    from .core import RemoteProc, RestartPolicy, RprocStatistics, RprocTraceFollower
    from .coredump import CoredumpMode, write_coredump
    from .devmem import Allocation, DeviceMemory
    from .elf_loader import FirmwareImage, ResourceTableSection, Segment
    from .errors import NotBooted, RprocBusy
    from .image import ElfImage, LoadableImage
    from .ops import CrashReport, PlatformOps, StartInfo
    from .resources import ProcessedResources, VdevResource, process_resources
    from .rsc_table import (
        Carveout,
        DevMem,
        Resource,
        ResourceTable,
        Trace,
        UnknownResource,
        VdevEntry,
        VendorHook,
        VendorHookResult,
        VendorResource,
        process_vendor,
    )
    from .states import ALLOWED_TRANSITIONS, InvalidTransition, RprocState, check_transition
    from .trace import TraceFollower, read_trace

# name -> the module defining it, imported on first use: see amplink._lazy
_EXPORTS = {
    "DeviceAddressMap": ".addrmap",
    "CrashReason": ".api",
    "RemoteProcessor": ".api",
    "RprocEvent": ".api",
    "FW_RSC_ADDR_ANY": ".constants",
    "RSC_CARVEOUT": ".constants",
    "RSC_DEVMEM": ".constants",
    "RSC_TRACE": ".constants",
    "RSC_VDEV": ".constants",
    "RSC_VENDOR_END": ".constants",
    "RSC_VENDOR_START": ".constants",
    "RemoteProc": ".core",
    "RestartPolicy": ".core",
    "RprocStatistics": ".core",
    "RprocTraceFollower": ".core",
    "CoredumpMode": ".coredump",
    "write_coredump": ".coredump",
    "Allocation": ".devmem",
    "DeviceMemory": ".devmem",
    "FirmwareImage": ".elf_loader",
    "ResourceTableSection": ".elf_loader",
    "Segment": ".elf_loader",
    "NotBooted": ".errors",
    "RprocBusy": ".errors",
    "ElfImage": ".image",
    "LoadableImage": ".image",
    "CrashReport": ".ops",
    "PlatformOps": ".ops",
    "StartInfo": ".ops",
    "ProcessedResources": ".resources",
    "VdevResource": ".resources",
    "process_resources": ".resources",
    "Carveout": ".rsc_table",
    "DevMem": ".rsc_table",
    "Resource": ".rsc_table",
    "ResourceTable": ".rsc_table",
    "Trace": ".rsc_table",
    "UnknownResource": ".rsc_table",
    "VdevEntry": ".rsc_table",
    "VendorHook": ".rsc_table",
    "VendorHookResult": ".rsc_table",
    "VendorResource": ".rsc_table",
    "process_vendor": ".rsc_table",
    "ALLOWED_TRANSITIONS": ".states",
    "InvalidTransition": ".states",
    "RprocState": ".states",
    "check_transition": ".states",
    "TraceFollower": ".trace",
    "read_trace": ".trace",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "ALLOWED_TRANSITIONS",
    "FW_RSC_ADDR_ANY",
    "RSC_CARVEOUT",
    "RSC_DEVMEM",
    "RSC_TRACE",
    "RSC_VDEV",
    "RSC_VENDOR_END",
    "RSC_VENDOR_START",
    "Allocation",
    "Carveout",
    "CoredumpMode",
    "CrashReason",
    "CrashReport",
    "DevMem",
    "DeviceAddressMap",
    "DeviceMemory",
    "ElfImage",
    "FirmwareImage",
    "InvalidTransition",
    "LoadableImage",
    "NotBooted",
    "PlatformOps",
    "ProcessedResources",
    "RemoteProc",
    "RemoteProcessor",
    "Resource",
    "ResourceTable",
    "RestartPolicy",
    "ResourceTableSection",
    "RprocBusy",
    "RprocEvent",
    "RprocState",
    "RprocStatistics",
    "RprocTraceFollower",
    "Segment",
    "StartInfo",
    "Trace",
    "TraceFollower",
    "UnknownResource",
    "VdevEntry",
    "VdevResource",
    "VendorHook",
    "VendorHookResult",
    "VendorResource",
    "check_transition",
    "process_resources",
    "process_vendor",
    "read_trace",
    "write_coredump",
]
