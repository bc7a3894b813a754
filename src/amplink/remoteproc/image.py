"""What the lifecycle engine needs from a firmware image, and the ELF image of an MCU.

Linux's remoteproc asks a firmware format (rproc_fw_ops) for its resource table, where
the loaded copy of that table lives, and to load its segments. :class:`LoadableImage`
is that interface; platforms add their own kinds (the simulator runs Python modules
and native executables, see ``amplink.platforms.sim.images``).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Self

from .addrmap import DeviceAddressMap
from .coredump import EM_NONE
from .elf_loader import FirmwareImage


class LoadableImage(ABC):
    """A firmware image the engine can process and load."""

    #: the name in messages (the firmware file or module)
    name: str = ""
    #: e_machine and ELF class for coredumps (elfclass None: whatever fits the addresses)
    machine: int = EM_NONE
    elfclass: int | None = None
    #: where the processor starts executing
    boot_addr: int = 0

    @abstractmethod
    def resource_table(self) -> bytes | None:
        """The table as the image declares it (untrusted), or None if it has none."""

    @abstractmethod
    def load(self, addr_map: DeviceAddressMap) -> None:
        """Copy the image into device memory (raises :class:`FirmwareError`)."""

    def loaded_table_da(self) -> int | None:
        """The device address of the table inside the loaded image, if there is one.

        None: the image is not loaded into device memory along with its table, so the
        engine places the processed table in memory it allocates.
        """
        return None


class ElfImage(LoadableImage):
    """An ELF image for a real remote processor: every PT_LOAD segment goes to device memory.

    Segments are placed by p_paddr through the carveouts and internal memories; one
    outside all of them is a :class:`FirmwareError`, as in Linux.
    """

    def __init__(self, image: FirmwareImage, name: str = "") -> None:
        self.image = image
        self.name = name or "ELF image"
        self.machine = image.machine
        self.elfclass = image.elfclass
        self.boot_addr = image.entry

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> Self:
        """Read and validate an ELF file."""
        return cls(FirmwareImage.from_path(path), os.fspath(path))

    def resource_table(self) -> bytes | None:
        return self.image.resource_table_bytes()

    def load(self, addr_map: DeviceAddressMap) -> None:
        self.image.load(addr_map)

    def loaded_table_da(self) -> int | None:
        return self.image.find_loaded_rsc_table_da()
