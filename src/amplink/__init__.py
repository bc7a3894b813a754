"""amplink: asymmetric multiprocessing for Python.

rpmsg over virtio rings in shared memory (both roles), simulated remote processors,
and the building blocks under them.
"""

from .errors import (
    AddressError,
    AmplinkError,
    EndpointClosed,
    FirmwareError,
    LinkDown,
    MessageTooLarge,
    NoBufferAvailable,
    ReceiveTimeout,
    RemoteProtocolError,
    SendTimeout,
)
from .memory import RegionAllocator, SharedRegion
from .platforms.sim import SimProcessor
from .platforms.sim_layout import LinkConfig
from .rpmsg.bus import RpmsgBus
from .rpmsg.channel import RpmsgChannel, RpmsgDriver
from .rpmsg.endpoint import Endpoint
from .rpmsg.stats import EndpointStatistics, LinkStatistics
from .rpmsg.wire import RPMSG_ADDR_ANY, RPMSG_NS_ADDR

__version__ = "0.1.0"

__all__ = [
    "RPMSG_ADDR_ANY", "RPMSG_NS_ADDR", "AddressError", "AmplinkError", "Endpoint",
    "EndpointClosed", "EndpointStatistics", "FirmwareError", "LinkConfig", "LinkDown",
    "LinkStatistics", "MessageTooLarge", "NoBufferAvailable", "ReceiveTimeout",
    "RegionAllocator", "RemoteProtocolError", "RpmsgBus", "RpmsgChannel", "RpmsgDriver",
    "SendTimeout", "SharedRegion", "SimProcessor",
]
