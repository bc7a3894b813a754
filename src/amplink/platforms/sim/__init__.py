"""Simulated remote processors: firmware (Python or native) running as child processes.

* :class:`SimProcessor`: a firmware child and one rpmsg link, started and stopped.
* :class:`SimRemoteProc`: the remoteproc lifecycle (resource tables, power references,
  crash detection and recovery, coredumps, trace) for the same children.

The fd and environment convention both follow is described in :mod:`..sim_abi`.
"""

from .images import NativeImage, PythonImage, SimImage
from .process import FirmwareStartError
from .processor import SimProcessor
from .rproc import DEFAULT_BOOT_TIMEOUT, SimOps, SimOptions, SimRemoteProc

__all__ = [
    "DEFAULT_BOOT_TIMEOUT", "FirmwareStartError", "NativeImage", "PythonImage", "SimImage",
    "SimOps", "SimOptions", "SimProcessor", "SimRemoteProc",
]
