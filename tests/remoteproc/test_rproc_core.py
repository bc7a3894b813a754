"""The lifecycle engine on an in-process platform: order, power count, crashes, recovery."""

from __future__ import annotations

import errno
import io
import threading
from pathlib import Path

import pytest
from common_kit import Events, Outcome
from elftools.elf.elffile import ELFFile
from rproc_firmware import Firmware
from rproc_kit import ANY, POOL_DA, SERVICE, FakeImage, FakeOps, rpmsg_vdev

from amplink.errors import FirmwareError, LinkDown
from amplink.link.channel import RpmsgDriver
from amplink.remoteproc.api import CrashReason
from amplink.remoteproc.core import RemoteProc
from amplink.remoteproc.coredump import CoredumpMode
from amplink.remoteproc.elf_loader import FirmwareImage
from amplink.remoteproc.errors import NotBooted, RprocBusy
from amplink.remoteproc.image import ElfImage
from amplink.remoteproc.rsc_table import Carveout, ResourceTable, Trace, VendorResource
from amplink.remoteproc.states import InvalidTransition, RprocState

TIMEOUT = 5.0
TABLE = ResourceTable([Carveout(ANY, ANY, 0x2000, name="data"), Trace(ANY, 128, name="t0"),
                       VendorResource(130, b"\0" * 4), rpmsg_vdev()])


def make(table: ResourceTable | bytes | None = TABLE, **options) -> tuple[RemoteProc, FakeOps]:
    ops = FakeOps({"fw": FakeImage(table)})
    return RemoteProc(ops, "fw", name="fake0", **options), ops


def echo(rproc: RemoteProc, payload: bytes = b"ping") -> None:
    with rproc.link.open_channel(SERVICE, timeout=TIMEOUT) as ep:
        ep.send(payload, timeout=TIMEOUT)
        assert ep.recv(timeout=TIMEOUT) == payload


def test_boot_order_and_shutdown() -> None:
    rproc, ops = make()
    events = Events(rproc, TIMEOUT)
    rproc.boot()
    try:
        # vdevs are registered only after the start, and the remote waited for DRIVER_OK
        assert ops.calls == ["load_image", "allocate_memory", "start", "doorbell",
                             "wait_started", "watch"]
        assert ops.status_at_start == [0]
        assert rproc.state is RprocState.RUNNING and rproc.power == 1
        assert [e.body for e in ops.vendor_seen] == [b"\0" * 4]
        table = rproc.resource_table
        assert table is not None and table.entries[0].da == POOL_DA
        echo(rproc)
        assert [name for name, _, _ in rproc.channels()] == [SERVICE]
    finally:
        rproc.shutdown()
    assert ops.calls[-2:] == ["stop(crashed=False)", "release_memory"]
    assert rproc.state is RprocState.OFFLINE and rproc.resource_table is None
    assert ops.memories[0].pool.closed
    assert events.kinds() == ["state", "state"]
    with pytest.raises(LinkDown):
        rproc.link  # noqa: B018 - no link while offline


def test_two_users_share_one_run() -> None:
    rproc, ops = make()
    rproc.boot()
    rproc.boot()
    assert ops.calls.count("start") == 1 and rproc.power == 2
    rproc.shutdown()
    assert rproc.state is RprocState.RUNNING and "stop(crashed=False)" not in ops.calls
    echo(rproc)
    rproc.shutdown()
    assert rproc.state is RprocState.OFFLINE and ops.calls.count("stop(crashed=False)") == 1
    with pytest.raises(NotBooted, match="no users") as info:
        rproc.shutdown()
    assert isinstance(info.value, RuntimeError) and info.value.errno == errno.EINVAL
    with rproc.acquire():
        assert rproc.state is RprocState.RUNNING
    assert rproc.state is RprocState.OFFLINE


def test_stop_removes_channels_and_runs_driver_remove() -> None:
    rproc, _ = make()
    probed, removed = threading.Event(), threading.Event()
    driver = RpmsgDriver([SERVICE], probe=lambda ch: probed.set(),
                         remove=lambda ch: removed.set())
    rproc.register_driver(driver)
    with rproc.acquire():
        link = rproc.link
        link.run(probed.is_set, timeout=TIMEOUT)
        assert probed.is_set()
        bound = driver.channels[0]
        ep = link.open_channel(SERVICE, timeout=TIMEOUT)  # a second opener
    assert removed.is_set() and bound.removed and not driver.channels
    assert ep.closed and bound.endpoint is None
    assert link.statistics().state == "closed"


