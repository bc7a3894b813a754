"""A fake of the Linux kernel's rpmsg character devices, for tests without a kernel.

:class:`FakeRpmsgKernel` keeps a sysfs tree (real directories, files and symlinks laid
out as Linux 6.1 lays them, see :mod:`amplink.transports.rpmsg_char.sysfs`) and a /dev
directory under ``root``, and plays the remote processor: channels it announces,
handlers that answer what is sent to them. :class:`FakeOps` is the
:class:`~amplink.transports.rpmsg_char.device.DeviceOps` the backend calls: it follows
rpmsg_char's and rpmsg_ctrl's semantics (checked against drivers/rpmsg/*.c of 6.1):

* one opener per endpoint device (EBUSY), open of a removed one fails (ENOENT);
* one message per read (cut to the size asked) and per write; EMSGSIZE over the MTU,
  EAGAIN without a free transmit buffer (O_NONBLOCK), EINVAL to RPMSG_ADDR_ANY;
* EPIPE on read/write and POLLERR on poll once the kernel removed the endpoint;
* RPMSG_DESTROY_EPT_IOCTL: EINVAL on a channel's own device; issued on a device already
  removed it fails the test (the real 6.1 kernel frees the device twice and crashes);
* flow-control ioctls: EINVAL (as 6.1) unless ``flow_control`` (a later kernel), where
  the transport answers SET with EOPNOTSUPP unless ``transport_flow_control``.

The endpoint fds are real (one end of a SOCK_SEQPACKET socketpair), so epoll and
asyncio watch them as they watch /dev/rpmsgN; the other end is the kernel's, which
the fake writes received messages into.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from amplink.rpmsg.wire import RPMSG_ADDR_ANY
from amplink.transports.rpmsg_char import uapi

#: ``handler(kernel, payload, src, dst)``: the remote's code for its address ``dst``
Handler = Callable[["FakeRpmsgKernel", bytes, int, int], None]


def echo(kernel: FakeRpmsgKernel, payload: bytes, src: int, dst: int) -> None:
    kernel.send_to(src, payload)


@dataclass(eq=False)
class FakeEndpointDevice:
    node: str
    name: str
    src: int
    dst: int
    dir: Path
    default: bool  # a channel's own device (made by rpmsg_char on the bus)
    alive: bool = True
    ours: socket.socket | None = None
    theirs: socket.socket | None = None
    addr: int | None = None  # the endpoint's address while open


@dataclass(eq=False)
class FakeChannel:
    name: str
    src: int
    dst: int
    dir: Path
    entry: Path
    eptdev: FakeEndpointDevice | None = None


@dataclass
class Calls:
    """What the backend asked of the fake kernel."""

    ioctls: list[tuple[str, int]] = field(default_factory=list)
    opens: list[str] = field(default_factory=list)


class FakeRpmsgKernel:
    """A fake kernel with one remote processor ``remoteproc0`` and its rpmsg device."""

    def __init__(self, root: Path, *, mtu: int = 496, release: str = "6.1.0-fake",
                 flow_control: bool = False, transport_flow_control: bool = False,
                 processor: str = "m4") -> None:
        self.root = root
        self.sys = root / "sys"
        self.dev = root / "dev"
        self.mtu = mtu
        self.release = release
        self.flow_control = flow_control
        self.transport_flow_control = transport_flow_control
        self.lock = threading.RLock()
        self.calls = Calls()
        self.tx_free: int | None = None  # None: always a free transmit buffer
        self.remote_flow_restricted = 0
        self.incoming_paused: dict[int, bool] = {}
        self.sent: list[tuple[int, int, bytes]] = []  # (src, dst, payload) to the remote
        self.handlers: dict[int, Handler] = {}
        self.channels: list[FakeChannel] = []
        self.eptdevs: dict[str, FakeEndpointDevice] = {}
        self.by_fd: dict[int, FakeEndpointDevice] = {}
        self.ctrl_fds: set[int] = set()
        self.busy_elsewhere: set[str] = set()  # device nodes another program holds open
        self.denied: set[str] = set()  # device nodes open() refuses with EACCES
        self.device_present = True
        self._next_ept = 0
        self._next_dynamic = 1024
        for d in (self.sys / "bus" / "rpmsg" / "devices", self.sys / "class" / "rpmsg",
                  self.sys / "class" / "remoteproc", self.dev):
            d.mkdir(parents=True, exist_ok=True)
        rproc_dir = self.sys / "devices" / "platform" / "fake-rproc" / "remoteproc" / "remoteproc0"
        rproc_dir.mkdir(parents=True)
        for attr, value in (("name", processor), ("state", "running"), ("firmware", "fw.elf"),
                            ("recovery", "enabled"), ("coredump", "disabled")):
            (rproc_dir / attr).write_text(value + "\n")
        (self.sys / "class" / "remoteproc" / "remoteproc0").symlink_to(
            os.path.relpath(rproc_dir, self.sys / "class" / "remoteproc"))
        self.transport = rproc_dir / "remoteproc0#vdev0buffer" / "virtio0"
        self.transport.mkdir(parents=True)
        self._bus_device("rpmsg_ns", 53, 53)
        ctrl_bus = self._bus_device("rpmsg_ctrl", 0, 0)
        self.ctrl_dir = ctrl_bus / "rpmsg" / "rpmsg_ctrl0"
        self.ctrl_dir.mkdir(parents=True)
        (self.ctrl_dir / "device").symlink_to("../..")
        self._class_link("rpmsg_ctrl0", self.ctrl_dir)
        (self.dev / "rpmsg_ctrl0").touch()

    # -- the sysfs tree --------------------------------------------------------------------
    def _bus_device(self, name: str, src: int, dst: int) -> Path:
        def signed(v: int) -> int:
            return v - (1 << 32) if v >= 1 << 31 else v

        device = f"virtio0.{name}.{signed(src)}.{signed(dst)}"
        path = self.transport / device
        path.mkdir()
        self._write_attrs(path, name, f"0x{src:x}", f"0x{dst:x}")
        entry = self.sys / "bus" / "rpmsg" / "devices" / device
        entry.symlink_to(os.path.relpath(path, entry.parent))
        return path

    @staticmethod
    def _write_attrs(path: Path, name: str, src: str, dst: str) -> None:
        for attr, value in (("name", name), ("src", src), ("dst", dst)):
            (path / attr).write_text(value + "\n")

    def _class_link(self, node: str, path: Path) -> None:
        entry = self.sys / "class" / "rpmsg" / node
        entry.symlink_to(os.path.relpath(path, entry.parent))

    def _make_eptdev(self, parent: Path, name: str, src: int, dst: int, *,
                     default: bool) -> FakeEndpointDevice:
        node = f"rpmsg{self._next_ept}"
        self._next_ept += 1
        path = parent / node
        path.mkdir(parents=True)

        def signed(v: int) -> str:
            return str(v - (1 << 32) if v >= 1 << 31 else v)

        self._write_attrs(path, name, signed(src), signed(dst))
        self._class_link(node, path)
        (self.dev / node).touch()
        eptdev = FakeEndpointDevice(node, name, src, dst, path, default)
        self.eptdevs[node] = eptdev
        return eptdev

    def _remove_eptdev(self, eptdev: FakeEndpointDevice) -> None:
        """The kernel's rpmsg_chrdev_eptdev_destroy: the files go, readers get EPIPE."""
        eptdev.alive = False
        eptdev.addr = None
        if eptdev.theirs is not None:
            eptdev.theirs.shutdown(socket.SHUT_RDWR)  # wakes pollers of the open file
        for p in (self.sys / "class" / "rpmsg" / eptdev.node, self.dev / eptdev.node):
            p.unlink(missing_ok=True)
        _rmtree(eptdev.dir)
        self.eptdevs.pop(eptdev.node, None)

    # -- the remote processor --------------------------------------------------------------
    def announce(self, name: str, dst: int, handler: Handler | None = echo) -> FakeChannel:
        """The remote announces ``name`` at ``dst`` (its handler answers what comes)."""
        with self.lock:
            path = self._bus_device(name, RPMSG_ADDR_ANY, dst)
            entry = self.sys / "bus" / "rpmsg" / "devices" / path.name
            channel = FakeChannel(name, RPMSG_ADDR_ANY, dst, path, entry)
            if name in uapi.RAW_CHANNEL_NAMES:  # rpmsg_char binds: its default endpoint
                channel.src = self._dynamic_address()
                (path / "src").write_text(f"0x{channel.src:x}\n")
                channel.eptdev = self._make_eptdev(path / "rpmsg", name, channel.src, dst,
                                                   default=True)
            self.channels.append(channel)
            if handler is not None:
                self.handlers[dst] = handler
            return channel

    def _dynamic_address(self) -> int:
        addr = self._next_dynamic
        self._next_dynamic += 1
        return addr

    def remove_channel(self, channel: FakeChannel) -> None:
        """The remote announces the end of a channel: its device and own endpoint go."""
        with self.lock:
            if channel.eptdev is not None:
                self._remove_eptdev(channel.eptdev)
            channel.entry.unlink()
            _rmtree(channel.dir)
            self.channels.remove(channel)

    def remove_device(self) -> None:
        """The rpmsg device goes (the processor stopped): every device with it."""
        with self.lock:
            self.device_present = False
            for eptdev in list(self.eptdevs.values()):
                self._remove_eptdev(eptdev)
            for entry in (self.sys / "bus" / "rpmsg" / "devices").iterdir():
                entry.unlink()
            (self.sys / "class" / "rpmsg" / "rpmsg_ctrl0").unlink()
            (self.dev / "rpmsg_ctrl0").unlink()
            _rmtree(self.transport)
            self.channels.clear()

    def send_to(self, addr: int, payload: bytes) -> bool:
        """The remote sends ``payload`` to local address ``addr`` (dropped if none is open)."""
        with self.lock:
            for eptdev in self.eptdevs.values():
                if eptdev.addr == addr and eptdev.theirs is not None and eptdev.alive:
                    eptdev.theirs.send(payload)
                    return True
            return False

    def open_endpoints(self) -> list[FakeEndpointDevice]:
        return [e for e in self.eptdevs.values() if e.ours is not None]

    # -- system calls ------------------------------------------------------------------------
    def eptdev_of(self, fd: int) -> FakeEndpointDevice:
        eptdev = self.by_fd.get(fd)
        if eptdev is None:
            raise OSError(errno.EBADF, "not an endpoint fd of the fake kernel")
        return eptdev


