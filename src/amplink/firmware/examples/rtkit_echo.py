"""Example RTKit firmware: the usual system endpoints and an echo at endpoint 0x20.

The co-processor announces crashlog (1), syslog (2) and ioreport (4) and asks a buffer
for each, the three ways a buffer request can be answered: the crashlog's is chosen by
the host (IOVA 0), the syslog's lies in the co-processor's own memory (read by the host
in place), the ioreport's at an IOVA the co-processor chose. Endpoint 0x20 echoes every
message; the message ``0xdead`` makes it crash (a handler that raises), so that the
crashlog path can be seen::

    amplink boot --rtkit amplink.firmware.examples.rtkit_echo --name fw0
    amplink trace fw0          # its syslog
    amplink crash fw0          # asks it to crash: the crashlog is parsed
    amplink crashlog fw0
"""

from __future__ import annotations

from amplink.firmware.rtkit import BufferRequest, RtkitFirmware
from amplink.rtkit.messages import EP_IOREPORT, EP_SYSLOG

ECHO = 0x20
CRASH_ME = 0xDEAD
#: an IOVA in the default IOMMU window of RtkitRemoteProc (0x1_0000_0000 + 16 MiB)
IOREPORT_IOVA = 0x1_00F0_0000


def main(fw: RtkitFirmware) -> None:
    fw.buffers[EP_SYSLOG] = fw.sram_buffer(pages=1, offset=0)
    fw.buffers[EP_IOREPORT] = BufferRequest(1, IOREPORT_IOVA)
    served = 0

    @fw.endpoint(ECHO)
    def echo(msg: int) -> None:
        nonlocal served
        if msg == CRASH_ME:
            raise RuntimeError("asked to crash by message 0xdead")
        fw.send(ECHO, msg)
        served += 1
        if served % 1000 == 0:
            fw.log(f"echoed {served} messages")

    fw.run(until=lambda: fw.proto.running)  # boot, then say so in the syslog
    fw.log(f"echo ready on endpoint 0x{ECHO:x} (protocol version {fw.proto.version})")
