"""The rpmsg bus and class in sysfs: channels, endpoint devices, control devices.

Everything here is read from files the kernel writes, yet treated as untrusted: names
of directory entries are checked before they are joined to a path, every read is
bounded, and a value that does not parse raises :class:`~.errors.MalformedSysfs`.
Listings skip (and count) an entry that vanishes or does not parse, so one odd channel
cannot hide the others.

Where the kernel puts things (Linux 5.18 .. 6.1, checked on 6.1):

* ``/sys/bus/rpmsg/devices/<parent>.<name>.<src>.<dst>``: a channel (rpmsg device), a
  link to ``/sys/devices/.../virtioN/<that name>``, with ``name``, ``src``, ``dst``
  (``0x%x``: src is the local address once a driver bound, else 0xffffffff), and the
  kernel's own ``rpmsg_ns`` and ``rpmsg_ctrl`` devices;
* ``/sys/class/rpmsg/rpmsg_ctrlN``: a control device, its ``device`` link is the
  ``rpmsg_ctrl`` rpmsg device of its transport (virtioN);
* ``/sys/class/rpmsg/rpmsgM``: an endpoint device with ``name``, ``src``, ``dst`` in
  signed decimal (``-1`` for RPMSG_ADDR_ANY); it lies under the channel it belongs to
  (a channel's own one, made by rpmsg_char) or under the control device that made it.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ...rpmsg.wire import RPMSG_ADDR_ANY, RPMSG_NAME_SIZE
from .errors import DeviceNotFound, MalformedSysfs, kernel_error
from .uapi import INTERNAL_DEVICE_NAMES

log = logging.getLogger(__name__)

SYS_ROOT = Path("/sys")
DEV_ROOT = Path("/dev")
#: one sysfs page: the kernel never writes more into an attribute
MAX_ATTRIBUTE = 4096
MAX_ENTRIES = 4096  # entries looked at per directory: a flood cannot make listing hang

CTRL_NODE = re.compile(r"rpmsg_ctrl[0-9]{1,9}")
ENDPOINT_NODE = re.compile(r"rpmsg[0-9]{1,9}")
_BUS_DEVICE = re.compile(r"[^/\x00]{1,255}")


def _real_path(entry: Path) -> str:
    """Where a device's link leads; DeviceNotFound if the link went meanwhile (realpath
    raises when a link on the way is removed while it is resolved, as the kernel removes
    a device's links)."""
    try:
        return os.path.realpath(entry)
    except OSError as exc:
        raise DeviceNotFound(errno.ENOENT, f"{entry} went away: {exc.strerror}") from None


def check_component(name: str, what: str) -> str:
    """``name`` if it is a single path component (no '/', NUL, '.' or '..')."""
    if not isinstance(name, str) or not _BUS_DEVICE.fullmatch(name) or name in (".", ".."):
        raise MalformedSysfs(f"{what}: {name!r} is not a directory entry name")
    return name


