"""The native C echo firmware (amplink/firmware/examples/native_echo.c), built with gcc."""

from __future__ import annotations

import signal

import pytest
from common_kit import Events, wait_for
from rproc_sim_kit import echo

from amplink import FirmwareError, LinkConfig, SharedRegion, SimProcessor, SimRemoteProc
from amplink.platforms.sim import NativeImage
from amplink.remoteproc import DeviceAddressMap, RprocState, Trace

PAYLOADS = [b"native %d" % i for i in range(150)]  # more than the 64-entry rings hold


def test_native_echo_under_the_lifecycle(native_echo: str) -> None:
    rproc = SimRemoteProc(native_echo)
    events = Events(rproc)
    with rproc.acquire():
        table = rproc.resource_table
        assert table is not None
        ((_, trace),) = table.items(Trace)
        assert 0x8000_0000 <= trace.da and trace.len == 1024  # placed by the host
        assert wait_for(lambda: "native_echo: up" in rproc.trace(), 5.0), rproc.trace()
        echo(rproc, PAYLOADS)
        assert [c[0] for c in rproc.channels()] == ["rpmsg-echo"]
        pid = rproc.pid
        rproc.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        assert events.wait("recovered")
        assert rproc.pid != pid and rproc.state is RprocState.RUNNING
        echo(rproc, PAYLOADS[:10])
    assert rproc.ops.last_exit_status == 0  # it exits when the host hangs up


def test_native_echo_feeds_the_watchdog_and_polls(native_echo: str) -> None:
    rproc = SimRemoteProc(native_echo, watchdog=0.5, poll_mode=True)
    events = Events(rproc)
    with rproc.acquire():
        echo(rproc, PAYLOADS[:20])
        assert not events.wait("crash", timeout=1.0)


def test_native_echo_follows_the_simple_convention_too(native_echo: str) -> None:
    with SimProcessor(native_echo, native=True, boot_timeout=10.0) as proc:
        ep = proc.link.open_channel("rpmsg-echo", timeout=5.0)
        for payload in PAYLOADS:
            ep.send(payload, timeout=5.0)
            assert ep.recv(timeout=5.0) == payload
    assert proc.process is not None and proc.process.returncode == 0


def test_native_loading_copies_only_segments_inside_carveouts(native_echo: str) -> None:
    image = NativeImage.from_path(native_echo, LinkConfig())
    elf = image.image
    seg = elf.segments[0]
    size = 1 << 20
    assert seg.memsz <= size
    with SharedRegion.memfd(size, "native-load") as region:
        region.fill(0, size, 0xAA)
        image.load(DeviceAddressMap())  # no carveout: nothing is copied
        assert region.read(0, 16) == b"\xaa" * 16
        inside = DeviceAddressMap()
        inside.add(seg.paddr, seg.memsz, region, 0, name="fixed")
        image.load(inside)
        assert region.read(0, seg.filesz) == elf.data[seg.offset:seg.offset + seg.filesz]
        straddling = DeviceAddressMap()
        straddling.add(seg.paddr + 8, seg.memsz, region, 0, name="edge")
        with pytest.raises(FirmwareError, match="straddles the edge of carveout 'edge'"):
            image.load(straddling)
