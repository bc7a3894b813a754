"""amplink's vhost-user device against a front end written in the test (frontend_kit)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from frontend_kit import (
    FakeFrontEnd,
    mappings,
    open_fds,
    serving,
    wait_until,
)

from amplink.errors import MessageTooLarge
from amplink.link import Link
from amplink.platforms.vhost_user import protocol as P
from amplink.platforms.vhost_user.protocol import Request, VringState

ECHO = "amplink.firmware.examples.echo"


@pytest.mark.parametrize("event_idx", [True, False], ids=["event-idx", "flags"])
def test_echo_every_size_through_the_guest_rings(tmp_path: Path, event_idx: bool) -> None:
    with serving(tmp_path / "s", ECHO) as server:
        fe = FakeFrontEnd(server.path)
        try:
            link = fe.boot(event_idx=event_idx)
            ep = link.open_channel("rpmsg-echo", timeout=5)
            assert link.mtu == 496
            for n in range(497):
                data = bytes((n + i) & 0xFF for i in range(n))
                ep.send(data, timeout=2)
                assert ep.recv(timeout=2) == data
            with pytest.raises(MessageTooLarge):
                ep.send(bytes(497))
            run = server.backend.run if server.backend else None
            assert run is not None
            stats = run.link.statistics()
            assert stats.backend["event_idx"] is event_idx
            assert stats.backend["protocol_faults"] == {} and stats.backend["malformed_rx"] == 0
            assert stats.messages_received == 497
            fe.shut_down()
        finally:
            fe.close()
        assert wait_until(lambda: server.statistics().connections == 1 and server.backend is None)
        stats = server.statistics()
        assert (stats.protocol_errors, stats.runs_started, stats.firmware_errors) == (0, 1, 0)


def test_a_new_connection_starts_a_fresh_firmware_run(tmp_path: Path) -> None:
    runs: list[Link] = []

    def firmware(link: Link) -> None:
        runs.append(link)
        link.create_endpoint(f"run-{len(runs)}", announce=True,
                             callback=lambda ep, data, src: ep.sendto(data, src))
        link.run()

    with serving(tmp_path / "s", firmware) as server:
        for i in (1, 2):
            fe = FakeFrontEnd(server.path)
            try:
                ep = fe.boot().open_channel(f"run-{i}", timeout=5)
                ep.send(b"hello")
                assert ep.recv(timeout=2) == b"hello"
                fe.shut_down()
            finally:
                fe.close()
            assert wait_until(lambda: server.backend is None)
        assert len(runs) == 2 and runs[0] is not runs[1]
        assert not runs[0].is_up  # the first run's link was closed with its connection
        assert server.statistics().runs_started == 2


def test_teardown_leaves_no_fds_or_mappings(tmp_path: Path) -> None:
    before = open_fds()
    with serving(tmp_path / "s", ECHO) as server:
        for _ in range(2):
            fe = FakeFrontEnd(server.path)
            try:
                ep = fe.boot().open_channel("rpmsg-echo", timeout=5)
                ep.send(b"x")
                assert ep.recv(timeout=2) == b"x"
                assert mappings("fake-guest-ram") == 2  # the back end's and the driver's
            finally:
                fe.close()  # a hang-up without the teardown messages
            assert wait_until(lambda: server.backend is None)
        assert mappings("fake-guest-ram") == 0
        assert mappings("amplink-vhost-user-vdev") == 0
    assert open_fds() == before


def test_get_vring_base_stops_the_run_and_reports_the_position(tmp_path: Path) -> None:
    with serving(tmp_path / "s", ECHO) as server:
        fe = FakeFrontEnd(server.path)
        try:
            ep = fe.boot().open_channel("rpmsg-echo", timeout=5)
            for i in range(5):
                ep.send(b"%d" % i)
                assert ep.recv(timeout=2) == b"%d" % i
            run = server.backend.run if server.backend else None
            assert run is not None
            fe.send(Request.GET_VRING_BASE, VringState(1, 0).pack())
            # vring 1 (driver -> device): the five messages were consumed
            assert VringState.unpack(fe.reply(Request.GET_VRING_BASE)) == VringState(1, 5)
            assert not run.running and not run.link.is_up
            fe.send(Request.GET_VRING_BASE, VringState(0, 0).pack())
            # vring 0 (device -> driver): one announcement and five echoes took buffers
            assert VringState.unpack(fe.reply(Request.GET_VRING_BASE)) == VringState(0, 6)
        finally:
            fe.close()


def test_only_the_queue_with_news_is_signalled(tmp_path: Path) -> None:
    calls = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(2)]
    with serving(tmp_path / "s", ECHO) as server:
        fe = FakeFrontEnd(server.path)
        try:
            fe.negotiate()
            fe.setup_queues(calls=calls)
            # The driver posts RX buffers, kicks, and waits for the announcement (its own
            # doorbell is not these fds: it finds the message by its safety-net poll).
            link = fe.start_driver()
            ep = link.open_channel("rpmsg-echo", timeout=5)
            assert _count(calls[1]) == 0  # vring 1 returned nothing: no interrupt for it
            # Whether the announcement was signalled depends on whether the driver had
            # armed RX interrupts yet (it spins before it sleeps): arm them, and the echo
            # of a message is news on vring 0, signalled.
            _count(calls[0])
            link.backend.arm(rx=True, tx=False)
            ep.send(b"news")
            assert wait_until(lambda: _count(calls[0]) > 0)
        finally:
            fe.close()
            for fd in calls:
                os.close(fd)


@pytest.mark.parametrize("event_idx", [True, False], ids=["event-idx", "flags"])
def test_a_driver_that_never_waits_for_tx_buffers_gets_no_tx_interrupt(
        tmp_path: Path, event_idx: bool) -> None:
    """The driver's transmit interrupts stay off unless a send waits for a buffer: the
    device returns every used TX buffer without signalling vring 1, whether it suppresses
    by the used-event index or by the avail flags."""
    calls = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(2)]
    with serving(tmp_path / "s", ECHO) as server:
        fe = FakeFrontEnd(server.path)
        try:
            fe.negotiate(event_idx=event_idx)
            fe.setup_queues(calls=calls)
            link = fe.start_driver()
            link.spin = 0.0  # each recv sleeps: the echo comes with an RX interrupt
            ep = link.open_channel("rpmsg-echo", timeout=5)
            for i in range(20):
                ep.send(b"%d" % i)
                assert ep.recv(timeout=2) == b"%d" % i
            # the device consumed all 20 (their echoes came back): no signal on vring 1
            assert _count(calls[1]) == 0
        finally:
            fe.close()
            for fd in calls:
                os.close(fd)


def _count(efd: int) -> int:
    try:
        return os.eventfd_read(efd)
    except BlockingIOError:
        return 0


def test_firmware_that_raises_is_counted_and_the_server_goes_on(tmp_path: Path) -> None:
    def broken(link: Link) -> None:
        raise RuntimeError("firmware bug")

    with serving(tmp_path / "s", broken) as server:
        fe = FakeFrontEnd(server.path)
        try:
            fe.boot()
            assert wait_until(lambda: server.statistics().runs_started == 1)
        finally:
            fe.close()
        assert wait_until(lambda: server.statistics().firmware_errors == 1)
        fe = FakeFrontEnd(server.path)  # the next front end is served
        try:
            assert fe.get_u64(Request.GET_FEATURES) & (1 << P.VHOST_USER_F_PROTOCOL_FEATURES)
        finally:
            fe.close()


def test_call_fd_replaced_while_running(tmp_path: Path) -> None:
    """SET_VRING_CALL during a run (QEMU does it when masking): signals go to the new fd."""
    new_call = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    with serving(tmp_path / "s", ECHO) as server:
        fe = FakeFrontEnd(server.path)
        try:
            link = fe.boot()
            ep = link.open_channel("rpmsg-echo", timeout=5)
            fe.call_acked(Request.SET_VRING_CALL, P.pack_u64(0), [new_call])
            run = server.backend.run if server.backend else None
            assert run is not None and run.running  # the firmware was not restarted
            ep.send(b"after the swap")
            assert ep.recv(timeout=2) == b"after the swap"  # served across the swap
            # The device signals only a driver that asked for interrupts, and whether this
            # one had (it spins before it sleeps) is up to timing: arm them, and the echo of
            # the next message is news on vring 0, signalled on the new fd.
            _count(new_call)
            link.backend.arm(rx=True, tx=False)
            ep.send(b"signalled")
            assert wait_until(lambda: _count(new_call) > 0)
            assert ep.recv(timeout=2) == b"signalled"
        finally:
            fe.close()
            os.close(new_call)
