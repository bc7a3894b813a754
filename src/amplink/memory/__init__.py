"""Shared memory: regions, device-address translation, allocation, a memory fence."""

from .allocator import RegionAllocator, align_up
from .fence import full_fence
from .region import SharedRegion

__all__ = ["RegionAllocator", "SharedRegion", "align_up", "full_fence"]
