"""Echo firmware that, on b"corrupt", writes garbage into what the host reads on vring 0.

It publishes used entries with out-of-range ids, sends one message whose rpmsg header
claims more bytes than the buffer holds, and one with used.len < 16; then it goes on
echoing as an honest device would. Reaches into the device transport on purpose.
"""

import struct

from amplink.link import Link

_HDR = struct.Struct("<IIIHH")


def corrupt(link: Link, src: int, dst: int) -> None:
    transport = link.backend
    tx = transport.tx  # the device side of vring 0
    region = transport.region
    for bad in (tx.num, 0xFFFF, 0xFFFF_FFFF):
        # an extra used entry naming no buffer, published like a real one
        idx = tx._next_used
        elem = tx.layout.used_ring + 8 * (idx % tx.num)
        region.write(elem, struct.pack("<II", bad, 64))
        tx._next_used = (idx + 1) & 0xFFFF
        region.write_u16(tx.layout.used + 2, tx._next_used)
    for hdr_len, used_len in ((0xFFFF, 512), (0, 8)):
        buf = tx.pop_avail()
        assert buf is not None, "the host posted no RX buffer"
        head, offset, _length = buf
        region.write(offset, _HDR.pack(src, dst, 0, hdr_len, 0))
        tx.push_used(head, used_len)
    transport.doorbell.kick()


def main(link: Link) -> None:
    def echo(ep, payload, src):
        if payload == b"corrupt":
            corrupt(link, ep.addr, src)
        ep.sendto(payload, src)

    link.create_endpoint("rpmsg-echo", announce=True, callback=echo)
    link.run()
