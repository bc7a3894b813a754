"""wait_readable works for any fd number (select(2) refuses those from 1024 on)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from amplink.notify import wait_readable

# In a child process: raising the fd limit and using fd 1500 would change this process's
# fd table for every later test.
HIGH_FD_CHECK = textwrap.dedent("""
    import os, resource
    from amplink.notify import wait_readable
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1600:
        raise SystemExit(77)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1600), hard))
    r, w = os.pipe()
    high = os.dup2(r, 1500)
    assert wait_readable(high, 0.01) is False
    os.write(w, b"x")
    assert wait_readable(high, 1.0) is True
""")


def test_high_fd_numbers_time_out_and_see_data():
    result = subprocess.run([sys.executable, "-c", HIGH_FD_CHECK], capture_output=True,
                            text=True, timeout=30)
    if result.returncode == 77:
        pytest.skip("the fd limit does not allow fd numbers past 1024")
    assert result.returncode == 0, result.stderr


def test_hang_up_counts_as_readable():
    r, w = os.pipe()
    os.close(w)
    try:
        assert wait_readable(r, 1.0) is True
    finally:
        os.close(r)
