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
from .memory import SharedRegion
from .platforms.inprocess import LinkPair
from .platforms.linux import LinuxRemoteProc, list_processors
from .platforms.openamp import OpenAmpConfig, OpenAmpLink, StaleSharedMemory
from .platforms.sim import FirmwareStartError, SimProcessor, SimRemoteProc
from .platforms.sim_layout import LinkConfig
from .remoteproc.api import CrashReason, RemoteProcessor, RprocEvent
from .remoteproc.constants import FW_RSC_ADDR_ANY
from .remoteproc.core import RemoteProc
from .remoteproc.coredump import CoredumpMode
from .remoteproc.errors import NotBooted, RprocBusy
from .remoteproc.rsc_table import Carveout, DevMem, ResourceTable, Trace
from .remoteproc.states import InvalidTransition, RprocState
from .rpmsg.bus import RpmsgBus
from .rpmsg.channel import RpmsgChannel, RpmsgDriver
from .rpmsg.endpoint import Endpoint
from .rpmsg.stats import EndpointStatistics, LinkStatistics
from .rpmsg.wire import RPMSG_ADDR_ANY, RPMSG_NS_ADDR
from .virtio.vdev import VIRTIO_ID_RPMSG, VdevEntry, VringEntry

__version__ = "0.1.0"

__all__ = [
    "FW_RSC_ADDR_ANY", "RPMSG_ADDR_ANY", "RPMSG_NS_ADDR", "VIRTIO_ID_RPMSG", "AddressError",
    "AmplinkError", "Carveout", "CoredumpMode", "CrashReason", "DevMem", "Endpoint",
    "EndpointClosed", "EndpointStatistics", "FirmwareError", "FirmwareStartError",
    "InvalidTransition", "LinkConfig", "LinkDown", "LinkPair", "LinkStatistics", "LinuxRemoteProc",
    "MessageTooLarge", "NoBufferAvailable", "NotBooted", "OpenAmpConfig", "OpenAmpLink",
    "PeerTimeout", "ReceiveTimeout", "RemoteProc", "RemoteProcessor", "RemoteProtocolError",
    "ResourceTable", "RpmsgBus", "RpmsgChannel", "RpmsgDriver", "RprocBusy", "RprocEvent",
    "RprocState", "SendTimeout", "SharedRegion", "SimProcessor", "SimRemoteProc",
    "StaleSharedMemory", "Trace", "VdevEntry", "VringEntry", "list_processors",
]
