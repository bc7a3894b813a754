"""amplink as a vhost-user virtio-rpmsg device (virtio id 7) for a virtual machine.

A VMM with vhost-user (User-Mode Linux's virtio_uml, QEMU's vhost-user-device, ...)
connects to a Unix socket; amplink answers as the device's back end and runs any
amplink firmware (``main(link)``) in the device role on the guest's own rings, so a
real Linux kernel's rpmsg stack talks to it. See docs/vhost-user.md.
"""

from .backend import VhostUserBackend
from .protocol import VhostUserError
from .server import ServerStatistics, VhostUserServer, load_firmware

__all__ = ["ServerStatistics", "VhostUserBackend", "VhostUserError", "VhostUserServer",
           "load_firmware"]