def _rmtree(path: Path) -> None:
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    for child in path.iterdir():
        _rmtree(child)
    path.rmdir()


class FakeOps:
    """The backend's system calls, answered by a :class:`FakeRpmsgKernel`."""

    def __init__(self, kernel: FakeRpmsgKernel) -> None:
        self.k = kernel

    def open(self, path: Path, flags: int) -> int:
        k = self.k
        with k.lock:
            node = Path(path).name
            k.calls.opens.append(node)
            if Path(path).parent != k.dev or not Path(path).exists():
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
            if node in k.denied:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            if node == "rpmsg_ctrl0":
                fd = os.eventfd(0, os.EFD_CLOEXEC)
                k.ctrl_fds.add(fd)
                return fd
            eptdev = k.eptdevs[node]
            if eptdev.ours is not None or node in k.busy_elsewhere:
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
            if eptdev.src == RPMSG_ADDR_ANY:
                eptdev.addr = k._dynamic_address()
            elif any(e.addr == eptdev.src for e in k.eptdevs.values()):
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))  # idr: address in use
            else:
                eptdev.addr = eptdev.src
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            theirs.setblocking(False)  # a full queue fails the test instead of hanging it
            if flags & os.O_NONBLOCK:
                ours.setblocking(False)
            eptdev.ours, eptdev.theirs = ours, theirs
            k.by_fd[ours.fileno()] = eptdev
            return ours.fileno()

    def read(self, fd: int, size: int) -> bytes:
        eptdev = self.k.eptdev_of(fd)
        if not eptdev.alive:
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
        assert eptdev.ours is not None
        return eptdev.ours.recv(size)  # BlockingIOError when empty (non-blocking)

    def write(self, fd: int, data: bytes | bytearray | memoryview) -> int:
        k = self.k
        with k.lock:
            eptdev = k.eptdev_of(fd)
            if not eptdev.alive:
                raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
            if eptdev.dst == RPMSG_ADDR_ANY or eptdev.addr is None:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            if len(data) > k.mtu:
                raise OSError(errno.EMSGSIZE, os.strerror(errno.EMSGSIZE))
            if k.tx_free is not None:
                if k.tx_free <= 0:
                    raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
                k.tx_free -= 1
            payload = bytes(data)
            k.sent.append((eptdev.addr, eptdev.dst, payload))
            handler = k.handlers.get(eptdev.dst)
            src = eptdev.addr
        if handler is not None:
            handler(k, payload, src, eptdev.dst)
        return len(data)

    def ioctl(self, fd: int, request: int, arg: bytes | int) -> bytes | int:
        k = self.k
        with k.lock:
            if fd in k.ctrl_fds:
                return self._ctrl_ioctl(request, arg)
            eptdev = k.eptdev_of(fd)
            names = {uapi.RPMSG_DESTROY_EPT_IOCTL: "DESTROY_EPT",
                     uapi.RPMSG_GET_OUTGOING_FLOWCONTROL: "GET_OUTGOING_FLOWCONTROL",
                     uapi.RPMSG_SET_INCOMING_FLOWCONTROL: "SET_INCOMING_FLOWCONTROL"}
            k.calls.ioctls.append((names.get(request, hex(request)), eptdev.src))
            if request == uapi.RPMSG_DESTROY_EPT_IOCTL:
                if eptdev.default:
                    raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
                if not eptdev.alive:
                    raise AssertionError(f"RPMSG_DESTROY_EPT_IOCTL on {eptdev.node} which the "
                                         "kernel removed already: Linux 6.1 would crash")
                k._remove_eptdev(eptdev)
                return 0
            if request in (uapi.RPMSG_GET_OUTGOING_FLOWCONTROL,
                           uapi.RPMSG_SET_INCOMING_FLOWCONTROL) and k.flow_control:
                if request == uapi.RPMSG_GET_OUTGOING_FLOWCONTROL:
                    return k.remote_flow_restricted.to_bytes(4, "little")
                if not k.transport_flow_control:
                    raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
                assert isinstance(arg, int)
                k.incoming_paused[eptdev.src] = bool(arg)
                return 0
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    def _ctrl_ioctl(self, request: int, arg: bytes | int) -> bytes | int:
        k = self.k
        if not k.device_present:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        assert isinstance(arg, bytes) and len(arg) == uapi.ENDPOINT_INFO.size
        raw, src, dst = uapi.ENDPOINT_INFO.unpack(arg)
        name = raw.split(b"\0", 1)[0].decode()
        if request == uapi.RPMSG_CREATE_EPT_IOCTL:
            k.calls.ioctls.append(("CREATE_EPT", src))
            k._make_eptdev(k.ctrl_dir, name, src, dst, default=False)
            return arg
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    def poll(self, fd: int, events: int) -> int:
        eptdev = self.k.by_fd.get(fd)
        if eptdev is not None and not eptdev.alive:
            return select.POLLERR
        poller = select.poll()
        poller.register(fd, events)
        ready = poller.poll(0)
        return ready[0][1] if ready else 0

    def close(self, fd: int) -> None:
        k = self.k
        with k.lock:
            if fd in k.ctrl_fds:
                k.ctrl_fds.discard(fd)
                os.close(fd)
                return
            eptdev = k.by_fd.pop(fd)
            assert eptdev.ours is not None and eptdev.theirs is not None
            eptdev.ours.close()
            eptdev.theirs.close()
            eptdev.ours = eptdev.theirs = None
            eptdev.addr = None  # the release destroys the endpoint, the device stays

    def kernel_release(self) -> str:
        return self.k.release
