"""The rpmsg_char backend against a fake kernel (fake_rpmsg_char.py): no kernel needed.

The same backend runs against the real kernel in tests/kernel (User-Mode Linux).
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_rpmsg_char import FakeOps, FakeRpmsgKernel

from amplink.errors import (
    AddressError,
    EndpointClosed,
    LinkDown,
    MessageTooLarge,
    NoBufferAvailable,
    NotSupported,
    PeerTimeout,
    ReceiveTimeout,
    SendTimeout,
)
from amplink.link.runtime import Link
from amplink.transports.rpmsg_char import (
    DeviceBusy,
    DeviceNotFound,
    DevicePermissionError,
    InvalidRequest,
    MalformedSysfs,
    RpmsgCharError,
    RpmsgSysfs,
    kernel_error,
    rpmsg_char_link,
)
from amplink.transports.rpmsg_char.backend import LOCAL_ADDRESS_BASE
from amplink.transports.rpmsg_char.sysfs import check_component, read_attribute

RAW = "rpmsg-raw"


@pytest.fixture
def kernel(tmp_path: Path) -> FakeRpmsgKernel:
    return FakeRpmsgKernel(tmp_path)


def make_link(kernel: FakeRpmsgKernel, **options: object) -> Link:
    return rpmsg_char_link("rpmsg_ctrl0", sys_root=kernel.sys, dev_root=kernel.dev,
                           ops=FakeOps(kernel), **options)  # type: ignore[arg-type]


@pytest.fixture
def link(kernel: FakeRpmsgKernel) -> Iterator[Link]:
    lk = make_link(kernel)
    try:
        yield lk
    finally:
        lk.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- channels -------------------------------------------------------------------------------
def test_channels_are_the_buses_devices(kernel, link):
    kernel.announce(RAW, 0x400)
    kernel.announce("rpmsg-echo", 0x401)
    seen = {(c.name, c.dst, c.src) for c in link.channels()}
    # the kernel's own rpmsg_ns and rpmsg_ctrl devices are not channels of the remote
    assert seen == {(RAW, 0x400, 1024), ("rpmsg-echo", 0x401, 0xFFFFFFFF)}
    assert link.capabilities.addressing == "pair" and link.capabilities.channel_discovery


def test_a_channel_announced_later_is_found_while_waiting(kernel, link):
    threading.Timer(0.15, kernel.announce, args=(RAW, 0x400)).start()
    t0 = time.monotonic()
    ep = link.open_channel(RAW, timeout=5)
    assert time.monotonic() - t0 < 2
    ep.send(b"late")
    assert ep.recv(timeout=2) == b"late"


def test_waiting_for_a_channel_that_never_comes_times_out(link):
    with pytest.raises(PeerTimeout):
        link.open_channel("nobody", timeout=0.2)


def test_a_raw_channel_opens_its_own_device_and_echoes_every_size(kernel, link):
    kernel.announce(RAW, 0x400)
    ep = link.open_channel(RAW, timeout=1)
    assert (ep.addr, ep.dst) == (1024, 0x400)
    assert [name for name, _ in kernel.calls.ioctls] == []  # no endpoint was made
    for n in range(link.mtu + 1):
        data = bytes((i * 7 + n) & 0xFF for i in range(n))
        ep.send(data)
        assert ep.recv(timeout=2) == data
    assert kernel.sent[-1] == (1024, 0x400, data)
    ep.close()
    assert kernel.calls.ioctls == []  # a channel's own device is not destroyed
    assert kernel.open_endpoints() == []


def test_another_channel_gets_an_endpoint_made_through_the_control_device(kernel, link):
    kernel.announce("rpmsg-echo", 0x401)
    ep = link.open_channel("rpmsg-echo", timeout=1)
    assert (ep.addr, ep.dst) == (LOCAL_ADDRESS_BASE, 0x401)
    assert kernel.calls.ioctls == [("CREATE_EPT", LOCAL_ADDRESS_BASE)]
    node = kernel.open_endpoints()[0].node
    assert (kernel.sys / "class" / "rpmsg" / node / "name").read_text() == "rpmsg-echo\n"
    ep.send(b"ping")
    assert ep.recv(timeout=2) == b"ping"
    ep.close()
    assert kernel.calls.ioctls[-1] == ("DESTROY_EPT", LOCAL_ADDRESS_BASE)
    assert not (kernel.sys / "class" / "rpmsg" / node).exists()
    assert not (kernel.dev / node).exists()


def test_a_second_opener_of_a_raw_channel_gets_its_own_endpoint(kernel, link):
    kernel.announce(RAW, 0x400)
    first = link.open_channel(RAW, timeout=1)
    second = link.open_channel(RAW, timeout=1)
    assert first.addr == 1024 and second.addr == LOCAL_ADDRESS_BASE
    for ep in (first, second):
        ep.send(f"from {ep.addr}".encode())
    assert first.recv(timeout=2) == b"from 1024"
    assert second.recv(timeout=2) == f"from {LOCAL_ADDRESS_BASE}".encode()


def test_many_endpoints_each_get_their_own_answers(kernel, link):
    kernel.announce(RAW, 0x400)
    eps = [link.create_endpoint(f"ep{i}", dst=0x400) for i in range(32)]
    assert len({ep.addr for ep in eps}) == 32
    for ep in eps:
        ep.send(ep.name.encode())
    assert [ep.recv(timeout=2) for ep in eps] == [ep.name.encode() for ep in eps]
    for ep in eps:
        ep.close()
    assert kernel.open_endpoints() == []
    assert sum(1 for name, _ in kernel.calls.ioctls if name == "DESTROY_EPT") == 32


def test_an_explicit_address_the_kernel_uses_is_refused_before_anything_is_made(kernel, link):
    kernel.announce(RAW, 0x400)  # its endpoint is at 1024
    with pytest.raises(AddressError):
        link.create_endpoint("x", addr=1024 + 0, dst=0x999)
    with pytest.raises(AddressError):
        link.create_endpoint("x", addr=53, dst=0x999)  # the name service's address
    assert kernel.calls.ioctls == []


def test_the_address_picked_avoids_those_other_programs_made(kernel, link):
    kernel._make_eptdev(kernel.ctrl_dir, "theirs", LOCAL_ADDRESS_BASE, 0x400, default=False)
    ep = link.create_endpoint("mine", dst=0x400)
    assert ep.addr == LOCAL_ADDRESS_BASE + 1


# -- sending and receiving ------------------------------------------------------------------
def test_over_the_mtu_is_refused_with_emsgsize(kernel, link):
    kernel.announce(RAW, 0x400)
    ep = link.open_channel(RAW, timeout=1)
    with pytest.raises(MessageTooLarge) as info:
        ep.send(bytes(link.mtu + 1))
    assert info.value.errno == errno.EMSGSIZE
    assert kernel.sent == []


def test_the_kernels_emsgsize_is_message_too_large(kernel):
    kernel.mtu = 200  # a transport with smaller buffers than the link was told
    link = make_link(kernel)
    try:
        kernel.announce(RAW, 0x400)
        ep = link.open_channel(RAW, timeout=1)
        with pytest.raises(MessageTooLarge) as info:
            ep.send(bytes(300))
        assert info.value.errno == errno.EMSGSIZE
        ep.send(bytes(200))
        assert ep.recv(timeout=2) == bytes(200)
    finally:
        link.close()


def test_no_free_buffer_is_eagain_and_a_blocked_send_goes_once_one_frees(kernel, link):
    kernel.announce(RAW, 0x400, handler=None)
    ep = link.open_channel(RAW, timeout=1)
    kernel.tx_free = 0
    with pytest.raises(NoBufferAvailable) as info:
        ep.try_send(b"x")
    assert info.value.errno == errno.EAGAIN
    with pytest.raises(SendTimeout):
        ep.send(b"x", timeout=0.1)

    def free() -> None:
        with kernel.lock:
            kernel.tx_free = 1

    threading.Timer(0.1, free).start()
    t0 = time.monotonic()
    ep.send(b"after", timeout=5)  # Linux 6.1 says nothing when a buffer frees: polled
    assert time.monotonic() - t0 < 2
    assert kernel.sent == [(1024, 0x400, b"after")]


def test_receive_timeout_and_a_message_from_the_remote(kernel, link):
    kernel.announce(RAW, 0x400, handler=None)
    ep = link.open_channel(RAW, timeout=1)
    with pytest.raises(ReceiveTimeout):
        ep.recv(timeout=0.05)
    threading.Timer(0.05, kernel.send_to, args=(ep.addr, b"unasked")).start()
    payload, src = ep.recvfrom(timeout=2)
    assert (payload, src) == (b"unasked", 0x400)  # the kernel hides the source: the peer's


def test_empty_messages_are_messages(kernel, link):
    kernel.announce(RAW, 0x400)
    ep = link.open_channel(RAW, timeout=1)
    ep.send(b"")
    assert ep.recv(timeout=2) == b""


def test_a_device_sends_only_from_and_to_its_own_addresses(kernel, link):
    kernel.announce(RAW, 0x400)
    ep = link.open_channel(RAW, timeout=1)
    with pytest.raises(NotSupported) as info:
        ep.sendto(b"x", 0x999)
    assert info.value.errno == errno.EOPNOTSUPP
    with pytest.raises(NotSupported):
        ep.send_offchannel(0x1234, 0x400, b"x")
    assert kernel.sent == []


def test_callbacks_and_asyncio(kernel, link):
    kernel.announce(RAW, 0x400)
    got: list[bytes] = []
    done = threading.Event()

    def on_message(ep, payload, src):
        got.append(payload)
        done.set()

    cb = link.create_endpoint("cb", dst=0x400, callback=on_message)
    cb.send(b"to the callback")
    assert done.wait(5) and got == [b"to the callback"]

    async def main() -> bytes:
        ep = link.open_channel(RAW, timeout=1)
        await ep.asend(b"awaited")
        return await ep.arecv(timeout=2)

    assert asyncio.run(asyncio.wait_for(main(), 10)) == b"awaited"


def test_writable_readiness_needs_a_kernel_that_reports_it(kernel, link):
    assert not link.capabilities.tx_ready  # Linux 6.1
    kernel.announce(RAW, 0x400)
    ep = link.open_channel(RAW, timeout=1)
    with pytest.raises(NotSupported):
        ep.wait_writable(0.1)
    newer = FakeRpmsgKernel(kernel.root / "newer", release="7.0.0")
    newer_link = make_link(newer)
    try:
        assert newer_link.capabilities.tx_ready and newer_link.backend.tx_kicks
    finally:
        newer_link.close()


# -- flow control ---------------------------------------------------------------------------
def test_flow_control_is_not_supported_by_linux_6_1(kernel, link):
    kernel.announce(RAW, 0x400)
    ep = link.open_channel(RAW, timeout=1)
    backend = link.backend
    for call in (lambda: backend.outgoing_flow_restricted(ep.addr),
                 lambda: backend.set_incoming_flow_control(ep.addr, True)):
        with pytest.raises(NotSupported) as info:
            call()
        assert info.value.errno == errno.EOPNOTSUPP
        assert "EINVAL" in str(info.value)


def test_flow_control_on_a_later_kernel(tmp_path):
    for transport_flow, expect_set in ((False, NotSupported), (True, None)):
        kernel = FakeRpmsgKernel(tmp_path / str(transport_flow), release="6.8.0",
                                 flow_control=True, transport_flow_control=transport_flow)
        link = make_link(kernel)
        try:
            kernel.announce(RAW, 0x400)
            ep = link.open_channel(RAW, timeout=1)
            kernel.remote_flow_restricted = 1
            assert link.backend.outgoing_flow_restricted(ep.addr) is True
            if expect_set is None:
                link.backend.set_incoming_flow_control(ep.addr, True)
                assert kernel.incoming_paused == {ep.addr: True}
            else:
                with pytest.raises(expect_set) as info:  # virtio: EOPNOTSUPP
                    link.backend.set_incoming_flow_control(ep.addr, True)
                assert info.value.errno == errno.EOPNOTSUPP
            with pytest.raises(AddressError):
                link.backend.outgoing_flow_restricted(0x7777)
        finally:
            link.close()


# -- things going away ----------------------------------------------------------------------
def test_a_removed_channel_loses_its_endpoint_and_the_link_goes_on(kernel, link):
    raw = kernel.announce(RAW, 0x400)
    kernel.announce("other", 0x401)
    ep = link.open_channel(RAW, timeout=1)
    other = link.open_channel("other", timeout=1)
    kernel.send_to(ep.addr, b"before")
    time.sleep(0.05)
    kernel.remove_channel(raw)
    with pytest.raises(LinkDown) as info:
        for _ in range(3):
            ep.recv(timeout=2)  # what came before may still be read, then LinkDown
    assert info.value.errno == errno.EPIPE
    assert link.is_up
    other.send(b"still here")
    assert other.recv(timeout=2) == b"still here"
    assert [c.name for c in link.channels()] == ["other"]
    assert link.statistics().backend["endpoints_lost"] == 1


def test_a_blocked_reader_of_a_removed_channel_gets_link_down_at_once(kernel):
    """The endpoint lost while the reader waited is closed by the drain that found it,
    not by a later one: nothing else would wake the reader before the safety net."""
    link = make_link(kernel, safety_timeout=5.0)
    try:
        raw = kernel.announce(RAW, 0x400)
        ep = link.open_channel(RAW, timeout=1)
        errors: list[BaseException] = []

        def blocked() -> None:
            try:
                ep.recv(timeout=10)
            except BaseException as exc:  # noqa: BLE001 - checked below
                errors.append(exc)

        t = threading.Thread(target=blocked)
        t.start()
        time.sleep(0.1)  # it waits now
        t0 = time.monotonic()
        kernel.remove_channel(raw)
        t.join(5)
        assert time.monotonic() - t0 < 1.0  # the safety net would take 5 s
        assert isinstance(errors[0], LinkDown) and errors[0].errno == errno.EPIPE
    finally:
        link.close()


def test_the_device_going_away_is_link_down_for_every_waiter(kernel, link):
    kernel.announce(RAW, 0x400)
    kernel.announce("rpmsg-echo", 0x401)
    ep = link.open_channel(RAW, timeout=1)
    made = link.open_channel("rpmsg-echo", timeout=1)
    errors: list[BaseException] = []

    def blocked() -> None:
        try:
            made.recv(timeout=10)
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    t = threading.Thread(target=blocked)
    t.start()
    time.sleep(0.1)
    kernel.remove_device()
    t.join(5)
    assert not t.is_alive()
    assert isinstance(errors[0], LinkDown) and errors[0].errno == errno.EPIPE
    # The kernel removes the endpoint devices before the control device: a waiter woken
    # while rpmsg_ctrl0 is still there is told its endpoint went, one woken after that
    # the whole device did (up to timing; the link is down either way, below).
    assert "went away" in str(errors[0]) or "removed this endpoint" in str(errors[0])
    with pytest.raises(LinkDown) as info:
        ep.send(b"x")
    assert info.value.errno == errno.EPIPE
    with pytest.raises(LinkDown):
        link.open_channel(RAW, timeout=1)
    assert not link.is_up
    link.close()  # no RPMSG_DESTROY_EPT_IOCTL on removed devices: the fake would fail
    assert kernel.open_endpoints() == []


def test_a_link_whose_device_went_before_it_waited_is_down(kernel, link):
    kernel.remove_device()
    with pytest.raises(LinkDown) as info:
        link.wait_channel(RAW, timeout=1)
    assert info.value.errno == errno.ENODEV


def test_close_releases_every_fd_and_destroys_what_it_made(kernel):
    before = open_fds()
    link = make_link(kernel)
    kernel.announce(RAW, 0x400)
    eps = [link.open_channel(RAW, timeout=1)] + [
        link.create_endpoint(f"e{i}", dst=0x400) for i in range(4)]
    for ep in eps:
        ep.send(b"x")
    link.close()
    assert open_fds() == before
    assert [name for name, _ in kernel.calls.ioctls].count("DESTROY_EPT") == 4
    assert sorted(kernel.eptdevs) == ["rpmsg0"]  # the channel's own device stays
    with pytest.raises(EndpointClosed):
        eps[0].send(b"x")


# -- kernel errors --------------------------------------------------------------------------
def test_a_device_open_elsewhere_is_device_busy(kernel, link):
    channel = kernel.announce(RAW, 0x400)
    assert channel.eptdev is not None
    kernel.busy_elsewhere.add(channel.eptdev.node)
    with pytest.raises(DeviceBusy) as info:
        link.open_channel(RAW, timeout=1)
    assert info.value.errno == errno.EBUSY


def test_no_permission_on_the_control_device_shows_at_once(kernel):
    kernel.denied.add("rpmsg_ctrl0")
    with pytest.raises(DevicePermissionError) as info:
        make_link(kernel)
    assert info.value.errno == errno.EACCES


def test_a_missing_control_device(kernel):
    with pytest.raises(DeviceNotFound):
        rpmsg_char_link("rpmsg_ctrl7", sys_root=kernel.sys, dev_root=kernel.dev,
                        ops=FakeOps(kernel))
    with pytest.raises(DeviceNotFound):
        rpmsg_char_link("../rpmsg_ctrl0", sys_root=kernel.sys, dev_root=kernel.dev,
                        ops=FakeOps(kernel))


@pytest.mark.parametrize(("err", "kind"), [
    (errno.EMSGSIZE, MessageTooLarge), (errno.EAGAIN, NoBufferAvailable),
    (errno.EPIPE, LinkDown), (errno.ENODEV, LinkDown), (errno.ENXIO, LinkDown),
    (errno.ENETRESET, LinkDown), (errno.EOPNOTSUPP, NotSupported), (errno.ENOTTY, NotSupported),
    (errno.EBUSY, DeviceBusy), (errno.EINVAL, InvalidRequest),
    (errno.EACCES, DevicePermissionError), (errno.EPERM, DevicePermissionError),
    (errno.ENOENT, DeviceNotFound), (errno.EFAULT, RpmsgCharError), (errno.EIO, RpmsgCharError),
])
def test_every_kernel_errno_is_typed_and_kept(err, kind):
    error = kernel_error(OSError(err, os.strerror(err)), "/dev/rpmsg0 write")
    assert type(error) is kind
    assert error.errno == err
    assert "/dev/rpmsg0 write" in str(error)


# -- sysfs is untrusted ---------------------------------------------------------------------
def test_malformed_sysfs_entries_are_typed_and_skipped_by_listings(kernel, link):
    good = kernel.announce("good", 0x401)
    bad = [kernel.announce(f"bad{i}", 0x410 + i) for i in range(5)]
    (bad[0].entry / "src").write_text("zz\n")
    (bad[1].entry / "name").write_bytes(b"\xff\xfe\n")
    (bad[2].entry / "name").write_text("x" * 40 + "\n")
    (bad[3].entry / "dst").write_text("0x" + "f" * 4097 + "\n")
    (bad[4].entry / "dst").write_text("0x401\n0x402\n")
    assert [c.name for c in link.channels()] == [good.name]
    sysfs = RpmsgSysfs(kernel.sys)
    for channel in bad:
        with pytest.raises(MalformedSysfs):
            sysfs.channel(channel.entry.name)
    assert link.statistics().backend["sysfs_malformed"] == 5
    for name in ("..", ".", "a/b", "", "x\0y"):
        with pytest.raises(MalformedSysfs):
            check_component(name, "test")
    with pytest.raises(DeviceNotFound):
        sysfs.endpoint("rpmsg0/../../x")


def test_endpoint_addresses_are_parsed_as_rpmsg_char_prints_them(kernel):
    kernel._make_eptdev(kernel.ctrl_dir, "any", 0xFFFFFFFF, 0x400, default=False)
    ept = RpmsgSysfs(kernel.sys).endpoints()[0]
    assert (ept.src, ept.dst) == (0xFFFFFFFF, 0x400)  # "-1" and "1024"
    (kernel.sys / "class" / "rpmsg" / ept.node / "src").write_text("4294967296\n")
    with pytest.raises(MalformedSysfs):
        RpmsgSysfs(kernel.sys).endpoint(ept.node)
    path = kernel.root / "attr"
    path.write_bytes(b"x" * 5000)
    with pytest.raises(MalformedSysfs):
        read_attribute(path)


def test_a_device_link_removed_while_it_is_resolved_is_a_device_gone(kernel, link,
                                                                      monkeypatch):
    """realpath raises FileNotFoundError when a link on the way goes while it is resolved
    (the kernel removing a device): a gone device, never a raw error out of a wait."""
    from amplink.transports.rpmsg_char import sysfs as sysfs_module

    kernel.announce(RAW, 0x400)
    ep = link.open_channel(RAW, timeout=2)
    backend = link.backend

    def vanishing(path: object, **_: object) -> str:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))

    monkeypatch.setattr(sysfs_module.os.path, "realpath", vanishing)
    assert not backend.sysfs.exists(backend.ctrl)
    assert backend.sysfs.channels() == []
    assert backend.sysfs.endpoints() == []
    with pytest.raises(DeviceNotFound):
        backend.sysfs.control(backend.ctrl.node)
    kernel.remove_device()
    with pytest.raises(LinkDown):
        ep.recv(timeout=2)
    assert not link.is_up
