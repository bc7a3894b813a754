"""Shared memory: regions, device-address translation, allocation, a memory fence, and
shared buffers (the dma-buf model: run-time allocation from providers, attachment to a
processor through its IOMMU, CPU/device ownership, fd hand-over, a table of lent buffers).

Names are imported on first use (see :mod:`amplink._lazy`): every process imports this
package, firmware included, and most need only the regions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs
    from .access import Access
    from .allocator import RegionAllocator, align_up
    from .buffers import CPU, BufferSlice, CpuAccess, SharedBuffer
    from .errors import (
        BufferClosed,
        IommuFault,
        OwnershipError,
        PeerBufferError,
        ProviderUnavailable,
        ReadOnlyBuffer,
        ViewsOutstanding,
    )
    from .fdpass import BufferHeader, FdPassFault, recv_buffer, send_buffer
    from .fence import full_fence
    from .iommu import Attachment, Fault, Iommu, IommuFaultReason, IommuStatistics
    from .providers import (
        BufferProvider,
        CarveoutProvider,
        DmaHeapProvider,
        MemfdProvider,
        UdmabufProvider,
        allocate_buffer,
        list_dma_heaps,
    )
    from .region import SharedRegion
    from .table import (
        LOCAL,
        BufferFaultReason,
        BufferRef,
        BufferTable,
        BufferTableStatistics,
    )

# name -> the module defining it, imported on first use
_EXPORTS = {
    "Access": ".access",
    "RegionAllocator": ".allocator",
    "align_up": ".allocator",
    "CPU": ".buffers",
    "BufferSlice": ".buffers",
    "CpuAccess": ".buffers",
    "SharedBuffer": ".buffers",
    "BufferClosed": ".errors",
    "IommuFault": ".errors",
    "OwnershipError": ".errors",
    "PeerBufferError": ".errors",
    "ProviderUnavailable": ".errors",
    "ReadOnlyBuffer": ".errors",
    "ViewsOutstanding": ".errors",
    "BufferHeader": ".fdpass",
    "FdPassFault": ".fdpass",
    "recv_buffer": ".fdpass",
    "send_buffer": ".fdpass",
    "full_fence": ".fence",
    "Attachment": ".iommu",
    "Fault": ".iommu",
    "Iommu": ".iommu",
    "IommuFaultReason": ".iommu",
    "IommuStatistics": ".iommu",
    "BufferProvider": ".providers",
    "CarveoutProvider": ".providers",
    "DmaHeapProvider": ".providers",
    "MemfdProvider": ".providers",
    "UdmabufProvider": ".providers",
    "allocate_buffer": ".providers",
    "list_dma_heaps": ".providers",
    "SharedRegion": ".region",
    "LOCAL": ".table",
    "BufferFaultReason": ".table",
    "BufferRef": ".table",
    "BufferTable": ".table",
    "BufferTableStatistics": ".table",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "CPU", "LOCAL", "Access", "Attachment", "BufferClosed", "BufferFaultReason",
    "BufferHeader", "BufferProvider", "BufferRef", "BufferSlice", "BufferTable",
    "BufferTableStatistics", "CarveoutProvider", "CpuAccess", "DmaHeapProvider",
    "Fault", "FdPassFault", "Iommu", "IommuFault", "IommuFaultReason", "IommuStatistics",
    "MemfdProvider", "OwnershipError", "PeerBufferError", "ProviderUnavailable",
    "ReadOnlyBuffer", "RegionAllocator", "SharedBuffer", "SharedRegion", "UdmabufProvider",
    "ViewsOutstanding", "align_up", "allocate_buffer", "full_fence", "list_dma_heaps",
    "recv_buffer", "send_buffer",
]
