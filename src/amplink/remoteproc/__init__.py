"""Remote processors: resource table, firmware loading, states, coredump and trace log."""

from .addrmap import DeviceAddressMap, Window
from .constants import (
    FW_RSC_ADDR_ANY,
    RSC_CARVEOUT,
    RSC_DEVMEM,
    RSC_TRACE,
    RSC_VDEV,
    RSC_VENDOR_END,
    RSC_VENDOR_START,
)
from .coredump import CoredumpMode, write_coredump
from .elf_loader import FirmwareImage, ResourceTableSection, Segment
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
    "Carveout",
    "CoredumpMode",
    "DevMem",
    "DeviceAddressMap",
    "FirmwareImage",
    "InvalidTransition",
    "Resource",
    "ResourceTable",
    "ResourceTableSection",
    "RprocState",
    "Segment",
    "Trace",
    "TraceFollower",
    "UnknownResource",
    "VdevEntry",
    "VendorHook",
    "VendorHookResult",
    "VendorResource",
    "Window",
    "check_transition",
    "process_vendor",
    "read_trace",
    "write_coredump",
]
