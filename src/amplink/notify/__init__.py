"""Doorbells (eventfd, AF_UNIX socket, polling), the waiter that sleeps on them, a fence."""

from .doorbell import Doorbell, EventfdDoorbell, PollingDoorbell, SocketDoorbell
from .fence import full_fence
from .waiter import Waiter

__all__ = [
    "Doorbell", "EventfdDoorbell", "PollingDoorbell", "SocketDoorbell", "Waiter", "full_fence",
]
