"""Both ends of an RTKit co-processor in this process: the host runtime (RtkitHost) and
either amplink's firmware runtime in a thread, or a raw mailbox end the test drives
itself (a hostile co-processor)."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable

from amplink.firmware.rtkit import Halted, RtkitFirmware
from amplink.memory.iommu import Iommu
from amplink.memory.region import SharedRegion
from amplink.platforms.rtkit import DmaClient, DmaServer, RtkitHost
from amplink.rtkit import messages as m
from amplink.transports.mailbox import mailbox_pair

IOVA_BASE = 0x1_0000_0000
IOVA_SIZE = 16 << 20
SRAM_BASE = 0x2_0000_0000
SRAM_SIZE = 64 << 10
# Waits that should succeed get a long bound, so that a loaded CI machine cannot fail them;
# the tests of timeouts pass their own short one.
GENEROUS_ACK_TIMEOUT = 10.0


class Rig:
    """The host side, and the raw co-processor side of the mailbox and memory bus."""

    def __init__(self, *, depth: int = 32, ack_timeout: float = GENEROUS_ACK_TIMEOUT,
                 buffer_budget: int = 1 << 20, iova_size: int = IOVA_SIZE) -> None:
        ap, self.peer = mailbox_pair(depth)
        host_sock, self.peer_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.iommu = Iommu("test-dart", IOVA_BASE, iova_size)
        self.sram = SharedRegion.memfd(SRAM_SIZE, "test-sram", da_base=SRAM_BASE)
        self.peer_sram = SharedRegion.from_fd(os.dup(self.sram.fd), SRAM_SIZE,
                                              da_base=SRAM_BASE)
        self.host = RtkitHost(ap, iommu=self.iommu, name="test", dma=DmaServer(host_sock,
                                                                                 self.iommu),
                              mmio=self.sram, ack_timeout=ack_timeout,
                              buffer_budget=buffer_budget)
        self.crashes: list[str] = []
        self.host.watch_crash(lambda _log, summary: self.crashes.append(summary))
        self.host.start()

    # -- a raw co-processor ----------------------------------------------------------------------
    def send(self, ep: int, msg: int) -> None:
        self.peer.send(ep, msg, timeout=2)

    def recv(self, timeout: float = 2.0) -> tuple[int, int]:
        got = self.peer.recv(timeout)
        assert got is not None, "the host sent nothing"
        return got

    def recv_all(self, timeout: float = 0.2) -> list[tuple[int, int]]:
        out = []
        while (got := self.peer.recv(timeout)) is not None:
            out.append(got)
        return out

    def dma(self) -> DmaClient:
        return DmaClient(self.peer_sock, timeout=2.0)

    def hello_and_map(self, endpoints: set[int], version: tuple[int, int] = (11, 12)) -> None:
        """HELLO and the endpoint map, as a well-behaved co-processor; takes the answers."""
        self.send(0, m.hello(*version))
        assert self.recv() == (0, m.hello_reply(min(12, version[1])))
        bases = sorted({ep // 32 for ep in endpoints}) or [0]
        for i, base in enumerate(bases):
            bitmap = sum(1 << (ep % 32) for ep in endpoints if ep // 32 == base)
            last = i == len(bases) - 1
            self.send(0, m.epmap(base, bitmap, last))
            assert self.recv() == (0, m.epmap_reply(base, last))

    def power_up(self) -> None:
        """Acknowledge IOP ON, then answer the host's AP ON (run boot() meanwhile)."""
        self.send(0, m.power(m.MgmtType.IOP_PWR_STATE_ACK, m.PowerState.ON))
        ep, msg = self.recv()
        assert (ep, m.msg_type(msg)) == (0, m.MgmtType.SET_AP_PWR_STATE)
        self.send(0, msg)

    def close(self) -> None:
        self.host.close()
        self.peer.close()
        self.peer_sock.close()
        self.sram.close()
        self.peer_sram.close()


class FirmwareRig(Rig):
    """The host and amplink's firmware runtime (in a thread), set up by ``setup(fw)``."""

    def __init__(self, setup: Callable[[RtkitFirmware], object] = lambda fw: None,
                 **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.fw = RtkitFirmware(self.peer, dma=self.dma(), sram=self.peer_sram, name="fw")
        setup(self.fw)
        self.error: BaseException | None = None
        self.halted: Halted | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.fw.run(until=self._stop.is_set)
        except Halted as exc:
            self.halted = exc
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        assert not self.thread.is_alive(), "the firmware thread did not end"
        super().close()
        assert self.error is None, self.error
