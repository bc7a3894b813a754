"""The supervisor's control operations, each checked against the service's policy.

The control protocol (:mod:`amplink.platforms.linux.protocol`: JSON lines) mirrors the
kernel's remoteproc files; this module answers its operations on the
:class:`~.model.RemoteprocModel` and decides, from the client's credentials, whether it
may: reading needs the processor to be visible to it, changing state the matching
action of the policy (``boot``, ``stop``, ``crash``, ``configure``: recovery, coredump,
attaching buffers), creating a processor also firmware the policy lets that client load.
A refusal is EACCES and is logged (the first :data:`LOGGED_DENIALS` per connection at
WARNING).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from ..platforms.linux import protocol
from ..platforms.linux.attributes import DEVICE_NAME
from ..platforms.linux.errors import RprocControlError, error_from_errno
from ..platforms.sim import SimRemoteProc
from ..remoteproc.api import RemoteProcessor
from ..remoteproc.core import RemoteProc
from .model import RemoteprocModel
from .policy import Peer, Policy

log = logging.getLogger(__name__)

PROCESSOR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
#: the kinds of processor ``add`` makes, and the default name of each (with a number)
KINDS = {"sim": "sim", "rtkit": "rtkit", "keembay": "vpu"}
MAX_FIRMWARE = 4096
LOGGED_DENIALS = 10


@runtime_checkable
class ReportsChannels(Protocol):
    """Optional: a processor that can list its rpmsg channels for ``amplink ls``."""

    def channels(self) -> list[tuple[str, int, int]]:
        """(name, local address, remote address) of each channel."""


@runtime_checkable
class ReportsCrashlog(Protocol):
    """Optional: a processor that keeps its last crash report (an RTKit co-processor)."""

    def crashlog(self) -> str:
        """The report of the last crash ("" if it never crashed)."""


class ControlConnection:
    """One client of the control socket."""

    def __init__(self, sock: socket.socket, peer: Peer) -> None:
        self.sock = sock
        self.peer = peer
        self.reader = protocol.LineReader()
        self.dev: str | None = None  # set by dev_open: this connection is /dev/remoteprocN
        self.denials = 0


class Host(Protocol):
    """What the operations need of the supervisor."""

    @property
    def live_model(self) -> RemoteprocModel:
        """The model of the processors (while serving)."""
        ...

    def add_processor(self, name: str, firmware: str, kind: str) -> str:
        """Make processor ``name`` of ``kind`` for ``firmware`` (offline) and register it."""
        ...

    def remove_processor(self, dev: str) -> None:
        """Shut ``dev`` down whatever its state and remove it."""
        ...

    def kind_of(self, dev: str) -> str:
        """The kind ``dev`` was made as (see :data:`KINDS`; "openamp" for such peers)."""
        ...

    def attach_buffer(self, dev: str, rproc: SimRemoteProc, size: int, access: int
                      ) -> tuple[int, int]:
        """A new buffer attached to ``rproc``: its id and device address."""
        ...

    def detach_buffer(self, dev: str, rproc: SimRemoteProc, att_id: int) -> None:
        """Detach and free a buffer attach_buffer made."""
        ...


def _fail(err: int, message: str) -> RprocControlError:
    return error_from_errno(err, message)


#: (attribute, value) of a write -> the action it needs; None: the value decides (below)
_WRITE_ACTIONS = {"firmware": "boot", "coredump": "configure"}


def _write_action(attr: str, value: str) -> str | None:
    """The policy action a write of ``value`` to ``attr`` needs (None: only visibility,
    e.g. an attribute that does not exist, which fails anyway)."""
    word = value.removesuffix("\n")
    if attr == "state":
        return {"start": "boot", "stop": "stop", "detach": "stop"}.get(word)
    if attr == "recovery":
        return "boot" if word == "recover" else "configure"
    if attr == "crash":
        return "crash"
    return _WRITE_ACTIONS.get(attr)


class ControlOps:
    """Answers control requests (see the module docstring)."""

    def __init__(self, host: Host, policy: Policy) -> None:
        self.host = host
        self.policy = policy
        self._ops: dict[str, Callable[[ControlConnection, dict[str, Any]],
                                      dict[str, Any] | None]] = {
            "hello": self._op_hello, "list": self._op_list, "read": self._op_read,
            "write": self._op_write, "debug_read": self._op_debug_read,
            "debug_write": self._op_debug_write, "add": self._op_add, "remove": self._op_remove,
            "channels": self._op_channels, "crashes": self._op_crashes,
            "buffers": self._op_buffers, "attach": self._op_attach, "detach": self._op_detach,
            "crashlog": self._op_crashlog, "kind": self._op_kind,
            "dev_open": self._op_dev_open,
            "dev_write": self._op_dev_write, "dev_set_release": self._op_dev_set_release,
            "dev_get_release": self._op_dev_get_release,
        }
        assert self._ops.keys() == protocol.OPS.keys(), "the protocol table and the server differ"

    @property
    def _m(self) -> RemoteprocModel:
        return self.host.live_model

    def handle(self, client: ControlConnection, line: bytes) -> dict[str, Any]:
        """The answer to one request line (never raises)."""
        op = "?"
        try:
            message = protocol.decode(line)
            op = protocol.field(message, "op", str)
            handler = self._ops.get(op)
            if handler is None:
                raise _fail(errno.EINVAL, f"unknown operation {op[:40]!r} (known: "
                                          f"{', '.join(self._ops)})")
            missing = [key for key in protocol.OPS[op] if key not in message]
            if missing:
                raise _fail(errno.EINVAL, f"{op} needs the fields {', '.join(missing)}")
            return {"ok": True, **(handler(client, message) or {})}
        except RprocControlError as exc:
            return {"ok": False, "errno": exc.errno, "error": str(exc)}
        except ValueError as exc:
            return {"ok": False, "errno": errno.EINVAL, "error": f"bad {op} request: {exc}"}
        except Exception as exc:  # noqa: BLE001 - a bug must cost one request, not every processor
            log.exception("%s request failed", op)
            return {"ok": False, "errno": errno.EIO, "error": f"{op}: internal error: {exc}"}

    # -- permissions -------------------------------------------------------------------------
    def _deny(self, client: ControlConnection, what: str) -> RprocControlError:
        client.denials += 1
        level = logging.WARNING if client.denials <= LOGGED_DENIALS else logging.DEBUG
        log.log(level, "denied %s: %s", client.peer.describe(), what)
        return _fail(errno.EACCES, f"{what}: not allowed for uid {client.peer.uid} by the "
                                   f"service's policy ({self.policy.source})")

    def _processor(self, client: ControlConnection, dev: str,
                   action: str | None = None) -> RemoteProcessor:
        """``dev``'s processor, if ``client`` may see it (and do ``action``); one who may
        see nothing learns nothing, not even whether ``dev`` exists."""
        peer = client.peer
        try:
            rproc = self._m.processor(dev)
        except RprocControlError:
            if self.policy.is_owner(peer):
                raise
            raise self._deny(client, dev) from None
        if not self.policy.may_see(peer, rproc.name):
            raise self._deny(client, f"{dev} ({rproc.name})")
        if action is not None and not self.policy.may(peer, action, rproc.name):
            raise self._deny(client, f"{action} {dev} ({rproc.name})")
        return rproc

    @staticmethod
    def _dev(message: dict[str, Any]) -> str:
        dev = protocol.field(message, "dev", str)
        if not DEVICE_NAME.fullmatch(dev):
            raise _fail(errno.ENOENT, f"{dev[:40]!r} is not a remoteprocN device name")
        return dev

    def _check_firmware(self, client: ControlConnection, name: str, firmware: str) -> None:
        if not self.policy.may_load(client.peer, name, firmware):
            raise self._deny(client, f"load firmware {firmware[:200]!r} into {name}")

    # -- operations ----------------------------------------------------------------------------
    def _op_hello(self, _c: ControlConnection, _m: dict[str, Any]) -> dict[str, Any]:
        return {"protocol": protocol.PROTOCOL_VERSION, "pid": os.getpid()}

    def _op_list(self, c: ControlConnection, _m: dict[str, Any]) -> dict[str, Any]:
        visible = []
        for dev in self._m.devices():
            try:
                if self.policy.may_see(c.peer, self._m.processor(dev).name):
                    visible.append(dev)
            except RprocControlError:
                continue  # removed meanwhile
        return {"devices": visible}

    def _op_read(self, c: ControlConnection, m: dict[str, Any]) -> dict[str, Any]:
        dev = self._dev(m)
        self._processor(c, dev)
        return {"value": self._m.show(dev, protocol.field(m, "attr", str))}

    def _op_write(self, c: ControlConnection, m: dict[str, Any]) -> None:
        dev = self._dev(m)
        attr, value = protocol.field(m, "attr", str), protocol.field(m, "value", str)
        rproc = self._processor(c, dev, _write_action(attr, value))
        if attr == "firmware":
            self._check_firmware(c, rproc.name, value.split("\n", 1)[0])
        self._m.store(dev, attr, value)

    def _op_debug_read(self, c: ControlConnection, m: dict[str, Any]) -> dict[str, Any]:
        dev = self._dev(m)
        self._processor(c, dev)
        return {"value": self._m.debug_show(dev, protocol.field(m, "attr", str))}

    def _op_debug_write(self, c: ControlConnection, m: dict[str, Any]) -> None:
        dev = self._dev(m)
        attr, value = protocol.field(m, "attr", str), protocol.field(m, "value", str)
        self._processor(c, dev, _write_action(attr, value))
        self._m.debug_store(dev, attr, value)

    def _op_add(self, c: ControlConnection, m: dict[str, Any]) -> dict[str, Any]:
        firmware = protocol.field(m, "firmware", str)
        if not firmware or len(firmware) > MAX_FIRMWARE or "\n" in firmware or "\0" in firmware:
            raise _fail(errno.EINVAL, f"a firmware name is one non-empty line, "
                                      f"got {firmware[:80]!r}")
        kind = protocol.field(m, "kind", str, optional=True) or "sim"
        if kind not in KINDS:
            raise _fail(errno.EINVAL, f"kind {kind[:40]!r}: expected one of {', '.join(KINDS)}")
        name = protocol.field(m, "name", str, optional=True)
        if name is None:
            index = 0
            while self._m.find(f"{KINDS[kind]}{index}") is not None:
                index += 1
            name = f"{KINDS[kind]}{index}"
        elif not PROCESSOR_NAME.fullmatch(name):
            raise _fail(errno.EINVAL, f"processor name {name[:40]!r}: use 1-32 letters, "
                                      "digits, '_', '.' or '-'")
        if not self.policy.may(c.peer, "boot", name):
            raise self._deny(c, f"create processor {name}")
        self._check_firmware(c, name, firmware)
        if self._m.find(name) is not None:
            raise _fail(errno.EEXIST, f"a processor called {name!r} exists already: stop it "
                                      f"first (`amplink stop {name}`) or choose another --name")
        return {"dev": self.host.add_processor(name, firmware, kind), "name": name}

    def _op_remove(self, c: ControlConnection, m: dict[str, Any]) -> None:
        dev = self._dev(m)
        self._processor(c, dev, "stop")
        self.host.remove_processor(dev)

    def _op_channels(self, c: ControlConnection, m: dict[str, Any]) -> dict[str, Any]:
        rproc = self._processor(c, self._dev(m))
        if not isinstance(rproc, ReportsChannels):
            raise _fail(errno.EOPNOTSUPP, f"{rproc.name} cannot list its channels")
        return {"channels": [{"name": n, "src": s, "dst": d} for n, s, d in rproc.channels()
                             if self.policy.channel_rights(c.peer, rproc.name, n)]}

    def _sim(self, c: ControlConnection, dev: str, action: str | None = None) -> SimRemoteProc:
        rproc = self._processor(c, dev, action)
        if not isinstance(rproc, SimRemoteProc):
            raise _fail(errno.EOPNOTSUPP, f"{rproc.name} has no simulated IOMMU")
        return rproc

    def _op_buffers(self, c: ControlConnection, m: dict[str, Any]) -> dict[str, Any]:
        return {"buffers": [{"id": b.id, "name": b.name, "da": b.da, "length": b.length,
                             "access": b.access, "holder": b.holder}
                            for b in self._sim(c, self._dev(m)).attached()]}

    def _op_attach(self, c: ControlConnection, m: dict[str, Any]) -> dict[str, Any]:
        dev = self._dev(m)
        rproc = self._sim(c, dev, "configure")
        att_id, da = self.host.attach_buffer(dev, rproc, protocol.field(m, "size", int),
                                             protocol.field(m, "access", int))
        return {"id": att_id, "da": da}

    def _op_detach(self, c: ControlConnection, m: dict[str, Any]) -> None:
        dev = self._dev(m)
        rproc = self._sim(c, dev, "configure")
        self.host.detach_buffer(dev, rproc, protocol.field(m, "id", int))

    def _op_crashlog(self, c: ControlConnection, m: dict[str, Any]) -> dict[str, Any]:
        rproc = self._processor(c, self._dev(m))
        if not isinstance(rproc, ReportsCrashlog):
            raise _fail(errno.EOPNOTSUPP, f"{rproc.name} keeps no crashlog (only RTKit "
                                          "co-processors do)")
        return {"report": rproc.crashlog()}

    def _op_kind(self, c: ControlConnection, m: dict[str, Any]) -> dict[str, Any]:
        dev = self._dev(m)
        self._processor(c, dev)
        return {"kind": self.host.kind_of(dev)}

    def _op_crashes(self, c: ControlConnection, m: dict[str, Any]) -> dict[str, Any]:
        rproc = self._processor(c, self._dev(m))
        if not isinstance(rproc, RemoteProc):
            raise _fail(errno.EOPNOTSUPP, f"{rproc.name} does not count its crashes")
        stats = rproc.statistics()
        return {"count": stats.crash_count, "last": stats.last_crash,
                "recovery_stopped": stats.recovery_stopped}

    def _op_dev_open(self, c: ControlConnection, m: dict[str, Any]) -> None:
        dev = self._dev(m)
        if c.dev is not None:
            raise _fail(errno.EBUSY, f"this connection is /dev/{c.dev} already")
        self._processor(c, dev)  # ENOENT if there is no such processor
        c.dev = dev

    def _device_of(self, c: ControlConnection) -> str:
        if c.dev is None:
            raise _fail(errno.EBADF, "no device open on this connection: send dev_open first")
        return c.dev

    def _op_dev_write(self, c: ControlConnection, m: dict[str, Any]) -> None:
        dev, value = self._device_of(c), protocol.field(m, "value", str)
        self._processor(c, dev, _write_action("state", value))
        self._m.cdev_write(dev, value)

    def _op_dev_set_release(self, c: ControlConnection, m: dict[str, Any]) -> None:
        dev = self._device_of(c)
        self._processor(c, dev, "stop")
        self._m.cdev_set_release(dev, protocol.field(m, "value", int) != 0)

    def _op_dev_get_release(self, c: ControlConnection, _m: dict[str, Any]) -> dict[str, Any]:
        return {"value": int(self._m.cdev_get_release(self._device_of(c)))}
