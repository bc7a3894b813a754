"""Coredumps: ELF ET_CORE files that pyelftools and readelf read back."""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from rproc_firmware import Firmware

from amplink.memory.region import SharedRegion
from amplink.paths import ENV_RUNTIME_DIR, PrivateDirError, coredump_dir
from amplink.remoteproc.addrmap import DeviceAddressMap
from amplink.remoteproc.coredump import EM_NONE, CoredumpMode, write_coredump
from amplink.remoteproc.devmem import Allocation
from amplink.remoteproc.dumps import coredump_path, prune_coredumps, take_coredump
from amplink.remoteproc.elf_loader import FirmwareImage

SEGMENTS = [
    (0x1000_0000, b"text" * 64),
    (0x2000_0000, bytes(range(256)) * 3),
    (0x3000_0000, b""),
    (0xFFFF_F000, b"\xde\xad\xbe\xef"),
]


@pytest.mark.parametrize("elfclass", [32, 64])
def test_pyelftools_reads_it_back(tmp_path: Path, elfclass: int) -> None:
    path = tmp_path / "core"
    size = write_coredump(path, iter(SEGMENTS), machine=40, elfclass=elfclass)
    data = path.read_bytes()
    assert len(data) == size
    elf = ELFFile(io.BytesIO(data))
    assert elf.elfclass == elfclass and elf.little_endian
    assert elf.header["e_type"] == "ET_CORE" and elf.header["e_machine"] == "EM_ARM"
    assert elf.num_sections() == 0
    loads = list(elf.iter_segments("PT_LOAD"))
    assert len(loads) == len(SEGMENTS) == elf.num_segments()
    for seg, (da, payload) in zip(loads, SEGMENTS, strict=True):
        assert seg["p_vaddr"] == seg["p_paddr"] == da
        assert seg["p_filesz"] == seg["p_memsz"] == len(payload)
        assert seg.data() == payload


@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf (binutils) is not installed")
@pytest.mark.parametrize("elfclass", [32, 64])
def test_readelf_reads_it_back(tmp_path: Path, elfclass: int) -> None:
    path = tmp_path / "core"
    write_coredump(path, SEGMENTS, elfclass=elfclass)
    out = subprocess.run(
        ["readelf", "-lhW", str(path)], check=True, capture_output=True, text=True, timeout=30
    )
    assert "CORE (Core file)" in out.stdout
    rows = re.findall(
        r"^\s*LOAD\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)",
        out.stdout, re.MULTILINE,
    )
    assert len(rows) == len(SEGMENTS)
    data = path.read_bytes()
    for (offset, vaddr, paddr, filesz, memsz), (da, payload) in zip(rows, SEGMENTS, strict=True):
        assert int(vaddr, 16) == int(paddr, 16) == da
        assert int(filesz, 16) == int(memsz, 16) == len(payload)
        assert data[int(offset, 16):int(offset, 16) + len(payload)] == payload
    assert "Warning" not in out.stderr and "Error" not in out.stderr


def test_writes_to_a_file_object() -> None:
    buf = io.BytesIO()
    n = write_coredump(buf, [(0x100, bytearray(b"abc")), (0x200, memoryview(b"de"))])
    assert n == len(buf.getvalue()) == 52 + 2 * 32 + 5
    elf = ELFFile(io.BytesIO(buf.getvalue()))
    assert elf.header["e_machine"] == "EM_NONE" and EM_NONE == 0
    assert [s.data() for s in elf.iter_segments()] == [b"abc", b"de"]


def test_no_segments() -> None:
    buf = io.BytesIO()
    write_coredump(buf, [])
    elf = ELFFile(io.BytesIO(buf.getvalue()))
    assert elf.header["e_type"] == "ET_CORE" and elf.num_segments() == 0


def test_refusals() -> None:
    with pytest.raises(ValueError, match="elfclass"):
        write_coredump(io.BytesIO(), [], elfclass=16)
    with pytest.raises(ValueError, match="elfclass=64"):
        write_coredump(io.BytesIO(), [(0xFFFF_FFFF, b"ab")])
    with pytest.raises(ValueError):
        write_coredump(io.BytesIO(), [(-1, b"a")], elfclass=64)


