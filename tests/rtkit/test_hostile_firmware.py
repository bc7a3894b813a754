"""Hostile RTKit firmware in a real co-processor process: the host refuses it or counts
what it does, stops it cleanly, and recovers when it breaks the mailbox."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
from common_kit import Events, wait_for
from rtkit_kit import GENEROUS_ACK_TIMEOUT

from amplink.platforms.rtkit import RtkitRemoteProc
from amplink.remoteproc.core import RestartPolicy
from amplink.remoteproc.states import RprocState
from amplink.rtkit.errors import RtkitProtocolError, RtkitTimeout

FIRMWARE = Path(__file__).resolve().parent / "firmware"


@pytest.fixture
def make(tmp_path):
    made: list[RtkitRemoteProc] = []

    def make(name: str, **kwargs) -> RtkitRemoteProc:
        kwargs.setdefault("ack_timeout", GENEROUS_ACK_TIMEOUT)
        rproc = RtkitRemoteProc(str(FIRMWARE / name), name=f"hostile{len(made)}",
                                coredump_dir=tmp_path, restart=RestartPolicy(delay=0.0),
                                **kwargs)
        made.append(rproc)
        return rproc

    before = len(os.listdir("/proc/self/fd"))
    yield make
    for rproc in made:
        while rproc.power:
            rproc.shutdown()
        assert rproc.process is None
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_version_the_host_does_not_speak_fails_the_boot(make):
    rproc = make("bad_version.py")
    start = time.monotonic()
    with pytest.raises(RtkitProtocolError) as info:
        rproc.boot()
    assert info.value.errno == errno.EINVAL and "too new" in str(info.value)
    assert rproc.state is RprocState.OFFLINE and time.monotonic() - start < 10


def test_a_coprocessor_that_never_says_hello_times_out(make):
    rproc = make("silent.py", ack_timeout=0.3)
    with pytest.raises(RtkitTimeout) as info:
        rproc.boot()
    assert info.value.errno == errno.ETIME
    assert rproc.state is RprocState.OFFLINE and rproc.process is None


def test_a_flood_and_stray_accesses_are_counted(make):
    rproc = make("flood.py")
    with rproc.acquire():
        ep = rproc.open_endpoint(0x20)
        ep.send(1)
        assert ep.recv(timeout=10) == 4  # every probe faulted in the firmware
        stats = rproc.rtkit_statistics()
        assert stats is not None
        assert wait_for(lambda: rproc.rtkit_statistics().drops.get(
            "UNDISCOVERED_ENDPOINT") == 2000, 5)
        assert stats.iommu_faults == 4 and rproc.iommu.statistics().faults == 4
        assert rproc.state is RprocState.RUNNING and rproc.ping() < 10


def test_a_broken_mailbox_is_a_crash_and_is_recovered(make):
    rproc = make("breaks_mailbox.py")
    events = Events(rproc)
    with rproc.acquire():
        rproc.open_endpoint(0x20).send(1)
        assert events.wait("recovered")
        assert "broke the mailbox" in events.of("crash")[0].detail
        assert rproc.ping() < 10  # a new run, a new mailbox
