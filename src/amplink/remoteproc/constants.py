"""Constants of the remoteproc resource table (names as in Linux's remoteproc.h)."""

from __future__ import annotations

# Resource types.
RSC_CARVEOUT = 0
RSC_DEVMEM = 1
RSC_TRACE = 2
RSC_VDEV = 3
RSC_LAST = 4
# Vendor-specific types go to a platform hook; both bounds are included, as in Linux.
RSC_VENDOR_START = 128
RSC_VENDOR_END = 512

RESOURCE_TYPE_NAMES: dict[int, str] = {
    RSC_CARVEOUT: "RSC_CARVEOUT",
    RSC_DEVMEM: "RSC_DEVMEM",
    RSC_TRACE: "RSC_TRACE",
    RSC_VDEV: "RSC_VDEV",
}

# "Host, you choose": the host allocates the address and writes it back into the table.
FW_RSC_ADDR_ANY = 0xFFFF_FFFF

# Table header: ver u32, num u32, reserved[2] u32, then offset[num] u32.
RSC_TABLE_VERSION = 1
RSC_TABLE_HEADER_SIZE = 16
RSC_ENTRY_HEADER_SIZE = 4  # the type word before each body
RSC_NAME_LEN = 32

# Carveout and devmem body: da, pa, len, flags, reserved, name[32].
CARVEOUT_DA_OFFSET = 0
CARVEOUT_PA_OFFSET = 4
CARVEOUT_LEN_OFFSET = 8
CARVEOUT_FLAGS_OFFSET = 12
CARVEOUT_RESERVED_OFFSET = 16
CARVEOUT_NAME_OFFSET = 20
CARVEOUT_SIZE = 52

# Trace body: da, len, reserved, name[32].
TRACE_DA_OFFSET = 0
TRACE_LEN_OFFSET = 4
TRACE_RESERVED_OFFSET = 8
TRACE_NAME_OFFSET = 12
TRACE_SIZE = 44


def resource_type_name(rtype: int) -> str:
    """A readable name for a resource type, for messages."""
    if rtype in RESOURCE_TYPE_NAMES:
        return RESOURCE_TYPE_NAMES[rtype]
    if RSC_VENDOR_START <= rtype <= RSC_VENDOR_END:
        return f"vendor type {rtype}"
    return f"unknown type {rtype}"
