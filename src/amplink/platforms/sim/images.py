"""Firmware images of simulated processors: Python modules and native executables.

**Python firmware** is a module name or ``.py`` path (optionally ``:function``). Its
resource table is the module attribute ``RESOURCE_TABLE`` (a :class:`ResourceTable`
built with the classes of :mod:`amplink.remoteproc.rsc_table`, or its bytes); without
one it gets :func:`.layout.default_resource_table`. The host never imports firmware
code: a helper child (``python -m amplink.firmware --resource-table SPEC``) prints the
table, once per firmware file version. "Loading" a Python image is the child importing
its module; nothing is copied into device memory.

**Native firmware** is a Linux executable (ELF) that follows the fd convention. It may
carry a ``.resource_table`` section (else it gets the default table too). It is *not*
loaded the way an MCU image is: the kernel's ``exec`` maps the program into the child's
own address space, and its section addresses are host virtual addresses that mean
nothing in device memory. So amplink copies only the PT_LOAD segments whose p_paddr
range lies entirely inside a carveout of the processed table (a program may, for
instance, pre-fill a fixed-address carveout that way), skips every other segment, and
refuses a segment that straddles a carveout's edge. The processed table is written
into memory the host allocates, not over the executable's section.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import subprocess
import sys
import threading
import time
from abc import abstractmethod
from collections.abc import Sequence

from ...errors import FirmwareError
from ...remoteproc.addrmap import DeviceAddressMap
from ...remoteproc.elf_loader import ELFMAG, FirmwareImage
from ...remoteproc.image import LoadableImage
from ..sim_abi import TABLE_READER_BAD_TABLE, TABLE_READER_NO_MODULE
from .layout import LinkConfig, default_resource_table
from .process import FirmwareStartError

log = logging.getLogger(__name__)

#: the largest table a Python firmware may declare
MAX_TABLE_SIZE = 1 << 20
#: how much of the end of the table reader's stderr is kept (for the error message)
STDERR_TAIL = 4096
_READ_SIZE = 64 << 10

_cache_lock = threading.Lock()
_table_cache: dict[tuple[object, ...], bytes] = {}


class SimImage(LoadableImage):
    """An image the simulator runs as a child process."""

    @abstractmethod
    def argv(self, args: Sequence[str]) -> list[str]:
        """The command line of the firmware process."""


def is_native(firmware: str) -> bool:
    """Whether ``firmware`` names an ELF file (a native executable) rather than Python."""
    try:
        with open(firmware, "rb") as f:
            return f.read(len(ELFMAG)) == ELFMAG
    except OSError:
        return False


def _cache_key(spec: str) -> tuple[object, ...]:
    target = spec.partition(":")[0]
    if target.endswith(".py") or os.sep in target:
        st = os.stat(target)  # FileNotFoundError, as the kernel's request_firmware
        return ("file", os.path.realpath(target), st.st_mtime_ns, st.st_size)
    return ("module", target)  # installed code: read once per host process


def _declared_table(spec: str, timeout: float) -> bytes:
    """The bytes of the module's RESOURCE_TABLE (b"" if it declares none), from a helper.

    The helper runs firmware code: its output is read as it comes, the helper is killed
    as soon as its stdout exceeds MAX_TABLE_SIZE or the time is up, and only the last
    STDERR_TAIL bytes of its stderr are kept.
    """
    cmd = [sys.executable, "-m", "amplink.firmware", "--resource-table", spec]
    deadline = time.monotonic() + timeout
    out, err = bytearray(), bytearray()
    # its own process group: the terminal's Ctrl-C is the host's to handle
    with subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, process_group=0) as proc:
        try:
            if not _collect(proc, out, err, deadline, spec):
                raise _too_slow(spec, timeout)
            try:
                status = proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise _too_slow(spec, timeout) from None
        except BaseException:
            proc.kill()  # Popen's exit then reaps it
            raise
    if status == TABLE_READER_NO_MODULE:
        raise FileNotFoundError(errno.ENOENT, f"Python firmware {spec!r}: no such module")
    if status != 0:
        text = err.decode("utf-8", errors="replace").strip()
        log.info("firmware %r failed to load; its output:\n%s", spec, text)
        cause = text.splitlines()[-1] if text else "no message"
        if status == TABLE_READER_BAD_TABLE:
            raise FirmwareError(f"Python firmware {spec!r}: {cause}")
        raise FirmwareStartError(f"firmware {spec!r} failed to load (exit status {status}): "
                                 f"{cause}")
    return bytes(out)


def _collect(proc: subprocess.Popen[bytes], out: bytearray, err: bytearray,
             deadline: float, spec: str) -> bool:
    """Read the helper's stdout into ``out`` and the tail of its stderr into ``err``.

    True once both end; False if the deadline passed first.
    """
    assert proc.stdout is not None and proc.stderr is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ, out)
        selector.register(proc.stderr, selectors.EVENT_READ, err)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, _READ_SIZE)
                if not chunk:
                    selector.unregister(key.fileobj)
                elif key.data is out:
                    out += chunk
                    if len(out) > MAX_TABLE_SIZE:
                        raise FirmwareError(f"Python firmware {spec!r}: RESOURCE_TABLE is "
                                            f"more than {MAX_TABLE_SIZE} bytes")
                else:
                    err += chunk
                    del err[:-STDERR_TAIL]
    return True


def _too_slow(spec: str, timeout: float) -> FirmwareStartError:
    return FirmwareStartError(f"firmware {spec!r} did not load within {timeout} s (reading "
                              "its RESOURCE_TABLE)")


class PythonImage(SimImage):
    """Python firmware run by ``python -m amplink.firmware``."""

    def __init__(self, spec: str, table: bytes) -> None:
        self.name = spec
        self.spec = spec
        self._table = table

    @classmethod
    def from_spec(cls, spec: str, config: LinkConfig, *, timeout: float = 20.0) -> PythonImage:
        """Read the firmware's table (cached per file version)."""
        key = _cache_key(spec)
        with _cache_lock:
            table = _table_cache.get(key)
        if table is None:
            table = _declared_table(spec, timeout)
            with _cache_lock:
                _table_cache[key] = table
        return cls(spec, table or default_resource_table(config).build())

    def resource_table(self) -> bytes:
        return self._table

    def load(self, addr_map: DeviceAddressMap) -> None:
        """Nothing to copy: the child imports the module."""

    def argv(self, args: Sequence[str]) -> list[str]:
        return [sys.executable, "-m", "amplink.firmware", self.spec, *args]


