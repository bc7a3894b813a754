"""Shared memory: regions, device-address translation and allocation."""

from .allocator import RegionAllocator, align_up
from .region import SharedRegion

__all__ = ["RegionAllocator", "SharedRegion", "align_up"]
