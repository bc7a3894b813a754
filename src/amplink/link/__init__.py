"""Links: one endpoint API over every backend (see :mod:`.runtime` for the parts)."""

from .backend import Backend, Capabilities
from .channel import RpmsgChannel, RpmsgDriver
from .core import LinkCore, NameServiceRules
from .endpoint import DEFAULT_SEND_TIMEOUT, Endpoint
from .runtime import Link, RpmsgBus
from .stats import EndpointStatistics, LinkStatistics
from .zerocopy import HeldMessage, TxLoan

__all__ = [
    "DEFAULT_SEND_TIMEOUT", "Backend", "Capabilities", "Endpoint", "EndpointStatistics",
    "HeldMessage", "Link", "LinkCore", "LinkStatistics", "NameServiceRules", "RpmsgBus",
    "RpmsgChannel", "RpmsgDriver", "TxLoan",
]
