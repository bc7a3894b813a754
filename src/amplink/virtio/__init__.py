"""Split virtqueues (driver and device halves) and the remoteproc vdev entry."""

from .device import DeviceQueue
from .driver import DriverQueue
from .ring import VringLayout, need_event, vring_size

__all__ = ["DeviceQueue", "DriverQueue", "VringLayout", "need_event", "vring_size"]
