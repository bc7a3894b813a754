"""Shared buffers lent through the service by reference: a client's own memory, mapped
by the firmware of a processor another program booted, with no copy; only a client
that may send on the channel may lend; what a client lent goes back when it goes; a
descriptor that is not a proper buffer is refused."""

from __future__ import annotations

import array
import errno
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from common_kit import wait_for
from raw_kit import RawClient

from amplink.errors import AccessDenied
from amplink.handover import BufferChannel
from amplink.memory import Access, allocate_buffer
from amplink.service.policy import Policy, Rule
from amplink.service.supervisor import PID_FILE, Supervisor, SupervisorClient, prepare_runtime_dir
from amplink.transports import service_wire as W
from amplink.transports.service import connect_link, service_status
from amplink.transports.service_buffers import ServicePort

TIMEOUT = 10.0
FRAMES = "amplink.firmware.examples.frames"  # inverts every byte it is lent, in place


class Held:
    """A supervisor in a thread holding the frames firmware (simulated, a real child)."""

    def __init__(self, root: Path, policy: Policy | None) -> None:
        self.root = prepare_runtime_dir(root)
        self.supervisor = Supervisor(self.root, idle_grace=60, tick=0.05, policy=policy)
        self.thread = threading.Thread(target=self.supervisor.serve, daemon=True)
        self.thread.start()
        assert wait_for(lambda: (self.root / PID_FILE).exists(), TIMEOUT)
        self.dev = self.supervisor.add_processor("dsp", FRAMES)
        self.supervisor.live_model.store(self.dev, "state", "start")
        self.control = SupervisorClient(self.root, timeout=TIMEOUT)
        assert wait_for(lambda: "rpmsg-frames" in self.channels(), TIMEOUT)

    def channels(self) -> list[str]:
        """The channels the service serves (to its owner: all of them)."""
        return [c.name for p in service_status(self.root) for link in p.links
                for c in link.channels]

    def attached(self) -> int:
        return len(self.supervisor.live_model.processor(self.dev).attached())  # type: ignore

    def stop(self) -> None:
        self.supervisor.stop()
        self.thread.join(TIMEOUT * 2)
        assert not self.thread.is_alive()


@pytest.fixture
def held(tmp_path: Path) -> Iterator[Held]:
    h = Held(tmp_path / "rt", None)
    try:
        yield h
    finally:
        h.stop()


def test_a_clients_buffer_is_worked_on_in_place(held: Held) -> None:
    link = connect_link("dsp", root=held.root, timeout=TIMEOUT)
    port = ServicePort("dsp", channel="rpmsg-frames", root=held.root)
    frame = allocate_buffer(1 << 20, name="frame0")
    try:
        assert link.capabilities.send_by_reference  # a simulated processor maps buffers
        ep = link.open_channel("rpmsg-frames", timeout=TIMEOUT)
        frames = BufferChannel(ep, port=port)
        frame.write(bytes(range(256)) * 16)
        sent_id = frames.send(frame.slice(0, 4096), Access.READ_WRITE)
        back = frames.wait_done(timeout=TIMEOUT)
        assert back.id == sent_id and back.length == 4096
        # the firmware inverted the client's own pages: nothing came back but a record
        assert frame.read(0, 4096) == bytes(255 - b for b in range(256)) * 16
        assert held.attached() == 1
        (listed,) = held.control.buffers(held.dev)
        assert listed.name == "frame0" and listed.length == 1 << 20
        stats = ep.statistics()
        # the channel's hello (empty) and one SEND out, one DONE back: 24 B records only
        assert stats.messages_sent == 2 and stats.messages_received == 1
        frames.forget(frame)  # detached through the service
        assert held.attached() == 0
    finally:
        port.close()
        link.close()
        frame.close()


def test_what_a_client_lent_goes_back_when_it_goes(held: Held) -> None:
    port = ServicePort("dsp", channel="rpmsg-frames", root=held.root)
    frame = allocate_buffer(4096, name="frame1")
    port.attach(frame)
    assert held.attached() == 1
    port.close()  # no detach: the client just goes
    assert wait_for(lambda: held.attached() == 0, TIMEOUT)
    frame.close()


