"""Simulated firmware that attacks the host through its lifeline or its table reader.

The host must stay responsive: a flooded lifeline neither hangs shutdown nor recovery
nor hides a missed watchdog, and a firmware that writes without end while the host
reads its RESOURCE_TABLE is cut off at the table size limit.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from common_kit import Events, Outcome
from sim_kit import process_gone

from amplink import FirmwareError, FirmwareStartError, LinkConfig, SimRemoteProc
from amplink.platforms import sim_abi as L
from amplink.platforms.sim.images import MAX_TABLE_SIZE, PythonImage
from amplink.platforms.sim.process import LifelineParser
from amplink.remoteproc.api import CrashReason

pytestmark = pytest.mark.timeout(60)

#: how long the host may take to get rid of a hostile firmware
QUICK = 5.0

_FLOOD = """
import os

def main(link):
    fd = int(os.environ["AMPLINK_LIFELINE_FD"])
    os.set_blocking(fd, True)  # write as fast as the host reads, without end
    chunk = {byte!r} * 65536
    while True:
        os.write(fd, chunk)
"""


def _firmware(tmp_path: Path, name: str, source: str) -> str:
    path = tmp_path / name
    path.write_text(source)
    return str(path)


def _flooder(tmp_path: Path, byte: bytes = b"H") -> str:
    return _firmware(tmp_path, f"flood_{byte[0]:02x}.py", _FLOOD.format(byte=byte))


def _rproc(firmware: str, **options) -> SimRemoteProc:
    options.setdefault("boot_timeout", 10.0)
    options.setdefault("stop_timeout", 2.0)
    return SimRemoteProc(firmware, name="flood", stderr=subprocess.DEVNULL, **options)


def _timed(fn, timeout: float = 15.0) -> float:
    """Run ``fn`` in a thread; fail if it does not end within ``timeout`` s; its duration."""
    start = time.monotonic()
    outcome = Outcome(fn)
    assert outcome.join(timeout), f"{fn} hung for {timeout} s"
    if outcome.error is not None:
        raise outcome.error
    assert outcome.ended is not None
    return outcome.ended - start


def _flooding(rproc: SimRemoteProc) -> None:
    """Let the flood run long enough to fill the lifeline."""
    time.sleep(0.3)
    assert rproc.process is not None and rproc.process.poll() is None


# -- the lifeline ---------------------------------------------------------------------------
def test_lifeline_parser_handles_a_flood_in_bulk() -> None:
    parser = LifelineParser()
    start = time.monotonic()
    for _ in range(64):  # 4 MiB
        assert parser.feed(b"H" * 65536) == [("heartbeat", "")]
    assert parser.feed(b"x" * 65536) == []
    assert time.monotonic() - start < 1.0
    assert parser.ignored == 65536


def test_lifeline_parser_keeps_the_protocol() -> None:
    parser = LifelineParser()
    assert parser.feed(b"R") == [("ready", "")]
    assert parser.feed(b"zHH") == [("heartbeat", "")]
    assert parser.ignored == 1
    # a fatal message split over feeds, with heartbeats and garbage around it
    assert parser.feed(b"H" + L.LIFELINE_FATAL + b"out of") == [("heartbeat", "")]
    assert parser.feed(b" memory") == []
    assert parser.feed(b"\nHq") == [("fatal", "out of memory"), ("heartbeat", "")]
    assert parser.ignored == 2
    # an overlong reason is cut at FATAL_REASON_MAX, however many feeds it takes
    assert parser.feed(b"F" + b"a" * 100_000) == []
    assert parser.feed(b"b" * 100_000 + b"\nF\x00\n") == [
        ("fatal", "a" * L.FATAL_REASON_MAX), ("fatal", "?")]


def test_lifeline_flood_does_not_hang_shutdown(tmp_path: Path) -> None:
    rproc = _rproc(_flooder(tmp_path))
    rproc.boot()
    try:
        _flooding(rproc)
        pid = rproc.pid
        assert _timed(rproc.shutdown) < QUICK
        assert pid is not None and process_gone(pid)
    finally:
        if rproc.process is not None:
            rproc.process.kill()


def test_lifeline_flood_does_not_hang_recovery(tmp_path: Path) -> None:
    rproc = _rproc(_flooder(tmp_path))
    events = Events(rproc)
    rproc.boot()
    try:
        _flooding(rproc)
        old_pid = rproc.pid
        rproc.crash()
        assert events.wait("recovered", timeout=QUICK), events.items
        assert rproc.pid not in (None, old_pid)
        _flooding(rproc)
        assert _timed(rproc.shutdown) < QUICK
    finally:
        if rproc.process is not None:
            rproc.process.kill()


def test_garbage_flood_does_not_hide_a_missed_watchdog(tmp_path: Path) -> None:
    rproc = _rproc(_flooder(tmp_path, b"x"), watchdog=0.3, recovery=False)
    events = Events(rproc)
    rproc.boot()
    try:
        assert events.wait("crash", timeout=QUICK), events.items
        assert events.of("crash")[0].detail.startswith(CrashReason.WATCHDOG)
        assert _timed(rproc.shutdown) < QUICK
    finally:
        if rproc.process is not None:
            rproc.process.kill()


# -- the table reader -----------------------------------------------------------------------
def test_firmware_flooding_the_table_reader_is_cut_off(tmp_path: Path) -> None:
    spec = _firmware(tmp_path, "loud.py",
                     "import os\n"
                     "chunk = b'T' * (1 << 20)\n"
                     "for _ in range(50):\n"
                     "    os.write(1, chunk)\n"
                     "import time\n"
                     "time.sleep(60)\n")  # and keep the pipe open
    start = time.monotonic()
    with pytest.raises(FirmwareError, match=f"more than {MAX_TABLE_SIZE}"):
        PythonImage.from_spec(spec, LinkConfig(), timeout=30.0)
    assert time.monotonic() - start < QUICK


def test_table_reader_keeps_only_the_end_of_a_huge_stderr(tmp_path: Path) -> None:
    # print() at import goes to stderr: the table reader keeps stdout for the table.
    spec = _firmware(tmp_path, "chatty.py",
                     "import sys\n"
                     "line = 'x' * 1023\n"
                     "for _ in range(50 * 1024):\n"
                     "    print(line)\n"
                     "raise RuntimeError('the last words')\n")
    start = time.monotonic()
    with pytest.raises(FirmwareStartError, match="failed to load .*: RuntimeError: the last words"):
        PythonImage.from_spec(spec, LinkConfig(), timeout=30.0)
    assert time.monotonic() - start < 15.0


def test_table_reader_timeout_kills_the_reader(tmp_path: Path) -> None:
    spec = _firmware(tmp_path, "slow.py", "import time\ntime.sleep(60)\n")
    start = time.monotonic()
    with pytest.raises(FirmwareStartError, match="did not load within 0.5 s"):
        PythonImage.from_spec(spec, LinkConfig(), timeout=0.5)
    assert time.monotonic() - start < QUICK
