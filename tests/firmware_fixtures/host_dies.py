"""A host process that starts echo firmware, prints the firmware's pid, and dies."""

import os
import sys

from amplink import SimProcessor

proc = SimProcessor("amplink.firmware.examples.echo", boot_timeout=10.0)
proc.start()
ep = proc.link.open_channel("rpmsg-echo", timeout=5.0)
ep.send(b"ping", timeout=5.0)
assert ep.recv(timeout=5.0) == b"ping"
print(proc.process.pid, flush=True)
sys.stdout.close()
os._exit(1)  # no clean-up at all: the firmware must notice on its own