def test_only_a_client_that_may_send_lends(tmp_path: Path) -> None:
    me = os.getuid()
    receive_only = Policy(me + 4242, (Rule(users=frozenset({me}), channels=("rpmsg-frames",),
                                           rights=frozenset({"receive"})),), source="test")
    held = Held(tmp_path / "rt", receive_only)
    try:
        port = ServicePort("dsp", channel="rpmsg-frames", root=held.root)
        frame = allocate_buffer(4096, name="frame2")
        try:
            with pytest.raises(AccessDenied, match="send"):
                port.attach(frame)
            assert held.attached() == 0
        finally:
            port.close()
            frame.close()
    finally:
        held.stop()


def _attach_raw(raw: RawClient, fds: list[int], **fields: object) -> dict:
    body = {"op": "attach_buffer", "channel": "rpmsg-frames", "offset": 0, "size": 4096,
            "access": 3, "read_only": False, "name": "x", **fields}
    raw.sock.sendmsg([W.encode_json(W.KIND_REQUEST, body, a=9)],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else [])
    while True:  # its answer, or the event that ends the connection (not announcements)
        frame = raw.frame()
        if frame.kind in (W.KIND_RESPONSE, W.KIND_EVENT):
            return W.decode_json(frame.body)


def test_a_descriptor_that_is_no_proper_buffer_is_refused(held: Held) -> None:
    before = len(os.listdir("/proc/self/fd"))
    with RawClient(held.root) as raw:
        assert raw.request("attach", processor="dsp", link=0, watch=False, version=1)["ok"]
        r, w = os.pipe()
        unsealed = os.memfd_create("unsealed")
        os.ftruncate(unsealed, 4096)
        sealed = allocate_buffer(4096, name="ok")
        try:
            for fds, fields, err in (
                    ([r], {}, errno.EINVAL),                      # not memory
                    ([unsealed], {}, errno.EINVAL),               # could shrink under the map
                    ([sealed.fd], {"size": 1 << 20}, errno.EINVAL),  # more than it holds
                    ([sealed.fd], {"access": 9}, errno.EINVAL),
                    ([sealed.fd], {"channel": "rpmsg-none"}, errno.ENOENT),
                    ([], {}, errno.EINVAL),                       # no descriptor at all
            ):
                answer = _attach_raw(raw, fds, **fields)
                assert not answer["ok"] and answer["errno"] == err, (fields, answer)
            assert held.attached() == 0
            answer = _attach_raw(raw, [sealed.fd])  # the proper one
            assert answer["ok"] and held.attached() == 1
            event = _attach_raw(raw, [sealed.fd, r])  # two descriptors: cut off
            assert event["event"] == "error" and event["errno"] == errno.EBADF
            assert raw.closed_by_service()
        finally:
            for fd in (r, w, unsealed):
                os.close(fd)
            assert wait_for(lambda: held.attached() == 0, TIMEOUT)  # the client is gone
            sealed.close()
    assert wait_for(lambda: len(os.listdir("/proc/self/fd")) <= before, TIMEOUT)
    with ServicePort("dsp", channel="rpmsg-frames", root=held.root) as port:  # all is well
        frame = allocate_buffer(4096, name="after")
        assert port.attach(frame).da > 0 and held.attached() == 1
    assert wait_for(lambda: held.attached() == 0, TIMEOUT)
    frame.close()


def test_lent_buffers_are_bounded(held: Held, monkeypatch: pytest.MonkeyPatch) -> None:
    from amplink.service import buffers as service_buffers

    monkeypatch.setattr(service_buffers, "MAX_BUFFERS", 2)
    frames = [allocate_buffer(4096, name=f"b{i}") for i in range(3)]
    try:
        with ServicePort("dsp", channel="rpmsg-frames", root=held.root) as port:
            port.attach(frames[0])
            port.attach(frames[1])
            with pytest.raises(OSError) as info:
                port.attach(frames[2])
            assert info.value.errno == errno.EMFILE and held.attached() == 2
        assert wait_for(lambda: held.attached() == 0, TIMEOUT)
        assert wait_for(lambda: service_buffers._budget.count == 0, TIMEOUT)
    finally:
        for frame in frames:
            frame.close()
