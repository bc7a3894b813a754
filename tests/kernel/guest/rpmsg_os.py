"""The guest's rpmsg endpoints through the kernel's rpmsg_char, with plain os calls.

The checks in :mod:`checks` use only this small API (``open_channel``,
``create_endpoint``, ``send``, ``recv``, ``destroy``, ``close``), so another
implementation of it (amplink's own host-side rpmsg_char backend) can run them too.
"""

from __future__ import annotations

import fcntl
import glob
import os
import select
import struct
import time

RPMSG_CREATE_EPT_IOCTL = 0x4028B501  # _IOW(0xb5, 1, struct rpmsg_endpoint_info)
RPMSG_DESTROY_EPT_IOCTL = 0xB502  # _IO(0xb5, 2)
RPMSG_ADDR_ANY = 0xFFFFFFFF
ENDPOINT_INFO = struct.Struct("<32sII")  # name, src, dst
CLASS_DIR = "/sys/class/rpmsg"
CTRL_DEV = "/dev/rpmsg_ctrl0"


def _attr(dev: str, name: str) -> str:
    with open(os.path.join(CLASS_DIR, dev, name)) as f:
        return f.read().strip()


def _eptdevs() -> dict[str, tuple[str, int, int]]:
    """/dev/rpmsgN -> (name, src, dst) for every endpoint device that exists."""
    found = {}
    for path in glob.glob(os.path.join(CLASS_DIR, "rpmsg[0-9]*")):
        dev = os.path.basename(path)
        try:
            found[f"/dev/{dev}"] = (_attr(dev, "name"), int(_attr(dev, "src"), 0),
                                    int(_attr(dev, "dst"), 0))
        except (OSError, ValueError):
            continue  # going away meanwhile
    return found


def wait_for(predicate, timeout: float, step: float = 0.01):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


class Endpoint:
    """One /dev/rpmsgN: a message per write(), a message per read()."""

    def __init__(self, path: str, name: str, src: int, dst: int) -> None:
        self.path, self.name, self.src, self.dst = path, name, src, dst
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def send(self, data: bytes) -> None:
        n = os.write(self.fd, data)
        if n != len(data):
            raise OSError(f"short write {n} of {len(data)}")

    def recv(self, timeout: float = 2.0) -> bytes:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        if not poller.poll(timeout * 1000):
            raise TimeoutError(f"{self.path}: no message within {timeout} s")
        return os.read(self.fd, 4096)

    def destroy(self) -> None:
        """Remove a ctrl-created endpoint device (RPMSG_DESTROY_EPT_IOCTL)."""
        fcntl.ioctl(self.fd, RPMSG_DESTROY_EPT_IOCTL)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class OsRpmsg:
    """The guest's view of the rpmsg devices, through /dev and /sys."""

    def channel_devices(self) -> dict[str, tuple[str, int, int]]:
        return _eptdevs()

    def open_channel(self, name: str, timeout: float = 5.0) -> Endpoint:
        """The endpoint device the kernel made for an announced channel ``name``."""
        def find():
            return [(path, info) for path, info in _eptdevs().items() if info[0] == name]
        found = wait_for(find, timeout)
        if not found:
            raise TimeoutError(f"no /dev/rpmsgN for channel {name!r} within {timeout} s")
        path, (name, src, dst) = sorted(found)[0]
        return Endpoint(path, name, src, dst)

    def create_endpoint(self, name: str, dst: int, src: int = RPMSG_ADDR_ANY,
                        timeout: float = 5.0) -> Endpoint:
        """A new endpoint through /dev/rpmsg_ctrl0 (RPMSG_CREATE_EPT_IOCTL)."""
        before = set(_eptdevs())
        ctrl = os.open(CTRL_DEV, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(ctrl, RPMSG_CREATE_EPT_IOCTL,
                        ENDPOINT_INFO.pack(name.encode(), src, dst))
        finally:
            os.close(ctrl)
        new = wait_for(lambda: [p for p, info in _eptdevs().items()
                                if p not in before and info[0] == name], timeout)
        if not new:
            raise TimeoutError(f"the endpoint device for {name!r} did not appear")
        path = new[0]
        # udev is absent: the node appears in devtmpfs shortly after the class device
        wait_for(lambda: os.path.exists(path), timeout)
        info = _eptdevs()[path]
        return Endpoint(path, *info)
