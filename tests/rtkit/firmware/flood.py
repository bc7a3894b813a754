"""Echoes on endpoint 0x20, but first floods the host with messages to an endpoint it
never announced, and tries memory it was never given."""

from amplink.platforms.rtkit.dma import DmaFault

FLOOD = 2000
PROBES = (0x0, 0x1000, 0xFFFF_FFFF_F000, 0x2_0000_0000)


def main(fw):
    faults = 0

    @fw.endpoint(0x20)
    def echo(msg):
        nonlocal faults
        for i in range(FLOOD):
            fw.send(0x60, i)
        for da in PROBES:
            try:
                fw.dma_read(da, 16)
            except DmaFault:
                faults += 1
        fw.send(0x20, faults)
