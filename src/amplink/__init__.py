"""amplink: asymmetric multiprocessing for Python.

rpmsg over virtio rings in shared memory (both roles), simulated remote processors with
the remoteproc lifecycle, simulated Apple RTKit co-processors behind a mailbox, Linux's
remoteproc processors (or a simulator's tree of them) through the same API, and the
building blocks under them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs
    from .errors import (
        AccessDenied,
        AddressError,
        AmplinkError,
        EndpointClosed,
        FirmwareError,
        InvalidArgument,
        InvalidArgumentType,
        LinkDown,
        MessageTooLarge,
        NoBufferAvailable,
        NotSupported,
        PeerTimeout,
        ReceiveTimeout,
        RemoteProtocolError,
        SendTimeout,
        ServiceError,
        ServiceUnavailable,
        UnknownTarget,
    )
    from .link import (
        Capabilities,
        Endpoint,
        EndpointStatistics,
        HeldMessage,
        Link,
        LinkStatistics,
        RpmsgBus,
        RpmsgChannel,
        RpmsgDriver,
        TxLoan,
    )
    from .memory import SharedRegion
    from .platforms.inprocess import LinkPair
    from .platforms.linux import LinuxRemoteProc, list_processors
    from .platforms.openamp import OpenAmpConfig, OpenAmpLink, StaleSharedMemory
    from .platforms.rtkit import RtkitEndpoint, RtkitRemoteProc
    from .platforms.sim import FirmwareStartError, SimProcessor, SimRemoteProc
    from .platforms.sim.layout import LinkConfig
    from .remoteproc.api import CrashReason, RemoteProcessor, RprocEvent
    from .remoteproc.constants import FW_RSC_ADDR_ANY
    from .remoteproc.core import RemoteProc, RestartPolicy
    from .remoteproc.coredump import CoredumpMode
    from .remoteproc.errors import NotBooted, RprocBusy
    from .remoteproc.rsc_table import Carveout, DevMem, ResourceTable, Trace
    from .remoteproc.states import InvalidTransition, RprocState
    from .rpmsg.wire import RPMSG_ADDR_ANY, RPMSG_NS_ADDR
    from .transports.service import connect_link
    from .virtio.vdev import VIRTIO_ID_RPMSG, VdevEntry, VringEntry

__version__ = "0.1.0"

# name -> the module defining it, imported on first use: see amplink._lazy
_EXPORTS = {
    "AccessDenied": ".errors",
    "AddressError": ".errors",
    "AmplinkError": ".errors",
    "EndpointClosed": ".errors",
    "FirmwareError": ".errors",
    "InvalidArgument": ".errors",
    "InvalidArgumentType": ".errors",
    "NotSupported": ".errors",
    "LinkDown": ".errors",
    "MessageTooLarge": ".errors",
    "NoBufferAvailable": ".errors",
    "PeerTimeout": ".errors",
    "ReceiveTimeout": ".errors",
    "RemoteProtocolError": ".errors",
    "SendTimeout": ".errors",
    "ServiceError": ".errors",
    "ServiceUnavailable": ".errors",
    "UnknownTarget": ".errors",
    "connect_link": ".transports.service",
    "SharedRegion": ".memory",
    "LinkPair": ".platforms.inprocess",
    "LinuxRemoteProc": ".platforms.linux",
    "list_processors": ".platforms.linux",
    "OpenAmpConfig": ".platforms.openamp",
    "OpenAmpLink": ".platforms.openamp",
    "StaleSharedMemory": ".platforms.openamp",
    "RtkitEndpoint": ".platforms.rtkit",
    "RtkitRemoteProc": ".platforms.rtkit",
    "FirmwareStartError": ".platforms.sim",
    "SimProcessor": ".platforms.sim",
    "SimRemoteProc": ".platforms.sim",
    "LinkConfig": ".platforms.sim.layout",
    "CrashReason": ".remoteproc.api",
    "RemoteProcessor": ".remoteproc.api",
    "RprocEvent": ".remoteproc.api",
    "FW_RSC_ADDR_ANY": ".remoteproc.constants",
    "RemoteProc": ".remoteproc.core",
    "RestartPolicy": ".remoteproc.core",
    "CoredumpMode": ".remoteproc.coredump",
    "NotBooted": ".remoteproc.errors",
    "RprocBusy": ".remoteproc.errors",
    "Carveout": ".remoteproc.rsc_table",
    "DevMem": ".remoteproc.rsc_table",
    "ResourceTable": ".remoteproc.rsc_table",
    "Trace": ".remoteproc.rsc_table",
    "InvalidTransition": ".remoteproc.states",
    "RprocState": ".remoteproc.states",
    "Capabilities": ".link",
    "Endpoint": ".link",
    "EndpointStatistics": ".link",
    "HeldMessage": ".link",
    "Link": ".link",
    "LinkStatistics": ".link",
    "RpmsgBus": ".link",
    "RpmsgChannel": ".link",
    "RpmsgDriver": ".link",
    "TxLoan": ".link",
    "RPMSG_ADDR_ANY": ".rpmsg.wire",
    "RPMSG_NS_ADDR": ".rpmsg.wire",
    "VIRTIO_ID_RPMSG": ".virtio.vdev",
    "VdevEntry": ".virtio.vdev",
    "VringEntry": ".virtio.vdev",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "FW_RSC_ADDR_ANY", "RPMSG_ADDR_ANY", "RPMSG_NS_ADDR", "VIRTIO_ID_RPMSG", "AccessDenied",
    "AddressError", "AmplinkError", "Capabilities", "Carveout", "CoredumpMode", "CrashReason",
    "DevMem", "Endpoint", "EndpointClosed", "EndpointStatistics", "FirmwareError",
    "FirmwareStartError", "HeldMessage", "InvalidArgument", "InvalidArgumentType",
    "InvalidTransition", "Link", "LinkConfig", "LinkDown", "LinkPair", "LinkStatistics",
    "LinuxRemoteProc", "MessageTooLarge", "NoBufferAvailable", "NotBooted", "NotSupported",
    "OpenAmpConfig", "OpenAmpLink", "PeerTimeout", "ReceiveTimeout", "RemoteProc",
    "RemoteProcessor", "RemoteProtocolError", "ResourceTable", "RestartPolicy", "RpmsgBus",
    "RpmsgChannel", "RpmsgDriver", "RprocBusy", "RprocEvent", "RprocState", "RtkitEndpoint",
    "RtkitRemoteProc", "SendTimeout", "ServiceError", "ServiceUnavailable", "SharedRegion",
    "SimProcessor", "SimRemoteProc", "StaleSharedMemory", "Trace", "TxLoan", "UnknownTarget",
    "VdevEntry", "VringEntry", "connect_link", "list_processors",
]
