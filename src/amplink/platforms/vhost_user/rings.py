"""Where the guest's two rpmsg vrings lie, from SET_VRING_NUM and SET_VRING_ADDR.

vhost-user gives the descriptor table, avail ring and used ring of a queue as three
separate front-end user addresses. amplink's ring code describes a ring by its start,
size and alignment (:class:`VringLayout`: the standard split layout every Linux guest
allocates, one block with the used ring aligned), so the three addresses are checked to
follow that layout and the alignment is derived from them; any other placement is
refused with a clear error. The device transport works on one mapping, so both rings
(and, at run time, the buffers their descriptors name) must lie in one memory region.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...memory.allocator import align_up
from ...virtio.ring import DESC_SIZE, VRING_MAX_SIZE, vring_size
from ...virtio.vdev import VringEntry
from .memory import GuestMemory, GuestRegion
from .protocol import VhostUserError, VringAddr

#: the largest used-ring alignment accepted (a 64 KiB page)
MAX_ALIGN = 1 << 16


@dataclass(frozen=True, slots=True)
class RingPlacement:
    """Both rings of the device, placed in one region of guest memory."""

    region: GuestRegion
    vrings: tuple[VringEntry, VringEntry]  # da = guest-physical address of the ring


def derive_align(num: int, addr: VringAddr, what: str) -> int:
    """The used-ring alignment under which ``addr`` is the standard layout of ``num`` entries."""
    if addr.avail != addr.desc + DESC_SIZE * num:
        raise VhostUserError(
            f"{what}: avail ring at desc+0x{addr.avail - addr.desc:x}, not right after the "
            f"descriptor table (desc+0x{DESC_SIZE * num:x}): only the standard split layout "
            "is supported")
    gap = addr.used - addr.desc
    head = DESC_SIZE * num + 2 * (3 + num)
    align = 2
    while align <= MAX_ALIGN:
        if align_up(head, align) == gap:
            return align
        align <<= 1
    raise VhostUserError(
        f"{what}: used ring at desc+0x{gap:x}, which no power-of-two alignment up to "
        f"0x{MAX_ALIGN:x} gives after a ring of {num} entries: only the standard split "
        "layout is supported")


def place_rings(memory: GuestMemory, nums: tuple[int, int],
                addrs: tuple[VringAddr, VringAddr]) -> RingPlacement:
    """Check both rings and translate them into one region of ``memory``."""
    region: GuestRegion | None = None
    vrings = []
    for index, (num, addr) in enumerate(zip(nums, addrs, strict=True)):
        what = f"vring {index}"
        if not 0 < num <= VRING_MAX_SIZE or num & (num - 1):
            raise VhostUserError(f"{what}: size {num} is not a power of two in "
                                 f"1..{VRING_MAX_SIZE}")
        if addr.desc % 16:
            raise VhostUserError(f"{what}: descriptor table at 0x{addr.desc:x} is not "
                                 "16-byte aligned")
        align = derive_align(num, addr, what)
        holder, gpa = memory.user_to_guest(addr.desc, vring_size(num, align), what)
        if region is None:
            region = holder
        elif holder is not region:
            raise VhostUserError("the two vrings lie in different memory regions: "
                                 "unsupported (amplink's device works on one mapping)")
        vrings.append(VringEntry(da=gpa, align=align, num=num))
    assert region is not None
    return RingPlacement(region, (vrings[0], vrings[1]))
