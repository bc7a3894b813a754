"""OpenAMP's Linux-userspace profile: amplink as its host or its remote.

OpenAMP runs both of its roles as Linux processes that share the POSIX shared memory
"openamp.shm" and kick each other over the Unix socket /tmp/openamp.event.0. amplink
plays either role (virtio driver = host, device = remote), as either end of the
socket, against OpenAMP's programs or against itself::

    from amplink.platforms.openamp import OpenAmpLink, DEMO_SERVICE

    with OpenAmpLink.open("host", server=False) as link:
        ep = link.create_service(DEMO_SERVICE)
        link.wait_peer(ep, timeout=10)
        ep.send(b"...")

``amplink openamp host|remote`` runs OpenAMP's echo demo (:mod:`.echo`).
"""

from ..openamp_abi import (
    DEFAULT_PEER_TIMEOUT,
    DEMO_SERVICE,
    OPENAMP_SHM_NAME,
    OPENAMP_SHM_SIZE,
    OPENAMP_SOCKET_PATH,
)
from .echo import EchoRun, EchoServed, serve_echo
from .errors import PeerTimeout, StaleSharedMemory
from .link import OpenAmpLink, Role
from .profile import OpenAmpConfig

__all__ = [
    "DEFAULT_PEER_TIMEOUT", "DEMO_SERVICE", "OPENAMP_SHM_NAME", "OPENAMP_SHM_SIZE",
    "OPENAMP_SOCKET_PATH", "EchoRun", "EchoServed", "OpenAmpConfig", "OpenAmpLink",
    "PeerTimeout", "Role", "StaleSharedMemory", "serve_echo",
]
