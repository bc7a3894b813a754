"""CI: amplink built and installed without a C compiler runs its pure-Python path.

Run by ``.ci/run`` with the interpreter of a fresh venv into which amplink was installed
with ``CC=false``: the optional extension must be missing, the pure path selected, and a
message must go both ways over a link.
"""

import importlib.util
import sys

from amplink._accel import IMPLEMENTATION
from amplink.platforms.inprocess import LinkPair

if importlib.util.find_spec("amplink._speedups") is not None:
    sys.exit("amplink._speedups was built although the compiler failed")
if IMPLEMENTATION != "python":
    sys.exit(f"the implementation in use is {IMPLEMENTATION!r}, not the pure-Python path")
with LinkPair.create() as pair:
    remote = pair.device.create_endpoint("ci", addr=1030)
    local = pair.host.create_endpoint(dst=1030)
    local.send(b"down", timeout=1)
    assert remote.recv(timeout=1) == b"down"
    remote.sendto(b"up", local.addr, timeout=1)
    assert local.recv(timeout=1) == b"up"
    assert pair.host.statistics().backend["implementation"] == "python"
print("CI: installed without a C compiler: no extension, the pure-Python path works")
