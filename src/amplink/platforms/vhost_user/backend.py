"""The vhost-user back end of one connection: requests in, replies out, device runs.

:meth:`VhostUserBackend.handle` takes one decoded request with its fds and returns the
reply bytes (or None). The back end owns every fd it was given and closes it when it is
replaced and at :meth:`close`. A request that breaks the protocol raises
:class:`VhostUserError`; the caller closes the connection (and then the back end).

The guest writes no virtio status over vhost-user, so "driver OK" is inferred: a run
starts when the memory table is set, both queues are started (a kick fd was set) and
enabled, and the guest kicked (the Linux driver kicks once its RX buffers are posted).
The caller watches :meth:`kick_fds_to_watch` and calls :meth:`start_run` on a kick.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from ...virtio.ring import VIRTIO_RING_F_EVENT_IDX
from ...virtio.vdev import VIRTIO_RPMSG_F_NS
from . import protocol as P
from .memory import GuestMemory
from .protocol import Header, Request, VhostUserError, VringAddr, VringState
from .rings import place_rings
from .run import DeviceRun, RunConfig

log = logging.getLogger(__name__)

NUM_QUEUES = 2  # rpmsg: vring 0 device -> driver, vring 1 driver -> device

#: the virtio features of the rpmsg device (the ring's are handled by amplink's vrings)
RPMSG_FEATURES = (1 << VIRTIO_RPMSG_F_NS) | (1 << VIRTIO_RING_F_EVENT_IDX)
DEVICE_FEATURES = (RPMSG_FEATURES | (1 << P.VIRTIO_F_VERSION_1)
                   | (1 << P.VHOST_USER_F_PROTOCOL_FEATURES))
PROTOCOL_FEATURES = (1 << P.VHOST_USER_PROTOCOL_F_REPLY_ACK) | (
    1 << P.VHOST_USER_PROTOCOL_F_BACKEND_REQ)

#: builds a run from the configuration (the server binds the firmware and its name)
RunFactory = Callable[[RunConfig], DeviceRun]


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


@dataclass
class _Queue:
    num: int | None = None
    base: int = 0
    addr: VringAddr | None = None
    kick: int | None = None
    call: int | None = None
    err: int | None = None
    started: bool = False  # a kick fd was set since the last GET_VRING_BASE
    enabled: bool = False

    def close(self) -> None:
        for fd in (self.kick, self.call, self.err):
            _close(fd)
        self.kick = self.call = self.err = None


class VhostUserBackend:
    """The device state of one front-end connection."""

    def __init__(self, make_run: RunFactory) -> None:
        self._make_run = make_run
        self.owner = False
        self.features: int | None = None  # accepted by SET_FEATURES
        self.protocol_features = 0
        self.memory: GuestMemory | None = None
        self.queues = [_Queue() for _ in range(NUM_QUEUES)]
        self.backend_req_fd: int | None = None
        self.run: DeviceRun | None = None
        self.runs_started = 0
        self.closed = False

    # -- the request table --------------------------------------------------------------------
    def handle(self, header: Header, payload: bytes, fds: list[int]) -> bytes | None:
        """Carry out one request; returns the reply to send, if any.

        Takes ownership of ``fds``: each is kept or closed, also when this raises.
        """
        try:
            try:
                request = Request(header.request)
            except ValueError:
                raise VhostUserError(f"unknown request {header.request}") from None
            handler = self._HANDLERS.get(request)
            if handler is None:
                raise VhostUserError(f"unsupported request {request.name} ({request.value})")
            wants_fds = request in _FD_REQUESTS
            if fds and not wants_fds:
                raise VhostUserError(f"{request.name} came with {len(fds)} fds")
            reply = handler(self, payload, fds)
        finally:
            for fd in fds:  # whatever a handler did not take
                os.close(fd)
            fds.clear()
        if reply is not None:
            return P.encode_reply(header.request, reply)
        if header.need_reply and self._acks:
            return P.encode_reply(header.request, P.pack_u64(0))
        return None

    @property
    def _acks(self) -> bool:
        return bool(self.protocol_features & (1 << P.VHOST_USER_PROTOCOL_F_REPLY_ACK))

    def failure_reply(self, header: Header) -> bytes | None:
        """The REPLY_ACK failure answer to a request that raised (sent before closing)."""
        if header.need_reply and self._acks:
            return P.encode_reply(header.request, P.pack_u64(1))
        return None

    def _queue(self, index: int, what: str) -> _Queue:
        if not 0 <= index < NUM_QUEUES:
            raise VhostUserError(f"{what}: queue {index} (the rpmsg device has {NUM_QUEUES})")
        return self.queues[index]

    def _no_payload(self, payload: bytes, what: str) -> None:
        if payload:
            raise VhostUserError(f"{what}: unexpected payload of {len(payload)} bytes")

    def _take_one_fd(self, fds: list[int], what: str) -> int:
        if len(fds) != 1:
            raise VhostUserError(f"{what}: expected 1 fd, got {len(fds)}")
        return fds.pop()

    # -- features and ownership ----------------------------------------------------------------
    def _get_features(self, payload: bytes, fds: list[int]) -> bytes:
        self._no_payload(payload, "GET_FEATURES")
        return P.pack_u64(DEVICE_FEATURES)

    def _set_features(self, payload: bytes, fds: list[int]) -> None:
        features = P.unpack_u64(payload, "SET_FEATURES")
        if features & ~DEVICE_FEATURES:
            raise VhostUserError(f"SET_FEATURES 0x{features:x} accepts features the device "
                                 f"never offered (0x{DEVICE_FEATURES:x})")
        if self.run is not None and features != self.features:
            self.stop_run("the front end changed the features")
        self.features = features

    def _get_protocol_features(self, payload: bytes, fds: list[int]) -> bytes:
        self._no_payload(payload, "GET_PROTOCOL_FEATURES")
        return P.pack_u64(PROTOCOL_FEATURES)

    def _set_protocol_features(self, payload: bytes, fds: list[int]) -> None:
        features = P.unpack_u64(payload, "SET_PROTOCOL_FEATURES")
        if features & ~PROTOCOL_FEATURES:
            raise VhostUserError(f"SET_PROTOCOL_FEATURES 0x{features:x} accepts features the "
                                 f"device never offered (0x{PROTOCOL_FEATURES:x})")
        self.protocol_features = features

    def _set_owner(self, payload: bytes, fds: list[int]) -> None:
        self._no_payload(payload, "SET_OWNER")
        if self.owner:
            raise VhostUserError("SET_OWNER twice on one connection")
        self.owner = True

    def _reset_owner(self, payload: bytes, fds: list[int]) -> None:
        self._no_payload(payload, "RESET_OWNER")
        self.stop_run("the front end reset the device")
        for queue in self.queues:
            queue.close()
        self.queues = [_Queue() for _ in range(NUM_QUEUES)]
        self.owner = False
        self.features = None

    def _set_backend_req_fd(self, payload: bytes, fds: list[int]) -> None:
        self._no_payload(payload, "SET_BACKEND_REQ_FD")
        if not self.protocol_features & (1 << P.VHOST_USER_PROTOCOL_F_BACKEND_REQ):
            raise VhostUserError("SET_BACKEND_REQ_FD without the BACKEND_REQ protocol feature")
        fd = self._take_one_fd(fds, "SET_BACKEND_REQ_FD")
        _close(self.backend_req_fd)
        # Kept for the connection's lifetime: the device sends no back-end requests
        # (an rpmsg device has no configuration space to change).
        self.backend_req_fd = fd

    # -- memory ------------------------------------------------------------------------------
    def _set_mem_table(self, payload: bytes, fds: list[int]) -> None:
        table = P.unpack_mem_table(payload)
        taken = fds[:]
        fds.clear()
        memory = GuestMemory(table, taken)  # closes the fds itself on failure
        self.stop_run("the front end replaced the memory table")
        if self.memory is not None:
            self.memory.close()
        self.memory = memory
        log.debug("memory table: %s", [g.table for g in memory.regions])

    # -- queues ------------------------------------------------------------------------------
    def _set_vring_num(self, payload: bytes, fds: list[int]) -> None:
        state = VringState.unpack(payload, "SET_VRING_NUM")
        queue = self._queue(state.index, "SET_VRING_NUM")
        if not 0 < state.num <= 32768 or state.num & (state.num - 1):
            raise VhostUserError(f"SET_VRING_NUM: size {state.num} is not a power of two "
                                 "in 1..32768")
        self._stop_if_running(state.index, "SET_VRING_NUM")
        queue.num = state.num

    def _set_vring_base(self, payload: bytes, fds: list[int]) -> None:
        state = VringState.unpack(payload, "SET_VRING_BASE")
        queue = self._queue(state.index, "SET_VRING_BASE")
        if state.num > 0xFFFF:
            raise VhostUserError(f"SET_VRING_BASE: base {state.num} is not a 16-bit index")
        self._stop_if_running(state.index, "SET_VRING_BASE")
        queue.base = state.num

    def _set_vring_addr(self, payload: bytes, fds: list[int]) -> None:
        addr = VringAddr.unpack(payload)
        queue = self._queue(addr.index, "SET_VRING_ADDR")
        if addr.flags & ~1:  # bit 0: log used-ring writes (ignored: no LOG_ALL offered)
            raise VhostUserError(f"SET_VRING_ADDR: unknown flags 0x{addr.flags:x}")
        self._stop_if_running(addr.index, "SET_VRING_ADDR")
        queue.addr = addr

    def _get_vring_base(self, payload: bytes, fds: list[int]) -> bytes:
        state = VringState.unpack(payload, "GET_VRING_BASE")
        queue = self._queue(state.index, "GET_VRING_BASE")
        self._stop_if_running(state.index, "GET_VRING_BASE")  # records each queue's base
        queue.started = False  # stopped until its next SET_VRING_KICK
        return VringState(state.index, queue.base).pack()

    def _set_vring_kick(self, payload: bytes, fds: list[int]) -> None:
        index, has_fd = P.unpack_vring_fd(payload, "SET_VRING_KICK")
        queue = self._queue(index, "SET_VRING_KICK")
        if not has_fd:
            raise VhostUserError("SET_VRING_KICK without an fd (polling mode) is not supported")
        fd = self._take_one_fd(fds, "SET_VRING_KICK")
        if self.run is not None:
            self.run.doorbell.replace_kick(index, fd)
        _close(queue.kick)
        queue.kick = fd
        queue.started = True
        if not self._protocol_negotiated:
            queue.enabled = True  # without protocol features a ring starts enabled

    def _set_vring_call(self, payload: bytes, fds: list[int]) -> None:
        index, has_fd = P.unpack_vring_fd(payload, "SET_VRING_CALL")
        queue = self._queue(index, "SET_VRING_CALL")
        fd = self._take_one_fd(fds, "SET_VRING_CALL") if has_fd else None
        if self.run is not None:
            self.run.doorbell.replace_call(index, fd)
        _close(queue.call)
        queue.call = fd

    def _set_vring_err(self, payload: bytes, fds: list[int]) -> None:
        index, has_fd = P.unpack_vring_fd(payload, "SET_VRING_ERR")
        queue = self._queue(index, "SET_VRING_ERR")
        fd = self._take_one_fd(fds, "SET_VRING_ERR") if has_fd else None
        _close(queue.err)
        queue.err = fd  # kept: a broken ring is reported in the link's statistics instead

    def _set_vring_enable(self, payload: bytes, fds: list[int]) -> None:
        state = VringState.unpack(payload, "SET_VRING_ENABLE")
        queue = self._queue(state.index, "SET_VRING_ENABLE")
        if not self._protocol_negotiated:
            raise VhostUserError("SET_VRING_ENABLE without the PROTOCOL_FEATURES feature")
        if state.num not in (0, 1):
            raise VhostUserError(f"SET_VRING_ENABLE: value {state.num} (0 or 1)")
        if not state.num:
            self._stop_if_running(state.index, "SET_VRING_ENABLE 0")
        queue.enabled = bool(state.num)

    @property
    def _protocol_negotiated(self) -> bool:
        return self.features is not None and bool(
            self.features & (1 << P.VHOST_USER_F_PROTOCOL_FEATURES))

    _HANDLERS: dict[Request, Callable[[VhostUserBackend, bytes, list[int]], bytes | None]] = {
        Request.GET_FEATURES: _get_features,
        Request.SET_FEATURES: _set_features,
        Request.SET_OWNER: _set_owner,
        Request.RESET_OWNER: _reset_owner,
        Request.SET_MEM_TABLE: _set_mem_table,
        Request.SET_VRING_NUM: _set_vring_num,
        Request.SET_VRING_ADDR: _set_vring_addr,
        Request.SET_VRING_BASE: _set_vring_base,
        Request.GET_VRING_BASE: _get_vring_base,
        Request.SET_VRING_KICK: _set_vring_kick,
        Request.SET_VRING_CALL: _set_vring_call,
        Request.SET_VRING_ERR: _set_vring_err,
        Request.GET_PROTOCOL_FEATURES: _get_protocol_features,
        Request.SET_PROTOCOL_FEATURES: _set_protocol_features,
        Request.SET_VRING_ENABLE: _set_vring_enable,
        Request.SET_BACKEND_REQ_FD: _set_backend_req_fd,
    }

    # -- device runs ---------------------------------------------------------------------------
    def ready(self) -> bool:
        """Everything a run needs is set up (it starts at the guest's first kick)."""
        return (self.run is None and self.memory is not None and self.features is not None
                and all(q.num is not None and q.addr is not None and q.kick is not None
                        and q.started and q.enabled for q in self.queues))

    def kick_fds_to_watch(self) -> list[int]:
        """The kick fds whose readiness means "driver OK" (empty unless :meth:`ready`)."""
        if not self.ready():
            return []
        return [q.kick for q in self.queues if q.kick is not None]

    def start_run(self) -> DeviceRun:
        """The guest kicked with everything set up: start the firmware on its rings."""
        if not self.ready():
            raise RuntimeError("start_run() before the device is ready")
        assert self.memory is not None and self.features is not None
        q0, q1 = self.queues
        assert q0.num and q1.num and q0.addr and q1.addr and q0.kick and q1.kick
        placement = place_rings(self.memory, (q0.num, q1.num), (q0.addr, q1.addr))
        config = RunConfig(placement=placement, features=self.features & RPMSG_FEATURES,
                           bases=(q0.base, q1.base), kick_fds=(q0.kick, q1.kick),
                           call_fds=(q0.call, q1.call))
        self.run = self._make_run(config)
        self.runs_started += 1
        self.run.start()
        return self.run

    def _stop_if_running(self, index: int, what: str) -> None:
        if self.run is not None:
            self.stop_run(f"the front end sent {what} for queue {index}")

    def stop_run(self, reason: str) -> None:
        """End the current run (if any); its memory stays mapped if the firmware hangs on."""
        run, self.run = self.run, None
        if run is None:
            return
        stopped = run.stop(reason)
        for index, queue in enumerate(self.queues):
            queue.base = run.last_avail(index)  # where a later run continues
        if not stopped and self.memory is not None:
            # A firmware thread that ignores the closed link may still hold views of the
            # guest's memory: leave the mapping to the process rather than unmap under it.
            self.memory.regions.clear()

    def close(self) -> None:
        """The connection ended: stop the run, unmap the memory, close every fd."""
        if self.closed:
            return
        self.closed = True
        self.stop_run("the front end disconnected")
        if self.memory is not None:
            self.memory.close()
            self.memory = None
        for queue in self.queues:
            queue.close()
        _close(self.backend_req_fd)
        self.backend_req_fd = None


_FD_REQUESTS = frozenset({
    Request.SET_MEM_TABLE, Request.SET_VRING_KICK, Request.SET_VRING_CALL,
    Request.SET_VRING_ERR, Request.SET_BACKEND_REQ_FD,
})
