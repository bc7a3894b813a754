"""The simple simulated processor: start firmware, talk to it, stop it.

:class:`SimProcessor` is a :class:`.SimRemoteProc` used as one start and one stop,
without crash recovery: the firmware is loaded exactly as ``amplink boot`` and
:class:`.SimRemoteProc` load it (its ``RESOURCE_TABLE`` or ELF ``.resource_table`` is
processed, a native executable is recognised by its ELF magic), so firmware that works
under one works under all. A crash (the process dies, a watchdog, a fatal error the
firmware reports) takes the link down: blocked and later calls raise ``LinkDown``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Self

from ..._args import finite_seconds_arg
from ...link.runtime import Link
from ...link.waiting import DEFAULT_SPIN
from ...memory.region import SharedRegion
from ...remoteproc.resources import ProcessedResources
from ...remoteproc.states import RprocState
from .layout import LinkConfig
from .process import Output
from .rproc import DEFAULT_BOOT_TIMEOUT, SimRemoteProc


class SimProcessor:
    """A remote processor simulated by a child process running ``firmware``.

    ``firmware`` is a Python module name or ``.py`` path (optionally ``:function``,
    default ``main``), run by :mod:`amplink.firmware`, or a native executable following
    the convention of :mod:`..sim_abi` (detected by its ELF magic; ``native`` forces
    either). After :meth:`start`, :attr:`link` is the host's rpmsg link. ``poll_mode``
    makes both sides spin on the rings; ``spin`` (seconds) lets both sides spin that long
    before each sleep; ``args`` go to the firmware.
    """

    #: the remote processor under it (a subclass for firmware with links of another kind)
    rproc_class: type[SimRemoteProc] = SimRemoteProc

    def __init__(
        self,
        firmware: str,
        *,
        name: str = "sim0",
        config: LinkConfig | None = None,
        poll_mode: bool = False,
        spin: float = DEFAULT_SPIN,
        native: bool | None = None,
        args: Sequence[str] = (),
        boot_timeout: float = DEFAULT_BOOT_TIMEOUT,
        watchdog: float | None = None,
        stdout: Output = None,
        stderr: Output = None,
    ) -> None:
        self.rproc = self.rproc_class(
            firmware, name=name, native=native, args=args, config=config,
            poll_mode=poll_mode, spin=spin, watchdog=watchdog, recovery=False,
            boot_timeout=boot_timeout, stdout=stdout, stderr=stderr,
        )
        self.firmware = firmware
        self.name = name
        self.config = self.rproc.ops.options.config
        self.poll_mode = poll_mode
        #: the firmware's last process (kept after :meth:`stop` for its exit status)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def link(self) -> Link:
        """The host's rpmsg link to the firmware (after :meth:`start`)."""
        if self.rproc.power == 0:
            raise RuntimeError(f"{self.name} is not started")
        return self.rproc.link

    @property
    def region(self) -> SharedRegion | None:
        """The processor's memory, shared with the firmware (while started)."""
        memory = self.rproc.memory
        return None if memory is None else memory.pool

    @property
    def resources(self) -> ProcessedResources | None:
        """Where the table, vrings and buffers lie in :attr:`region` (while started)."""
        return self.rproc.resources

    def start(self) -> Link:
        """Start the firmware, set up the link, and wait until the firmware is up."""
        if self.rproc.power:
            raise RuntimeError(f"{self.name} is already started")
        try:
            self.rproc.boot()
        finally:
            self.process = self.rproc.process or self.rproc.ops.last_process
        return self.rproc.link

    @property
    def running(self) -> bool:
        """True while the firmware runs and has not crashed."""
        return self.rproc.state is RprocState.RUNNING

    def kill(self) -> None:
        """Kill the firmware process at once (a simulated crash)."""
        self.rproc.kill()

    def stop(self, timeout: float | None = None) -> int | None:
        """Close the link, stop the firmware process and free the shared memory.

        ``timeout`` (default: the processor's stop timeout) is how long the firmware may
        take to exit once the host hangs up. Returns its exit status (None if it never
        started).
        """
        if self.rproc.power:
            if timeout is not None:
                self.rproc.ops.stop_timeout = finite_seconds_arg(timeout, "timeout")
            self.rproc.shutdown()
        return None if self.process is None else self.process.returncode

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
