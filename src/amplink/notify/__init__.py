"""Doorbells (eventfd, AF_UNIX socket, polling) and the waiter that sleeps on them."""

from .doorbell import Doorbell, EventfdDoorbell, PollingDoorbell, SocketDoorbell
from .waiter import Waiter, wait_readable

__all__ = [
    "Doorbell", "EventfdDoorbell", "PollingDoorbell", "SocketDoorbell", "Waiter", "wait_readable",
]
