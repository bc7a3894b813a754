"""The rpmsg_char backend: a link's endpoints as the Linux kernel's ``/dev/rpmsgN`` devices.

The kernel runs the rpmsg bus (virtio rings, name service, buffers); user space sees
each endpoint as a character device: one ``write()`` sends one message to the address
fixed when the device was made, one ``read()`` returns one message (without its
source: the kernel does not pass it on). So this backend's addressing is "pair".

* The remote's channels are the rpmsg bus's devices in sysfs (:mod:`.sysfs`); the link
  looks them up when a user waits for or lists channels (``channel_discovery``).
* Opening a channel that rpmsg_char bound itself ("rpmsg-raw") opens its own
  ``/dev/rpmsgM``; any other endpoint is made with RPMSG_CREATE_EPT_IOCTL on the
  control device (at an address this backend picks, so that it knows it: the kernel
  does not show an address it picked), and removed with RPMSG_DESTROY_EPT_IOCTL.
* The fds are non-blocking; the link runtime does the waiting. They sit in one epoll
  set, which is the link's doorbell (readable while an endpoint has a message).
  Linux 6.1 never reports an endpoint writable (virtio's rpmsg has no poll operation
  before 7.0), so a send that found no free buffer retries every
  ``tx_poll_interval``; where the kernel reports it, the send sleeps on EPOLLOUT.
* A device the kernel removed answers EPIPE (POLLERR for poll): its endpoint is lost
  (closed with LinkDown, errno kept) and, if the control device went too (the remote
  processor stopped or crashed), the whole link is down. The kernel removes a device's
  endpoint devices before its control device, and says nothing when the control device
  goes: after losing an endpoint while the control device is still there, a thread
  looks for its removal for a while (:data:`DEVICE_WATCH_TIME`).

Every system call goes through a :class:`~.device.DeviceOps`, so the whole backend
runs against a fake kernel in tests.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import AddressError, InvalidArgument, LinkDown, NotSupported, PeerTimeout
from ...link.backend import Backend, Capabilities, Deliver, SeenChannel
from ...notify.doorbell import Doorbell
from ...notify.waiter import Waiter
from ...rpmsg.wire import RPMSG_ADDR_ANY, RPMSG_BUF_SIZE, RPMSG_HDR_SIZE
from .device import DeviceOps, OsDeviceOps, kernel_version
from .errors import RpmsgCharError, kernel_error
from .sysfs import DEV_ROOT, ControlDevice, EndpointDevice, RpmsgSysfs
from .uapi import (
    MAX_LOCAL_ADDRESS,
    MAX_RPMSG_PAYLOAD,
    RPMSG_CREATE_EPT_IOCTL,
    RPMSG_DESTROY_EPT_IOCTL,
    RPMSG_GET_OUTGOING_FLOWCONTROL,
    RPMSG_SET_INCOMING_FLOWCONTROL,
    encode_endpoint_info,
)

log = logging.getLogger(__name__)

#: the payload of virtio's default 512-byte buffers; the kernel does not tell user space
#: its MTU, so a link over another transport (GLINK, SMD) passes its own
DEFAULT_MAX_PAYLOAD = RPMSG_BUF_SIZE - RPMSG_HDR_SIZE
#: where this backend's own local addresses start: far above the kernel's dynamic ones
#: (idr_alloc from 1024 up), so that an address picked here is not taken meanwhile
LOCAL_ADDRESS_BASE = 0x10000
#: the name of an endpoint made without one
DEFAULT_ENDPOINT_NAME = "amplink"
#: the first kernel whose virtio rpmsg reports a free transmit buffer as EPOLLOUT
WRITABLE_POLL_SINCE = (7, 0)
#: reads take the largest rpmsg payload: a message is never cut (the kernel would drop
#: the rest), even from a transport whose MTU exceeds the one configured here
READ_SIZE = MAX_RPMSG_PAYLOAD
#: after an endpoint device went while the control device is still there, how long (s)
#: and how often the backend looks whether the control device goes too
DEVICE_WATCH_TIME = 1.0
DEVICE_WATCH_PERIOD = 0.002
_OPEN_FLAGS = os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC
_IN = select.EPOLLIN
_IN_OUT = select.EPOLLIN | select.EPOLLOUT
_READ_EVENTS = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP


@dataclass(eq=False, slots=True)
class _Endpoint:
    """One open endpoint device."""

    addr: int
    dst: int
    fd: int
    node: str  # rpmsgM
    path: str  # /dev/rpmsgM, for messages
    created: bool  # made through the control device: destroyed when closed
    alive: bool = True  # False once the kernel removed it


class _EndpointsDoorbell(Doorbell):
    """The endpoints' epoll set as the link's doorbell.

    Readable while an endpoint has a message (level-triggered): nothing is consumed
    here, :meth:`RpmsgCharBackend.receive` reads the messages. Sending needs no kick: the
    kernel notifies the remote on every write.
    """

    def __init__(self, epoll: select.epoll) -> None:
        self._fd = epoll.fileno()

    def kick(self) -> None:
        pass

    def fileno(self) -> int:
        return self._fd

    def clear(self) -> None:
        pass

    def close(self) -> None:
        pass  # the backend owns the epoll set


class RpmsgCharBackend(Backend):
    """Endpoints of one rpmsg device (one control device ``ctrl``) through the kernel.

    ``max_payload``: the MTU of the kernel's transport (virtio's default 496 B unless the
    remote's firmware set other buffers); a larger message is refused before the kernel
    sees it, and should the kernel's MTU be smaller its EMSGSIZE is raised as
    MessageTooLarge. ``writable_poll``: whether the kernel reports a free transmit buffer
    as EPOLLOUT (default: from the kernel version). ``open_timeout``: how long to wait
    for a new endpoint device to appear in sysfs and /dev.
    """

    def __init__(self, ctrl: ControlDevice, sysfs: RpmsgSysfs, *,
                 dev_root: Path | str = DEV_ROOT, ops: DeviceOps | None = None,
                 max_payload: int = DEFAULT_MAX_PAYLOAD, writable_poll: bool | None = None,
                 open_timeout: float = 2.0) -> None:
        if not 0 < max_payload <= MAX_RPMSG_PAYLOAD:
            raise InvalidArgument(f"max_payload must be in 1..{MAX_RPMSG_PAYLOAD}, got "
                               f"{max_payload}")
        self.ctrl = ctrl
        self.sysfs = sysfs
        self.dev_root = Path(dev_root)
        self.ops: DeviceOps = ops or OsDeviceOps()
        if writable_poll is None:
            writable_poll = kernel_version(self.ops.kernel_release()) >= WRITABLE_POLL_SINCE
        self.writable_poll = writable_poll
        self.open_timeout = open_timeout
        self.capabilities = Capabilities(
            max_payload=max_payload, addressing="pair", address_range=(0, MAX_LOCAL_ADDRESS),
            dynamic_base=None, tx_ready=writable_poll, channel_discovery=True)
        # without EPOLLOUT nothing rings when a buffer frees: a blocked send polls
        self.tx_kicks = writable_poll
        self._epoll = select.epoll()
        self.doorbell = _EndpointsDoorbell(self._epoll)
        self.waiter = Waiter(self.doorbell)
        self._endpoints: dict[int, _Endpoint] = {}
        self._by_fd: dict[int, _Endpoint] = {}
        self._lost: list[tuple[int, LinkDown]] = []
        self._tx_armed = False
        self._closed = False
        # guards the fd table against the flow-control calls, made without the link's lock
        self._fd_lock = threading.Lock()
        self.devices_created = 0
        self.devices_destroyed = 0
        self.endpoints_lost_total = 0
        #: the link's ``mark_down`` (set by :func:`~.link.rpmsg_char_link`): a thread that
        #: sees the device go wakes the link's waiters through it
        self.on_device_gone: Callable[[str], object] | None = None
        self._device_watch: threading.Thread | None = None
        self._stop_watch = threading.Event()

    def __repr__(self) -> str:
        return f"<RpmsgCharBackend {self.ctrl.node} {len(self._endpoints)} endpoints>"

    # -- channels ----------------------------------------------------------------------------
    def discover_channels(self) -> list[SeenChannel]:
        if not self.sysfs.exists(self.ctrl):
            self._device_gone(LinkDown(errno.ENODEV, f"{self.ctrl.node} is gone"))
            self._check_up()
        raw = self._raw_endpoints()
        seen = []
        for channel in self.sysfs.channels(self.ctrl.transport):
            own = raw.get(channel.path)
            seen.append(SeenChannel(channel.name, channel.dst,
                                    own.src if own is not None else RPMSG_ADDR_ANY))
        return seen

    def _raw_endpoints(self) -> dict[str, EndpointDevice]:
        """The channels' own endpoint devices, by channel directory."""
        return self.sysfs.channel_endpoints(self.ctrl)

    # -- endpoints ---------------------------------------------------------------------------
    def open_endpoint(self, addr: int | None, name: str | None, dst: int) -> int:
        """Open a channel's own device (``addr`` its local address), or make one through
        the control device (at ``addr``, or at an address picked here)."""
        self._check_up()
        if addr is not None:
            for ept in self._raw_endpoints().values():
                if ept.src == addr and ept.dst == dst and addr not in self._endpoints:
                    return self._open(ept, created=False)
        used = self._used_addresses()
        if addr is None:
            addr = self._free_address(used)
        elif addr in used:
            raise AddressError(f"local address 0x{addr:x} is in use in the kernel (another "
                               "program's endpoint or a kernel driver's): pick another or "
                               "RPMSG_ADDR_ANY")
        info = encode_endpoint_info(name or DEFAULT_ENDPOINT_NAME, addr, dst)
        before = {e.node for e in self.sysfs.endpoints(self.ctrl.path)}
        self._ctrl_ioctl(RPMSG_CREATE_EPT_IOCTL, info, "RPMSG_CREATE_EPT_IOCTL")
        self.devices_created += 1
        ept = self._await_device(lambda e: (e.node not in before and e.src == addr
                                            and e.dst == dst))
        return self._open(ept, created=True)

    def _used_addresses(self) -> set[int]:
        """Local addresses the kernel shows in use on this transport (and ours)."""
        transport = self.ctrl.transport
        used = {e.src for e in self.sysfs.endpoints(transport)}
        used.update(c.src for c in self.sysfs.channels(transport, remote_only=False))
        used.update(self._endpoints)
        used.discard(RPMSG_ADDR_ANY)
        return used

    @staticmethod
    def _free_address(used: set[int]) -> int:
        addr = LOCAL_ADDRESS_BASE
        while addr in used:
            addr += 1
        if addr > MAX_LOCAL_ADDRESS:
            raise AddressError("no free local address left")
        return addr

    def _ctrl_ioctl(self, request: int, arg: bytes, what: str) -> None:
        """One ioctl on the control device, opened for it: a file kept open across the
        device's removal would give the kernel a stale device to act on."""
        path = self.dev_root / self.ctrl.node
        if not self.sysfs.exists(self.ctrl):
            self._device_gone(LinkDown(errno.ENODEV, f"{path} is gone"))
            self._check_up()
        try:
            fd = self.ops.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise kernel_error(exc, f"{path} open") from None
        try:
            self.ops.ioctl(fd, request, arg)
        except OSError as exc:
            raise kernel_error(exc, f"{path} {what}") from None
        finally:
            self.ops.close(fd)

    def _await_device(self, match: Any) -> EndpointDevice:
        """The endpoint device just made under the control device, once in sysfs and /dev
        (udev may create the node a moment after the kernel's uevent)."""
        deadline = time.monotonic() + self.open_timeout
        while True:
            for ept in self.sysfs.endpoints(self.ctrl.path):
                if match(ept) and (self.dev_root / ept.node).exists():
                    return ept
            if time.monotonic() >= deadline:
                raise PeerTimeout(f"the endpoint device made through {self.ctrl.node} did "
                                  f"not appear in {self.dev_root} within {self.open_timeout} s")
            time.sleep(0.005)

    def _open(self, ept: EndpointDevice, *, created: bool) -> int:
        path = self.dev_root / ept.node
        try:
            fd = self.ops.open(path, _OPEN_FLAGS)
        except OSError as exc:
            if created:  # it cannot be destroyed without an open file: say so
                log.warning("%s stays in the kernel: it could not be opened (%s)", path, exc)
            raise kernel_error(exc, f"{path} open") from None
        endpoint = _Endpoint(ept.src, ept.dst, fd, ept.node, str(path), created)
        with self._fd_lock:
            self._endpoints[ept.src] = endpoint
            self._by_fd[fd] = endpoint
            self._epoll.register(fd, _IN_OUT if self._tx_armed else _IN)
        return ept.src

    def close_endpoint(self, addr: int) -> None:
        with self._fd_lock:
            endpoint = self._endpoints.pop(addr, None)
            if endpoint is not None:
                self._release(endpoint)

    def _release(self, endpoint: _Endpoint) -> None:
        """Close an endpoint's file, destroying a device we made (fd lock held)."""
        self._unwatch(endpoint)
        if endpoint.created and endpoint.alive and not (
                self.ops.poll(endpoint.fd, select.POLLIN) & select.POLLERR):
            # POLLERR: the kernel removed it already, and a second removal would crash it
            try:
                self.ops.ioctl(endpoint.fd, RPMSG_DESTROY_EPT_IOCTL, 0)
                self.devices_destroyed += 1
            except OSError as exc:
                log.info("%s: RPMSG_DESTROY_EPT_IOCTL: %s", endpoint.path, exc)
        try:
            self.ops.close(endpoint.fd)
        except OSError as exc:
            log.info("%s: close: %s", endpoint.path, exc)

    def _unwatch(self, endpoint: _Endpoint) -> None:
        if self._by_fd.pop(endpoint.fd, None) is not None:
            self._epoll.unregister(endpoint.fd)

    # -- receiving ---------------------------------------------------------------------------
    def receive(self, deliver: Deliver, budget: int) -> int:
        if self._closed:
            return 0
        taken = 0
        read = self.ops.read
        for fd, mask in self._epoll.poll(0):
            endpoint = self._by_fd.get(fd)
            if endpoint is None or not mask & _READ_EVENTS:
                continue
            while taken < budget:
                try:
                    data = read(fd, READ_SIZE)
                except BlockingIOError:
                    break
                except OSError as exc:
                    self._vanished(endpoint, exc, "read")
                    break
                taken += 1
                # the kernel does not pass the source on: the endpoint's peer stands for it
                deliver(endpoint.dst, endpoint.addr, data, None)
            if taken >= budget:
                break
        return taken

    def rx_pending(self) -> bool:
        return not self._closed and any(mask & _READ_EVENTS for _, mask in self._epoll.poll(0))

    # -- sending -----------------------------------------------------------------------------
    def try_send(self, src: int, dst: int, payload: bytes | bytearray | memoryview) -> bool:
        endpoint = self._endpoints.get(src)
        if endpoint is None or dst != endpoint.dst:
            raise self._not_paired(endpoint, src, dst)
        if not endpoint.alive:
            raise LinkDown(errno.EPIPE, f"{endpoint.path}: the kernel removed this endpoint")
        try:
            written = self.ops.write(endpoint.fd, payload)
        except BlockingIOError:
            return False
        except OSError as exc:
            error = kernel_error(exc, f"{endpoint.path} write")
            if isinstance(error, LinkDown):
                self._vanished(endpoint, exc, "write")
            raise error from None
        if written != len(payload):
            raise RpmsgCharError(errno.EIO, f"{endpoint.path}: short write ({written} of "
                                 f"{len(payload)} B)")
        return True

    def _not_paired(self, endpoint: _Endpoint | None, src: int, dst: int) -> NotSupported:
        if endpoint is None:
            return NotSupported(f"0x{src:x} is not an endpoint of {self.ctrl.node}: a "
                                "/dev/rpmsgN sends from its own address only")
        return NotSupported(f"/dev/{endpoint.node} sends to 0x{endpoint.dst:x} only (fixed "
                            f"when it was made), not 0x{dst:x}: create an endpoint with "
                            f"dst=0x{dst:x}")

    def tx_available(self) -> bool:
        if not self.writable_poll:
            return True  # the kernel cannot tell: only a send finds out
        return any(self.ops.poll(e.fd, select.POLLOUT) & select.POLLOUT
                   for e in self._endpoints.values() if e.alive)

    # -- notifications -----------------------------------------------------------------------
    def arm(self, *, rx: bool, tx: bool) -> bool:
        if self._closed:
            return True
        if tx and self.writable_poll and not self._tx_armed:
            self._set_mask(_IN_OUT)
        wanted = (_READ_EVENTS if rx else 0) | (select.EPOLLOUT if tx else 0)
        return any(mask & wanted for _, mask in self._epoll.poll(0))

    def disarm(self) -> None:
        if self._tx_armed and not self._closed:
            self._set_mask(_IN)

    def _set_mask(self, mask: int) -> None:
        self._tx_armed = mask == _IN_OUT
        for fd in self._by_fd:
            self._epoll.modify(fd, mask)

    # -- losing endpoints and the device -----------------------------------------------------
    def _vanished(self, endpoint: _Endpoint, exc: OSError, op: str) -> None:
        """The kernel removed ``endpoint`` (its channel, or the whole device, went away)."""
        if not endpoint.alive:
            return
        endpoint.alive = False
        self._unwatch(endpoint)  # POLLERR stays set: it would wake every waiter forever
        err = exc.errno or errno.EIO
        error = LinkDown(err, f"{endpoint.path} {op}: the kernel removed this endpoint "
                         f"({os.strerror(err)})")
        if not self.sysfs.exists(self.ctrl):
            self._device_gone(error)
            return
        self.endpoints_lost_total += 1
        self._lost.append((endpoint.addr, error))
        self.endpoints_lost = True
        self._watch_device(error)

    def _watch_device(self, cause: LinkDown) -> None:
        """Look for the control device's removal for a while, in a thread (one at a time):
        the kernel removes it just after the endpoint devices when the remote goes."""
        watch = self._device_watch
        if self._closed or (watch is not None and watch.is_alive()):
            return
        watch = threading.Thread(target=self._look_for_removal, args=(cause,), daemon=True,
                                 name=f"amplink-{self.ctrl.node}-watch")
        self._device_watch = watch
        watch.start()

    def _look_for_removal(self, cause: LinkDown) -> None:
        deadline = time.monotonic() + DEVICE_WATCH_TIME
        while self.down is None and time.monotonic() < deadline:
            if self._stop_watch.wait(DEVICE_WATCH_PERIOD):
                return  # closed
            if not self.sysfs.exists(self.ctrl):
                self._device_gone(cause)
                return

    def _device_gone(self, cause: LinkDown) -> None:
        if self.down is None:
            self.down = LinkDown(cause.errno or errno.ENODEV,
                                 f"the rpmsg device {self.ctrl.node} went away (the remote "
                                 f"processor stopped or crashed, or its device was removed): "
                                 f"{cause.strerror or cause}")
        (self.on_device_gone or self.mark_down)(str(self.down))

    def _check_up(self) -> None:
        if self.down is not None:
            raise self.down.again()

    def take_lost_endpoints(self) -> list[tuple[int, LinkDown]]:
        lost, self._lost = self._lost, []
        self.endpoints_lost = False
        return lost

    # -- flow control (kernels after 6.1) ----------------------------------------------------
    def outgoing_flow_restricted(self, addr: int) -> bool:
        """RPMSG_GET_OUTGOING_FLOWCONTROL: whether the remote asked us to stop sending on
        endpoint ``addr``. NotSupported (EOPNOTSUPP) on kernels without the ioctl."""
        result = self._flow_ioctl(addr, RPMSG_GET_OUTGOING_FLOWCONTROL, bytes(4),
                                  "RPMSG_GET_OUTGOING_FLOWCONTROL")
        assert isinstance(result, bytes)
        return int.from_bytes(result, "little") != 0

    def set_incoming_flow_control(self, addr: int, paused: bool) -> None:
        """RPMSG_SET_INCOMING_FLOWCONTROL: ask the remote to pause (or resume) sending to
        endpoint ``addr``. NotSupported (EOPNOTSUPP) where the kernel or its transport
        (virtio) has no flow control."""
        self._flow_ioctl(addr, RPMSG_SET_INCOMING_FLOWCONTROL, int(bool(paused)),
                         "RPMSG_SET_INCOMING_FLOWCONTROL")

    def _flow_ioctl(self, addr: int, request: int, arg: bytes | int, what: str) -> bytes | int:
        with self._fd_lock:
            endpoint = self._endpoints.get(addr)
            if endpoint is None or self._closed:
                raise AddressError(f"0x{addr:x} is not an open endpoint of {self.ctrl.node}")
            try:
                return self.ops.ioctl(endpoint.fd, request, arg)
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.ENOTTY):
                    # Linux 6.1 answers an ioctl it does not know with EINVAL
                    raise NotSupported(f"{endpoint.path}: this kernel has no {what} (it "
                                       f"answered {errno.errorcode.get(exc.errno, exc.errno)})"
                                       ) from None
                if exc.errno == errno.EOPNOTSUPP:
                    raise NotSupported(f"{endpoint.path}: {what}: the kernel's rpmsg "
                                       "transport (virtio) has no flow control") from None
                raise kernel_error(exc, f"{endpoint.path} {what}") from None

    # -- state -------------------------------------------------------------------------------
    def statistics(self) -> Mapping[str, Any]:
        return {"kind": "rpmsg_char", "ctrl": self.ctrl.node,
                "endpoints": len(self._endpoints), "writable_poll": self.writable_poll,
                "devices_created": self.devices_created,
                "devices_destroyed": self.devices_destroyed,
                "endpoints_lost": self.endpoints_lost_total,
                "sysfs_malformed": self.sysfs.malformed}

    def close(self) -> None:
        with self._fd_lock:
            if self._closed:
                return
            self._closed = True
            for endpoint in list(self._endpoints.values()):
                self._release(endpoint)
            self._endpoints.clear()
            self._by_fd.clear()
        self._stop_watch.set()
        watch = self._device_watch
        if watch is not None and watch is not threading.current_thread():
            watch.join()
        self.waiter.close()
        self._epoll.close()