def read_attribute(path: Path) -> str:
    """One attribute's text without its trailing newline (bounded, UTF-8, one line)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise kernel_error(exc, str(path)) from None
    try:
        data = os.read(fd, MAX_ATTRIBUTE + 1)
    except OSError as exc:
        raise kernel_error(exc, str(path)) from None
    finally:
        os.close(fd)
    if len(data) > MAX_ATTRIBUTE:
        raise MalformedSysfs(f"{path} holds more than {MAX_ATTRIBUTE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedSysfs(f"{path} does not hold UTF-8 text: {data[:64]!r}") from None
    text = text.removesuffix("\n")
    if "\n" in text or "\0" in text:
        raise MalformedSysfs(f"{path} holds more than one line: {text[:64]!r}")
    return text


def parse_name(text: str, path: Path) -> str:
    if not text or len(text.encode()) >= RPMSG_NAME_SIZE:
        raise MalformedSysfs(f"{path}: {text!r} is not an rpmsg name (1..31 bytes)")
    return text


def parse_hex_address(text: str, path: Path) -> int:
    """An address the bus prints as ``0x%x``."""
    if not re.fullmatch(r"0x[0-9a-f]{1,8}", text):
        raise MalformedSysfs(f"{path}: {text!r} is not an address (0x%x)")
    return int(text, 16)


def parse_signed_address(text: str, path: Path) -> int:
    """An address rpmsg_char prints as a signed ``%d`` (-1 is RPMSG_ADDR_ANY)."""
    if not re.fullmatch(r"-?[0-9]{1,10}", text):
        raise MalformedSysfs(f"{path}: {text!r} is not an address (%d)")
    value = int(text)
    if not -(1 << 31) <= value < (1 << 31):
        raise MalformedSysfs(f"{path}: {text!r} is outside a 32-bit address")
    return value & RPMSG_ADDR_ANY


@dataclass(frozen=True, slots=True)
class ChannelDevice:
    """A device on the rpmsg bus (a channel of the remote, or a local one)."""

    device: str  # its entry in /sys/bus/rpmsg/devices
    name: str
    src: int  # the local address bound to it, RPMSG_ADDR_ANY if none
    dst: int  # the remote's address, RPMSG_ADDR_ANY for a local service
    path: str  # the real directory
    transport: str  # the real directory of its transport (virtioN)


@dataclass(frozen=True, slots=True)
class EndpointDevice:
    """An endpoint character device ``/dev/rpmsgM``."""

    node: str  # rpmsgM
    name: str
    src: int
    dst: int
    path: str  # the real directory of the class device


@dataclass(frozen=True, slots=True)
class ControlDevice:
    """A control character device ``/dev/rpmsg_ctrlN``."""

    node: str  # rpmsg_ctrlN
    path: str  # the real directory of the class device
    transport: str  # the real directory of its transport (virtioN)


class RpmsgSysfs:
    """The rpmsg part of a sysfs tree at ``sys_root`` (``/sys``, or a test's copy)."""

    def __init__(self, sys_root: Path | str = SYS_ROOT) -> None:
        self.sys_root = Path(sys_root)
        self.bus_dir = self.sys_root / "bus" / "rpmsg" / "devices"
        self.class_dir = self.sys_root / "class" / "rpmsg"
        #: entries skipped by listings because they did not parse
        self.malformed = 0

    def __repr__(self) -> str:
        return f"RpmsgSysfs({str(self.sys_root)!r})"

    def _entries(self, directory: Path) -> list[str]:
        try:
            with os.scandir(directory) as it:
                names = []
                for entry in it:
                    names.append(entry.name)
                    if len(names) >= MAX_ENTRIES:
                        log.warning("%s: more than %d entries, the rest ignored", directory,
                                    MAX_ENTRIES)
                        break
        except FileNotFoundError:
            return []  # no rpmsg bus or class: no devices (or no CONFIG_RPMSG)
        except OSError as exc:
            raise kernel_error(exc, str(directory)) from None
        return sorted(names)

    def _skip(self, what: str, exc: Exception) -> None:
        self.malformed += 1
        level = logging.WARNING if self.malformed == 1 else logging.DEBUG
        log.log(level, "%s skipped: %s", what, exc)

    # -- control devices ------------------------------------------------------------------
    def control(self, node: str) -> ControlDevice:
        """The control device ``rpmsg_ctrlN``; DeviceNotFound if it is not there."""
        if not isinstance(node, str) or not CTRL_NODE.fullmatch(node):
            raise DeviceNotFound(errno.ENOENT, f"{node!r} is not an rpmsg_ctrlN device name")
        entry = self.class_dir / node
        path = _real_path(entry)
        parent = _real_path(entry / "device")
        if not os.path.isdir(path) or not os.path.isdir(parent):
            raise DeviceNotFound(errno.ENOENT, f"no rpmsg control device {node} in "
                                 f"{self.class_dir}")
        return ControlDevice(node, path, os.path.dirname(parent))

    def controls(self) -> list[ControlDevice]:
        found = []
        for node in self._entries(self.class_dir):
            if CTRL_NODE.fullmatch(node):
                try:
                    found.append(self.control(node))
                except DeviceNotFound:
                    continue  # removed while listing
        return sorted(found, key=lambda c: int(c.node.removeprefix("rpmsg_ctrl")))

    def exists(self, ctrl: ControlDevice) -> bool:
        """Whether ``ctrl`` is still there (the same device, not a new one of that name)."""
        try:
            return _real_path(self.class_dir / ctrl.node) == ctrl.path and \
                os.path.isdir(ctrl.path)
        except DeviceNotFound:
            return False

    # -- channels ---------------------------------------------------------------------------
    def channel(self, device: str) -> ChannelDevice:
        """The bus device ``device`` (untrusted name and content: checked)."""
        check_component(device, str(self.bus_dir))
        entry = self.bus_dir / device
        path = _real_path(entry)
        values = [read_attribute(entry / attr) for attr in ("name", "src", "dst")]
        name = parse_name(values[0], entry / "name")
        src = parse_hex_address(values[1], entry / "src")
        dst = parse_hex_address(values[2], entry / "dst")
        return ChannelDevice(device, name, src, dst, path, os.path.dirname(path))

    def channels(self, transport: str | None = None, *,
                 remote_only: bool = True) -> list[ChannelDevice]:
        """The remote's channels (of one transport, given as its real directory): the bus
        devices but (if ``remote_only``) the kernel's plumbing and local services (no
        remote address)."""
        found = []
        for device in self._entries(self.bus_dir):
            try:
                channel = self.channel(device)
            except (DeviceNotFound, MalformedSysfs) as exc:
                if not isinstance(exc, DeviceNotFound):
                    self._skip(f"rpmsg device {device!r}", exc)
                continue
            if remote_only and (channel.name in INTERNAL_DEVICE_NAMES
                                or channel.dst == RPMSG_ADDR_ANY):
                continue
            if transport is None or channel.transport == transport:
                found.append(channel)
        return found

    # -- endpoint devices -------------------------------------------------------------------
    def endpoint(self, node: str) -> EndpointDevice:
        if not isinstance(node, str) or not ENDPOINT_NODE.fullmatch(node):
            raise DeviceNotFound(errno.ENOENT, f"{node!r} is not an rpmsgN device name")
        entry = self.class_dir / node
        values = [read_attribute(entry / attr) for attr in ("name", "src", "dst")]
        return EndpointDevice(node, parse_name(values[0], entry / "name"),
                              parse_signed_address(values[1], entry / "src"),
                              parse_signed_address(values[2], entry / "dst"),
                              _real_path(entry))

    def endpoints(self, under: str | None = None) -> list[EndpointDevice]:
        """The endpoint devices (those below the real directory ``under``, if given)."""
        found = []
        for node in self._entries(self.class_dir):
            if not ENDPOINT_NODE.fullmatch(node):
                continue
            try:
                ept = self.endpoint(node)
            except (DeviceNotFound, MalformedSysfs) as exc:
                if not isinstance(exc, DeviceNotFound):
                    self._skip(f"endpoint device {node!r}", exc)
                continue
            if under is None or ept.path.startswith(under + os.sep):
                found.append(ept)
        return found

    def channel_endpoints(self, ctrl: ControlDevice) -> dict[str, EndpointDevice]:
        """The channels' own endpoint devices (rpmsg_char made them when it bound the
        channel), by the channel's real directory: the endpoint devices of ``ctrl``'s
        transport that are not below ``ctrl`` (``<channel>/rpmsg/rpmsgM``)."""
        return {os.path.dirname(os.path.dirname(ept.path)): ept
                for ept in self.endpoints(ctrl.transport)
                if not ept.path.startswith(ctrl.path + os.sep)}

    def devices_below(self, path: str) -> list[ControlDevice]:
        """The control devices whose transport lies below the real directory ``path``
        (a remote processor's device: its vdevs)."""
        prefix = os.path.realpath(path) + os.sep
        return [c for c in self.controls() if c.transport.startswith(prefix)]
