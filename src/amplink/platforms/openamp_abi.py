"""OpenAMP's Linux-userspace profile: the names and numbers both of its processes (and
amplink in either role) agree on, and the defaults of ``amplink openamp``.

Constants alone, importing nothing of amplink: the ``amplink`` command shows them in its
``--help`` without loading the platform (:mod:`.openamp`, which uses them).
"""

from __future__ import annotations

OPENAMP_SHM_NAME = "openamp.shm"
OPENAMP_SHM_SIZE = 0x80000
OPENAMP_SOCKET_PATH = "/tmp/openamp.event.0"
#: how long to wait for the other side by default: OpenAMP's client retries ~50 s
DEFAULT_PEER_TIMEOUT = 50.0
#: the echo demo's service (endpoint) name
DEMO_SERVICE = "rpmsg-openamp-demo-channel"
#: the echo demo's largest payload: the host sends sizes 1..480
DEMO_MAX_SIZE = 480
