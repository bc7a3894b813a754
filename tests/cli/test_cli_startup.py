"""``amplink --help`` stays fast: building the parser loads none of the heavy modules.

Every command module imports what its command needs when the command runs; at import
time it only registers its options, from small constant modules. This checks the
mechanism (which modules a fresh interpreter has loaded), not the time it takes.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

#: packages and modules only a running command may need (a name covers its submodules)
HEAVY = [
    "amplink.firmware",
    "amplink.handover",
    "amplink.link",
    "amplink.memory",
    "amplink.notify",
    "amplink.perf",
    "amplink.platforms.linux",
    "amplink.platforms.openamp",
    "amplink.platforms.rtkit",
    "amplink.platforms.sim",
    "amplink.platforms.vhost_user",
    "amplink.remoteproc.core",
    "amplink.remoteproc.elf_loader",
    "amplink.rtkit",
    "amplink.service",
    "amplink.transports.keembay.backend",
    "amplink.transports.rpmsg_char",
    "amplink.transports.service",
    "amplink.transports.virtio",
    "amplink.virtio",
    "elftools",
]

LOADED = (
    "import json, sys, amplink.cli; amplink.cli.build_parser(); "
    "print(json.dumps(sorted(sys.modules)))"
)


def heavy(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in HEAVY)


def test_building_the_parser_imports_no_heavy_module() -> None:
    r = subprocess.run([sys.executable, "-c", LOADED], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    loaded = json.loads(r.stdout)
    assert "amplink.cli.sim" in loaded and "amplink.cli.rproc" in loaded  # every command's
    assert [m for m in loaded if heavy(m)] == [], sorted(m for m in loaded
                                                        if m.startswith("amplink"))


def test_the_heavy_list_names_real_modules() -> None:
    # a renamed module would make the check above pass for nothing
    for name in HEAVY:
        assert importlib.util.find_spec(name) is not None, name
