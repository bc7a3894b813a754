"""The conformance suite's peer agent (peer_agent.py) as Keem Bay VPU firmware: its
table declares the Keem Bay IPC carveout, so it runs over a Keem Bay link (started by
backend_keembay.py). Not a test module."""

from __future__ import annotations

import os
import sys

from amplink.firmware.keembay import resource_table

# firmware is loaded by path: the agent next to this file is found through sys.path
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_agent import main  # noqa: E402

RESOURCE_TABLE = resource_table()
__all__ = ["RESOURCE_TABLE", "main"]