class NativeImage(SimImage):
    """A native executable; see the module docstring for what loading means here."""

    def __init__(self, path: str, image: FirmwareImage, table: bytes) -> None:
        self.name = path
        self.path = path
        self.image = image
        self.machine = image.machine
        self.elfclass = image.elfclass
        self.boot_addr = image.entry
        self._table = table

    @classmethod
    def from_path(cls, path: str, config: LinkConfig) -> NativeImage:
        """Validate the executable and read its table (FirmwareError, OSError)."""
        image = FirmwareImage.from_path(path)
        if not os.access(path, os.X_OK):
            raise FirmwareError(f"native firmware {path!r} is not executable")
        table = image.resource_table_bytes()
        return cls(path, image, table if table is not None
                   else default_resource_table(config).build())

    def resource_table(self) -> bytes:
        return self._table

    def load(self, addr_map: DeviceAddressMap) -> None:
        data = memoryview(self.image.data)
        headers = self.image.segment_headers
        for seg, (index, header_at) in zip(self.image.segments, headers, strict=True):
            end = seg.paddr + seg.memsz
            for window in addr_map:
                if window.da <= seg.paddr and end <= window.end:
                    offset = window.offset + (seg.paddr - window.da)
                    window.region.write(offset, data[seg.offset:seg.offset + seg.filesz])
                    window.region.fill(offset + seg.filesz, seg.memsz - seg.filesz)
                    break
                if seg.paddr < window.end and window.da < end:
                    raise FirmwareError(
                        f"ELF image: segment {index} (PT_LOAD): p_paddr 0x{seg.paddr:x} + "
                        f"p_memsz 0x{seg.memsz:x} straddles the edge of carveout "
                        f"{window.name!r} at 0x{window.da:x}+0x{window.length:x} "
                        f"(program header at byte 0x{header_at:x})"
                    )

    def argv(self, args: Sequence[str]) -> list[str]:
        return [self.path, *args]
