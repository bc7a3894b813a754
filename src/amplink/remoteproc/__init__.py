"""Remote processors: resource table, firmware loading, states, coredump and trace log,
and the lifecycle engine that puts them together (:class:`RemoteProc` over a platform's
:class:`PlatformOps`).
"""

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
from .core import RemoteProc, RprocStatistics, RprocTraceFollower
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
