"""Shared fixtures: real ELF firmware built with gcc, shared memory and carveout maps.

The firmware is a tiny freestanding C program linked with a script that places its code
at a physical address different from its virtual one (AT()), and its data, resource
table and bss in a second segment. It is built once per session, as ELF64 and, with
``-m32``, as ELF32.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from amplink.memory.region import SharedRegion
from amplink.remoteproc.addrmap import DeviceAddressMap

GCC = shutil.which("gcc")

TEXT_VA = 0x0800_0000  # e_entry and the text segment's p_vaddr
TEXT_PA = 0x1000_0000  # its p_paddr: where the loader must put it
DATA_DA = 0x2000_0000  # data, resource table and bss (VMA = LMA)
CARVEOUT_LEN = 0x1_0000
TRACE_DA = 0x2000_4000
TRACE_LEN = 0x400

FIRMWARE_C = r"""
#include <stddef.h>
#include <stdint.h>

#define NUM_VRINGS 2

struct rsc_carveout { uint32_t type, da, pa, len, flags, reserved; char name[32]; };
struct rsc_trace { uint32_t type, da, len, reserved; char name[32]; };
struct rsc_vring { uint32_t da, align, num, notifyid, pa; };
struct rsc_vdev {
    uint32_t type, id, notifyid, dfeatures, gfeatures, config_len;
    uint8_t status, num_of_vrings, reserved[2];
    struct rsc_vring vring[NUM_VRINGS];
};
struct table {
    uint32_t ver, num, reserved[2];
    uint32_t offset[3];
    struct rsc_carveout text;
    struct rsc_trace trace;
    struct rsc_vdev vdev;
} __attribute__((packed));

__attribute__((section(".resource_table"), used))
struct table resource_table = {
    1, 3, {0, 0},
    {offsetof(struct table, text), offsetof(struct table, trace), offsetof(struct table, vdev)},
    {0, 0x10000000, 0x10000000, 0x10000, 0, 0, "text"},
    {2, 0x20004000, 0x400, 0, "trace"},
    {3, 7, 0, 1, 0, 0, 0, NUM_VRINGS, {0, 0},
     {{0xFFFFFFFF, 16, 256, 0xFFFFFFFF, 0}, {0xFFFFFFFF, 16, 256, 0xFFFFFFFF, 0}}},
};

volatile uint32_t counter = 0x12345678;
uint32_t zeroed[64];

void _start(void)
{
    for (;;) {
        zeroed[counter & 63]++;
        counter++;
    }
}
"""

LINKER_SCRIPT = """
ENTRY(_start)
PHDRS
{
    text PT_LOAD;
    data PT_LOAD;
}
SECTIONS
{
    .text 0x08000000 : AT(0x10000000) { *(.text*) *(.rodata*) } :text
    .data 0x20000000 : AT(0x20000000) { *(.data*) } :data
    .resource_table : { KEEP(*(.resource_table)) } :data
    .bss : { *(.bss*) *(COMMON) } :data
    /DISCARD/ : { *(.note*) *(.eh_frame*) *(.comment) *(.got*) }
}
"""

CFLAGS = [
    "-O1", "-ffreestanding", "-fno-pic", "-no-pie", "-fno-asynchronous-unwind-tables",
    "-fno-stack-protector", "-nostdlib", "-static", "-Wl,--build-id=none",
]


@dataclass(frozen=True)
class Firmware:
    """A built firmware file, with the addresses its sources chose."""

    elfclass: int
    path: Path
    data: bytes

    TEXT_VA: ClassVar[int] = TEXT_VA
    TEXT_PA: ClassVar[int] = TEXT_PA
    DATA_DA: ClassVar[int] = DATA_DA
    CARVEOUT_LEN: ClassVar[int] = CARVEOUT_LEN
    TRACE_DA: ClassVar[int] = TRACE_DA
    TRACE_LEN: ClassVar[int] = TRACE_LEN


def _build(directory: Path, elfclass: int) -> Firmware:
    src = directory / "fw.c"
    script = directory / "fw.ld"
    src.write_text(FIRMWARE_C)
    script.write_text(LINKER_SCRIPT)
    out = directory / f"fw{elfclass}.elf"
    cmd = [GCC, f"-m{elfclass}", *CFLAGS, f"-Wl,-T,{script}", "-o", str(out), str(src)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        if elfclass == 32:  # needs gcc's 32-bit multilib, which not every machine has
            pytest.skip(f"gcc -m32 cannot build the test firmware: {proc.stderr.strip()}")
        raise RuntimeError(f"gcc failed to build the test firmware:\n{proc.stderr}")
    return Firmware(elfclass, out, out.read_bytes())


@pytest.fixture(scope="session")
def _firmware_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if GCC is None:
        pytest.skip("gcc is not installed: the real-ELF firmware fixtures need it")
    return tmp_path_factory.mktemp("firmware")


@pytest.fixture(scope="session")
def firmware64(_firmware_dir: Path) -> Firmware:
    """The test firmware as ELF64 (x86-64)."""
    return _build(_firmware_dir, 64)


@pytest.fixture(scope="session")
def firmware32(_firmware_dir: Path) -> Firmware:
    """The test firmware as ELF32 (i386, gcc -m32)."""
    return _build(_firmware_dir, 32)


@pytest.fixture(params=[32, 64], ids=["elf32", "elf64"])
def firmware(request: pytest.FixtureRequest) -> Firmware:
    """The test firmware, once per ELF class."""
    return request.getfixturevalue(f"firmware{request.param}")


@pytest.fixture
def region() -> Iterator[SharedRegion]:
    """Two carveouts' worth of shared memory, filled with 0xAA to expose unwritten bytes."""
    with SharedRegion.memfd(2 * CARVEOUT_LEN, "rproc-test") as r:
        r.fill(0, r.size, 0xAA)
        yield r


@pytest.fixture
def addr_map(region: SharedRegion) -> DeviceAddressMap:
    """The firmware's text carveout at region offset 0 and its data carveout after it."""
    m = DeviceAddressMap()
    m.add(TEXT_PA, CARVEOUT_LEN, region, 0, name="text")
    m.add(DATA_DA, CARVEOUT_LEN, region, CARVEOUT_LEN, name="data")
    return m
