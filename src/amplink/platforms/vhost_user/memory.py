"""The guest's memory as the front end's SET_MEM_TABLE describes it: mapped, translated.

Each region of the table comes with an fd; it is mapped from ``mmap_offset`` for
``memory_size`` bytes as a :class:`SharedRegion` whose device addresses are the guest's
physical addresses. Vring addresses arrive as front-end *user* addresses and descriptor
addresses as guest-physical ones; both are translated through the table, never assumed
equal. Every field is untrusted: overlapping, empty or unaligned regions and regions
past the end of their file are refused (mapping past the end would turn an access into
SIGBUS).
"""

from __future__ import annotations

import mmap
import os
import stat
from dataclasses import dataclass

from ...errors import AddressError
from ...memory.region import SharedRegion
from .protocol import MemRegion, VhostUserError

_ADDR_LIMIT = 1 << 64


@dataclass(frozen=True, slots=True)
class GuestRegion:
    """One mapped region of the table."""

    table: MemRegion
    region: SharedRegion  # device addresses = guest-physical addresses

    def holds_user(self, uaddr: int, length: int) -> bool:
        start = self.table.userspace_addr
        return start <= uaddr and uaddr + length <= start + self.table.memory_size


def _check_table(regions: list[MemRegion]) -> None:
    for i, r in enumerate(regions):
        what = f"SET_MEM_TABLE region {i}"
        if r.memory_size == 0:
            raise VhostUserError(f"{what}: size 0")
        if r.mmap_offset % mmap.ALLOCATIONGRANULARITY:
            raise VhostUserError(f"{what}: mmap_offset 0x{r.mmap_offset:x} is not a multiple "
                                 f"of the page size")
        for name, start in (("guest_phys_addr", r.guest_phys_addr),
                            ("userspace_addr", r.userspace_addr),
                            ("mmap_offset", r.mmap_offset)):
            if start + r.memory_size > _ADDR_LIMIT:
                raise VhostUserError(f"{what}: {name} 0x{start:x} + size 0x{r.memory_size:x} "
                                     "exceeds 64 bits")
    # Overlaps would make a translation ambiguous.
    for key in ("guest_phys_addr", "userspace_addr"):
        spans = sorted((getattr(r, key), r.memory_size) for r in regions)
        for (a, size), (b, _) in zip(spans, spans[1:], strict=False):
            if a + size > b:
                raise VhostUserError(f"SET_MEM_TABLE: regions overlap in {key} at 0x{b:x}")


def _check_fd(fd: int, r: MemRegion, index: int) -> None:
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise VhostUserError(f"SET_MEM_TABLE region {index}: fd: {exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise VhostUserError(f"SET_MEM_TABLE region {index}: the fd is not a memory file")
    if r.mmap_offset + r.memory_size > st.st_size:
        raise VhostUserError(
            f"SET_MEM_TABLE region {index}: 0x{r.mmap_offset:x}+0x{r.memory_size:x} lies past "
            f"the end of its file (0x{st.st_size:x} bytes)")


class GuestMemory:
    """The mapped regions of one SET_MEM_TABLE; takes ownership of the fds."""

    def __init__(self, table: list[MemRegion], fds: list[int]) -> None:
        """Map every region. On failure every fd (and every mapping made) is closed."""
        self.regions: list[GuestRegion] = []
        try:
            if len(fds) != len(table):
                raise VhostUserError(f"SET_MEM_TABLE: {len(table)} regions, {len(fds)} fds")
            _check_table(table)
            for i, (r, fd) in enumerate(zip(table, fds, strict=True)):
                _check_fd(fd, r, i)
            while fds:
                r = table[len(self.regions)]
                fd = fds[0]
                try:
                    region = SharedRegion(fd, r.memory_size, kind="vhost-user",
                                          da_base=r.guest_phys_addr, map_offset=r.mmap_offset)
                except (OSError, ValueError, OverflowError) as exc:
                    raise VhostUserError(f"SET_MEM_TABLE region {len(self.regions)}: "
                                         f"cannot map it: {exc}") from None
                fds.pop(0)  # owned by the region from here on
                self.regions.append(GuestRegion(r, region))
        except BaseException:
            for fd in fds:
                os.close(fd)
            fds.clear()
            self.close()
            raise

    def user_to_guest(self, uaddr: int, length: int, what: str) -> tuple[GuestRegion, int]:
        """The region holding front-end user range ``[uaddr, uaddr + length)`` and the
        guest-physical address of ``uaddr``."""
        for g in self.regions:
            if g.holds_user(uaddr, length):
                return g, uaddr - g.table.userspace_addr + g.table.guest_phys_addr
        raise VhostUserError(f"{what}: user address 0x{uaddr:x}+0x{length:x} is outside the "
                             "memory table")

    def guest_to_region(self, gpa: int, length: int) -> tuple[GuestRegion, int]:
        """The region holding guest-physical range ``[gpa, gpa + length)`` and the offset."""
        for g in self.regions:
            try:
                return g, g.region.da_to_offset(gpa, length)
            except AddressError:
                continue
        raise AddressError(f"guest address 0x{gpa:x}+0x{length:x} is outside the memory table")

    @property
    def mapped_bytes(self) -> int:
        return sum(g.table.memory_size for g in self.regions)

    def close(self) -> None:
        """Unmap every region and close its fd."""
        regions, self.regions = self.regions, []
        for g in regions:
            g.region.close()
