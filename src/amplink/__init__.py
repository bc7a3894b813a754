"""amplink: asymmetric multiprocessing for Python.

rpmsg over virtio rings in shared memory (both roles), simulated remote processors with
the remoteproc lifecycle, Linux's remoteproc processors (or a simulator's tree of them)
through the same API, and the building blocks under them.
"""

from .errors import (
    AddressError,
    AmplinkError,
    EndpointClosed,
    FirmwareError,
    LinkDown,
    MessageTooLarge,
    NoBufferAvailable,
    PeerTimeout,
    ReceiveTimeout,
    RemoteProtocolError,
    SendTimeout,
)
from .memory import RegionAllocator, SharedRegion
from .platforms.linux import LinuxRemoteProc, list_processors
from .platforms.sim import SimProcessor, SimRemoteProc
from .platforms.sim_layout import LinkConfig
from .remoteproc.api import CrashReason, RemoteProcessor, RprocEvent
from .remoteproc.core import RemoteProc
from .remoteproc.coredump import CoredumpMode
from .remoteproc.errors import NotBooted, RprocBusy
from .remoteproc.states import InvalidTransition, RprocState
from .rpmsg.bus import RpmsgBus
from .rpmsg.channel import RpmsgChannel, RpmsgDriver
from .rpmsg.endpoint import Endpoint
from .rpmsg.stats import EndpointStatistics, LinkStatistics
from .rpmsg.wire import RPMSG_ADDR_ANY, RPMSG_NS_ADDR

__version__ = "0.1.0"

__all__ = [
    "RPMSG_ADDR_ANY", "RPMSG_NS_ADDR", "AddressError", "AmplinkError", "CoredumpMode",
    "CrashReason", "Endpoint", "EndpointClosed", "EndpointStatistics", "FirmwareError",
    "InvalidTransition", "LinkConfig", "LinkDown", "LinkStatistics", "LinuxRemoteProc",
    "MessageTooLarge", "NoBufferAvailable", "NotBooted", "PeerTimeout", "ReceiveTimeout",
    "RegionAllocator",
    "RemoteProc", "RemoteProcessor", "RemoteProtocolError", "RpmsgBus", "RpmsgChannel",
    "RpmsgDriver", "RprocBusy", "RprocEvent", "RprocState", "SendTimeout", "SharedRegion",
    "SimProcessor", "SimRemoteProc", "list_processors",
]
