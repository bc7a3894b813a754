"""The rpmsg character-device ABI of Linux (include/uapi/linux/rpmsg.h), with no I/O.

Facts of the kernel's drivers/rpmsg/rpmsg_char.c and rpmsg_ctrl.c that the backend
relies on are kept here, next to the numbers they concern.
"""

from __future__ import annotations

import struct

from ...errors import InvalidArgument
from ...rpmsg.wire import RPMSG_ADDR_ANY, RPMSG_NAME_SIZE

#: ``struct rpmsg_endpoint_info { char name[32]; __u32 src; __u32 dst; }`` (40 bytes)
ENDPOINT_INFO = struct.Struct("=32sII")

#: /dev/rpmsg_ctrlN: a new endpoint device /dev/rpmsgM (the endpoint itself is created
#: when that file is opened, and destroyed when it is closed)
RPMSG_CREATE_EPT_IOCTL = 0x4028B501  # _IOW(0xb5, 1, struct rpmsg_endpoint_info)
#: /dev/rpmsgM: remove a ctrl-created endpoint device (EINVAL on a channel's own one).
#: Linux 6.1 does not check that the device is still there: never issue it twice, nor
#: on a device the kernel already removed (poll() reports POLLERR for such a file)
RPMSG_DESTROY_EPT_IOCTL = 0xB502  # _IO(0xb5, 2)
#: /dev/rpmsg_ctrlN (Linux >= 5.18): a local rpmsg channel device; a driver that
#: matches its name binds to it and the kernel announces it to the remote
RPMSG_CREATE_DEV_IOCTL = 0x4028B503  # _IOW(0xb5, 3, struct rpmsg_endpoint_info)
RPMSG_RELEASE_DEV_IOCTL = 0x4028B504  # _IOW(0xb5, 4, struct rpmsg_endpoint_info)
#: /dev/rpmsgM (kernels after 6.1; EINVAL before): is the remote restricting what we send
#: (an int written back; EPOLLPRI signals a change)
RPMSG_GET_OUTGOING_FLOWCONTROL = 0x8004B505  # _IOR(0xb5, 5, int)
#: /dev/rpmsgM: ask the remote to pause (1) or resume (0) sending; the argument is the
#: value itself; EOPNOTSUPP on transports without flow control (virtio)
RPMSG_SET_INCOMING_FLOWCONTROL = 0x8004B506  # _IOR(0xb5, 6, int)

#: channel names rpmsg_char binds to by itself: such a channel gets its own /dev/rpmsgM
#: (its "default endpoint", at the channel's local address); "rpmsg_chrdev" in kernels
#: after 6.1 (Qualcomm's GLINK names its channel so)
RAW_CHANNEL_NAMES = ("rpmsg-raw", "rpmsg_chrdev")
#: devices of the bus that are the kernel's own plumbing, not the remote's channels
INTERNAL_DEVICE_NAMES = ("rpmsg_ns", "rpmsg_ctrl")

#: the kernel keeps local addresses in an idr of ints: explicit ones must stay below 2**31
MAX_LOCAL_ADDRESS = 0x7FFF_FFFE
#: the largest rpmsg payload (the header's length field is 16 bits)
MAX_RPMSG_PAYLOAD = 0xFFFF


def encode_endpoint_info(name: str, src: int, dst: int) -> bytes:
    """``struct rpmsg_endpoint_info`` for ``name`` (1..31 bytes), ``src`` and ``dst``."""
    raw = name.encode()
    if not raw or len(raw) >= RPMSG_NAME_SIZE or b"\0" in raw:
        raise InvalidArgument(f"name: rpmsg names are 1..31 bytes without NUL, got {name!r}")
    for value, what in ((src, "src"), (dst, "dst")):
        if not 0 <= value <= RPMSG_ADDR_ANY:
            raise InvalidArgument(f"{what}: an rpmsg address is a 32-bit value, got {value}")
    return ENDPOINT_INFO.pack(raw, src, dst)
