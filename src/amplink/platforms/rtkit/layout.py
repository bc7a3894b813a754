"""How a simulated RTKit co-processor process learns what it has: fds in its environment.

The host starts ``python -m amplink.firmware.rtkit SPEC`` with these inherited fds,
named by environment variables (each checked by the firmware, :meth:`RtkitEnv.from_env`):

=============================== ==================================================
``AMPLINK_RTKIT_MBOX_FD``       the mailbox (a sealed memfd, see
                                :mod:`amplink.transports.mailbox`), ``..._SIZE`` bytes
``AMPLINK_RTKIT_DATA_RX_FD``    eventfd the host rings when a message waits for the
                                firmware ("not empty"); ``..._DATA_TX_FD`` rings the host
``AMPLINK_RTKIT_SPACE_RX_FD``   eventfd the host rings when it made room in the FIFO the
                                firmware sends into ("not full"); ``..._SPACE_TX_FD``
``AMPLINK_RTKIT_DMA_FD``        the memory bus (``SOCK_SEQPACKET``, see :mod:`.dma`): the
                                only way to host memory, through the host's IOMMU
``AMPLINK_RTKIT_SRAM_FD``       the co-processor's own memory (a memfd of ``..._SIZE``
                                bytes at device address ``..._BASE``): buffers it places
                                there are read by the host in place (MMIO)
``AMPLINK_LIFELINE_FD``         the lifeline of every simulated processor
                                (:mod:`amplink.platforms.sim_abi`): ``R`` when the
                                firmware says HELLO, ``F reason\\n`` for a fatal error,
                                EOF from the host = stop
=============================== ==================================================

``AMPLINK_NAME`` is the processor's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from ..sim_abi import ENV_LIFELINE_FD, ENV_NAME

ENV_MBOX_FD = "AMPLINK_RTKIT_MBOX_FD"
ENV_MBOX_SIZE = "AMPLINK_RTKIT_MBOX_SIZE"
ENV_DATA_RX_FD = "AMPLINK_RTKIT_DATA_RX_FD"
ENV_DATA_TX_FD = "AMPLINK_RTKIT_DATA_TX_FD"
ENV_SPACE_RX_FD = "AMPLINK_RTKIT_SPACE_RX_FD"
ENV_SPACE_TX_FD = "AMPLINK_RTKIT_SPACE_TX_FD"
ENV_DMA_FD = "AMPLINK_RTKIT_DMA_FD"
ENV_SRAM_FD = "AMPLINK_RTKIT_SRAM_FD"
ENV_SRAM_SIZE = "AMPLINK_RTKIT_SRAM_SIZE"
ENV_SRAM_BASE = "AMPLINK_RTKIT_SRAM_BASE"

_KEYS = {
    "mbox_fd": ENV_MBOX_FD, "mbox_size": ENV_MBOX_SIZE, "data_rx_fd": ENV_DATA_RX_FD,
    "data_tx_fd": ENV_DATA_TX_FD, "space_rx_fd": ENV_SPACE_RX_FD,
    "space_tx_fd": ENV_SPACE_TX_FD, "dma_fd": ENV_DMA_FD, "sram_fd": ENV_SRAM_FD,
    "sram_size": ENV_SRAM_SIZE, "sram_base": ENV_SRAM_BASE, "lifeline_fd": ENV_LIFELINE_FD,
}
#: values that may not be 0
_POSITIVE = {"mbox_size", "sram_size"}


@dataclass(frozen=True)
class RtkitEnv:
    """What the host tells an RTKit firmware process (see the module docstring)."""

    mbox_fd: int
    mbox_size: int
    data_rx_fd: int
    data_tx_fd: int
    space_rx_fd: int
    space_tx_fd: int
    dma_fd: int
    sram_fd: int
    sram_size: int
    sram_base: int
    lifeline_fd: int
    name: str = "rtkit"

    def to_env(self) -> dict[str, str]:
        values = asdict(self)
        env = {key: str(values[field]) for field, key in _KEYS.items()}
        env[ENV_NAME] = self.name
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RtkitEnv:
        """Parse what the host set: RuntimeError if a variable is missing, ValueError if
        one is not a non-negative integer (both name it)."""
        values: dict[str, int] = {}
        for field, key in _KEYS.items():
            text = env.get(key)
            if text is None:
                raise RuntimeError(f"{key} is not set: RTKit firmware must be started by an "
                                   "amplink host (e.g. `amplink boot --rtkit FIRMWARE`)")
            try:
                value = int(text, 0)
            except ValueError:
                value = -1
            if value < (1 if field in _POSITIVE else 0):
                raise ValueError(f"{key}={text!r} is not a valid value")
            values[field] = value
        return cls(**values, name=env.get(ENV_NAME, "rtkit"))

    def pass_fds(self) -> tuple[int, ...]:
        """The fds the child must inherit."""
        return (self.mbox_fd, self.data_rx_fd, self.data_tx_fd, self.space_rx_fd,
                self.space_tx_fd, self.dma_fd, self.sram_fd, self.lifeline_fd)