def test_dump_of_a_loaded_firmware(
    firmware: Firmware, addr_map: DeviceAddressMap, region: SharedRegion, tmp_path: Path
) -> None:
    img = FirmwareImage.from_bytes(firmware.data)
    img.load(addr_map)
    path = tmp_path / "rproc.core"
    write_coredump(
        path, ((w.da, w.read()) for w in addr_map.windows),
        machine=img.machine, elfclass=img.elfclass,
    )
    elf = ELFFile(io.BytesIO(path.read_bytes()))
    dumped = {s["p_paddr"]: s.data() for s in elf.iter_segments("PT_LOAD")}
    assert set(dumped) == {Firmware.TEXT_PA, Firmware.DATA_DA}
    text = img.segments[0]
    assert dumped[Firmware.TEXT_PA][:text.filesz] == firmware.data[
        text.offset:text.offset + text.filesz
    ]
    assert len(dumped[Firmware.DATA_DA]) == Firmware.CARVEOUT_LEN


def test_mode_strings() -> None:
    assert [m.value for m in CoredumpMode] == ["disabled", "enabled", "inline"]
    assert CoredumpMode.from_sysfs("inline\n") is CoredumpMode.INLINE
    assert CoredumpMode.from_sysfs("enabled") is CoredumpMode.ENABLED
    with pytest.raises(ValueError):
        CoredumpMode.from_sysfs("Enabled")


# -- where dumps go: per user, never overwritten, only the newest kept ---------------------
def _dump(directory: Path, name: str = "p0", crash: int = 1) -> Path:
    region = SharedRegion.memfd(4096, "dump-test")
    done: list[tuple[Path | None, Exception | None]] = []
    try:
        seg = Allocation("mem", 0x1000, region, 0, 4096)
        take_coredump(CoredumpMode.INLINE, [seg], coredump_path(directory, name, crash),
                      lambda p, e: done.append((p, e)), machine=EM_NONE)
    finally:
        region.close()
    ((path, error),) = done
    assert error is None and path is not None
    return path


def test_dumps_with_the_same_name_never_overwrite_each_other(tmp_path: Path) -> None:
    wanted = coredump_path(tmp_path, "p0", 1)
    (tmp_path / wanted.name).write_bytes(b"an earlier dump")
    first = _write_as(wanted, tmp_path)
    second = _write_as(wanted, tmp_path)
    assert (tmp_path / wanted.name).read_bytes() == b"an earlier dump"
    assert len({wanted, first, second}) == 3
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*"))


def _write_as(path: Path, directory: Path) -> Path:
    done: list[Path | None] = []
    take_coredump(CoredumpMode.INLINE, [], path, lambda p, e: done.append(p), machine=EM_NONE)
    assert done[0] is not None and done[0].parent == directory
    return done[0]


def test_names_taken_within_one_second_differ(tmp_path: Path) -> None:
    assert coredump_path(tmp_path, "p0", 1) != coredump_path(tmp_path, "p0", 1)


def test_only_the_newest_dumps_of_a_processor_are_kept(tmp_path: Path) -> None:
    paths = [_dump(tmp_path, "p0", n) for n in range(1, 6)]
    other = _dump(tmp_path, "p1", 1)
    for i, path in enumerate(paths):
        os.utime(path, ns=(i * 10**9, i * 10**9))
    assert prune_coredumps(tmp_path, "p0", 2) == paths[:3]
    assert sorted(tmp_path.iterdir()) == sorted([*paths[3:], other])


def test_the_default_directory_is_private_to_the_user(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_RUNTIME_DIR, str(tmp_path / "run"))
    directory = coredump_dir()
    assert directory == tmp_path / "run" / "coredumps"
    for d in (directory, directory.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700 and d.stat().st_uid == os.getuid()
    directory.chmod(0o777)
    with pytest.raises(PrivateDirError, match="others can write"):
        coredump_dir()
