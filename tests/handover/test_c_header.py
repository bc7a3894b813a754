"""amplink_buffers.h compiles cleanly and refuses what is not attached."""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources

import pytest

PROGRAM = r"""
#include "amplink_buffers.h"
int main(void)
{
    struct amplink_handover_record r = { 1, AMPLINK_REC_SEND, 1, 0, 7, 0, 4 };
    struct amplink_handover_record d = amplink_done(&r);
    if (sizeof(struct amplink_attach_msg) != 40 || sizeof r != 24) return 2;
    if (d.type != AMPLINK_REC_DONE || d.id != 7) return 3;
    amplink_buffers_fd = -1;  /* no host: faults are reported to nobody */
    return amplink_buf_ref(&r) != 0 || amplink_dma(0x100000000ull, 1, 1) != 0;
}
"""


def test_header_compiles_and_checks(tmp_path):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    include = resources.files("amplink.firmware.examples")
    source = tmp_path / "t.c"
    source.write_text(PROGRAM)
    subprocess.run([gcc, "-Wall", "-Wextra", "-Werror", "-Wno-unused-function", "-O2",
                    f"-I{include}", str(source), "-o", str(tmp_path / "t")],
                   check=True, timeout=60)
    assert subprocess.run([str(tmp_path / "t")], timeout=10).returncode == 0