def test_crash_recovery_reuses_memory_and_rebinds_drivers(tmp_path: Path) -> None:
    rproc, ops = make(coredump=CoredumpMode.INLINE, coredump_dir=tmp_path)
    events = Events(rproc, TIMEOUT)
    probes: list[object] = []
    driver = RpmsgDriver([SERVICE], probe=probes.append)
    rproc.register_driver(driver)
    with rproc.acquire():
        first_link = rproc.link
        first_link.run(lambda: bool(probes), timeout=TIMEOUT)
        before = rproc.resource_table.build()  # type: ignore[union-attr]
        reporter = ops.reporter
        reporter(CrashReason.WATCHDOG, "late")
        reporter(CrashReason.FATAL_ERROR, "twice")  # the same run: ignored
        assert events.wait("recovered")
        assert rproc.state is RprocState.RUNNING and rproc.crash_count == 1
        assert rproc.statistics().last_crash == "watchdog: late"
        assert len(ops.memories) == 1 and ops.calls.count("allocate_memory") == 1
        assert rproc.resource_table.build() == before  # type: ignore[union-attr]
        assert not first_link.is_up
        rproc.link.run(lambda: len(probes) == 2, timeout=TIMEOUT)
        assert len(probes) == 2  # the driver bound to the new announcement
        echo(rproc)
        reporter(CrashReason.WATCHDOG, "stale")  # a report about the old run
        assert not events.wait("crash", 2, timeout=0.2)
        (dump,) = rproc.coredumps
        assert events.kinds().count("coredump") == 1
    elf = ELFFile(io.BytesIO(dump.read_bytes()))
    assert elf.header["e_type"] == "ET_CORE"
    loads = list(elf.iter_segments("PT_LOAD"))
    assert POOL_DA in [s["p_paddr"] for s in loads]  # the carveout
    assert len(loads) == 1 + 1 + 2 + 1 + 1  # carveout, trace, vrings, buffers, table


def test_failed_recovery_stays_crashed_until_recover() -> None:
    rproc, ops = make()
    events = Events(rproc, TIMEOUT)
    with rproc.acquire():
        ops.fail_start = RuntimeError("brown-out")
        ops.report()
        assert events.wait("error")
        assert events.of("error")[0].detail == "recovery failed: brown-out"
        assert rproc.state is RprocState.CRASHED and not rproc.links
        ops.fail_start = None
        rproc.recover()
        assert rproc.state is RprocState.RUNNING
        echo(rproc)


def test_a_crash_wakes_a_thread_blocked_in_recv() -> None:
    rproc, ops = make(recovery=False)
    with rproc.acquire():
        ep = rproc.link.open_channel(SERVICE, timeout=TIMEOUT)
        blocked = Outcome(lambda: ep.recv(timeout=30.0))
        ops.report(CrashReason.FATAL_ERROR, "boom")
        assert blocked.join(TIMEOUT)
        error = blocked.error
        assert isinstance(error, LinkDown) and "fatal error: boom" in str(error)


def test_recovery_disabled_stays_crashed_until_recover() -> None:
    rproc, ops = make(recovery=False)
    events = Events(rproc, TIMEOUT)
    rproc.boot()
    try:
        link = rproc.link
        ops.report()
        assert rproc.wait_for_state(RprocState.CRASHED, TIMEOUT)
        assert events.wait("crash")
        with pytest.raises(LinkDown):
            link.poll()
        with pytest.raises(RprocBusy) as busy:
            rproc.coredump = CoredumpMode.ENABLED
        assert isinstance(busy.value, OSError) and busy.value.errno == errno.EBUSY
        with pytest.raises(RprocBusy):
            rproc.firmware = "other"
        assert not events.wait("recovered", timeout=0.2)
        assert rproc.state is RprocState.CRASHED
        rproc.boot()  # another user of a crashed processor: only counted
        rproc.shutdown()
        rproc.recover()
        assert rproc.state is RprocState.RUNNING and "recovered" in events.kinds()
        echo(rproc)
        rproc.recover()  # running: nothing to do
    finally:
        rproc.shutdown()
    with pytest.raises(InvalidTransition):
        rproc.recover()


def test_crash_then_shutdown_without_recovery() -> None:
    rproc, ops = make(recovery=False)
    rproc.boot()
    rproc.crash()
    assert rproc.wait_for_state(RprocState.CRASHED, TIMEOUT)
    rproc.shutdown()
    assert rproc.state is RprocState.OFFLINE
    assert ops.calls[-2:] == ["stop(crashed=True)", "release_memory"]
    rproc.crash()  # offline: nothing to report
    assert rproc.crash_count == 1


