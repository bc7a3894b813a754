"""The test firmware: a tiny freestanding C program and the linker script that places it.

The script puts the code at a physical address different from its virtual one (AT()),
and the data, the resource table and the bss in a second segment. :func:`build_firmware`
compiles it with gcc as ELF64 or, with ``-m32``, as ELF32.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

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


def build_firmware(directory: Path, elfclass: int) -> Firmware:
    """Compile the firmware; skips (ELF32 without multilib) or raises if gcc fails."""
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