def test_enabled_coredump_is_written_in_the_background(tmp_path: Path) -> None:
    rproc, ops = make(coredump=CoredumpMode.ENABLED, coredump_dir=tmp_path)
    events = Events(rproc, TIMEOUT)
    with rproc.acquire():
        ops.report()
        assert events.wait("coredump") and events.wait("recovered")
    (dump,) = tmp_path.iterdir()
    assert dump.suffix == ".core" and dump == rproc.coredumps[0]


def test_failed_start_leaves_it_offline_with_memory_released() -> None:
    rproc, ops = make()
    ops.fail_start = RuntimeError("no power")
    with pytest.raises(RuntimeError, match="no power"):
        rproc.boot()
    assert rproc.state is RprocState.OFFLINE and rproc.power == 0
    assert ops.calls[-2:] == ["stop(crashed=True)", "release_memory"]
    assert ops.memories[0].pool.closed


def test_bad_table_leaves_it_offline() -> None:
    rproc, ops = make(b"\x02" + bytes(15))
    with pytest.raises(FirmwareError, match="field ver = 2"):
        rproc.boot()
    assert rproc.state is RprocState.OFFLINE and "start" not in ops.calls
    assert ops.memories[0].pool.closed


def test_trace_and_follower() -> None:
    rproc, _ = make()
    follower = rproc.trace_follower()
    assert rproc.trace() == "" and follower.poll() == ""
    with rproc.acquire():
        buf = rproc._resources.traces[0]  # type: ignore[union-attr]
        buf.region.write(buf.offset, b"boot\0")
        assert rproc.trace() == "boot" and follower.poll() == "boot"
        buf.region.write(buf.offset, b"boot ok\n\0")
        assert follower.poll() == " ok\n"
        assert rproc.trace(1) == ""
    assert rproc.trace() == "" and follower.poll() == ""


# -- a real MCU image (built with gcc): segments, loaded table, internal memory ----------------
def test_elf_image_is_loaded_and_gets_the_processed_table(firmware64: Firmware) -> None:
    fw = firmware64
    image = ElfImage.from_path(fw.path)
    ops = FakeOps({"fw.elf": image}, internal=(fw.DATA_DA, fw.CARVEOUT_LEN))
    rproc = RemoteProc(ops, "fw.elf", name="mcu0")
    with rproc.acquire():
        memory = ops.memories[0]
        text = image.image.segments[0]
        assert memory.pool.read(0, text.filesz) == fw.data[text.offset:text.offset + text.filesz]
        table_da = image.loaded_table_da()
        assert table_da is not None
        placed = memory.internal[0].read(table_da - fw.DATA_DA, 16)
        assert placed[:4] == b"\x01\0\0\0"
        loaded = ResourceTable.parse(memory.internal[0].read(
            table_da - fw.DATA_DA, len(image.resource_table() or b"")))
        vdev = loaded.entries[2]
        assert [r.notifyid for r in vdev.vrings] == [0, 1]  # type: ignore[union-attr]
        assert all(r.da != ANY for r in vdev.vrings)  # type: ignore[union-attr]
        memory.internal[0].write(fw.TRACE_DA - fw.DATA_DA, b"mcu says hi\0")
        assert rproc.trace() == "mcu says hi"
        echo(rproc)


def _moved_text_segment(fw: Firmware, paddr: int) -> bytes:
    """The ELF64 image with its first PT_LOAD's p_paddr changed."""
    data = bytearray(fw.data)
    phoff = int.from_bytes(data[32:40], "little")
    phentsize = int.from_bytes(data[54:56], "little")
    for i in range(int.from_bytes(data[56:58], "little")):
        at = phoff + i * phentsize
        if int.from_bytes(data[at:at + 4], "little") == 1:  # PT_LOAD
            data[at + 24:at + 32] = paddr.to_bytes(8, "little")
            return bytes(data)
    raise AssertionError("no PT_LOAD")


def test_elf_segment_outside_carveouts_is_refused(firmware64: Firmware) -> None:
    fw = firmware64
    image = ElfImage(FirmwareImage.from_bytes(_moved_text_segment(fw, 0x3000_0000)), "moved")
    ops = FakeOps({"fw.elf": image}, internal=(fw.DATA_DA, fw.CARVEOUT_LEN))
    rproc = RemoteProc(ops, "fw.elf", name="mcu0")
    with pytest.raises(FirmwareError, match="p_paddr = 0x30000000 .* not inside any carveout"):
        rproc.boot()
    assert rproc.state is RprocState.OFFLINE and "start" not in ops.calls
    assert ops.memories[0].pool.closed and ops.memories[0].internal[0].closed
