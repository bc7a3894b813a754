#!/usr/bin/env python3
"""Build the User-Mode Linux kernel that amplink's kernel tests boot, once, cached.

Inputs: Debian's ``linux-source-6.1`` tarball, ``config.fragment`` (applied on top of
``tinyconfig``), the patches in ``patches/``, this script, the compiler and the host
CPU's XSAVE area size (CPUID leaf 0xD, which the first patch builds in). The kernel
lands in ``$AMPLINK_UML_CACHE`` (default ``~/.cache/amplink/uml``) under
``<sha256 of the inputs>/linux``; a second run with the same inputs only prints the path.

    python3 tools/uml/build.py            # build if needed, print the kernel's path
    python3 tools/uml/build.py --cached   # print the path if built, else exit 3

Needs: linux-source-6.1, gcc, make, flex, bison, bc, patch (``apt-get install``).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FRAGMENT = HERE / "config.fragment"
PATCHES = sorted((HERE / "patches").glob("*.patch"))
DEFAULT_SOURCE = Path("/usr/src/linux-source-6.1.tar.xz")
DEFAULT_CACHE = Path.home() / ".cache" / "amplink" / "uml"
#: exit status of --cached when the kernel is not built
NOT_BUILT = 3
#: the size UML 6.1 assumes when the CPU has no CPUID leaf 0xD
LEGACY_XSAVE_SIZE = 2696

_CPUID_C = r"""
#include <cpuid.h>
#include <stdio.h>
int main(void)
{
    unsigned int eax, ebx, ecx, edx;
    if (__get_cpuid_max(0, 0) < 0xd)
        return 1;
    __cpuid_count(0xd, 0, eax, ebx, ecx, edx);
    printf("%u\n", ebx);  /* bytes of the XSAVE area for the features enabled in XCR0 */
    return 0;
}
"""


class BuildError(Exception):
    """The kernel cannot be built here; the message says why."""


def cache_dir() -> Path:
    return Path(os.environ.get("AMPLINK_UML_CACHE", DEFAULT_CACHE))


def host_xsave_size(workdir: Path) -> int:
    """The XSAVE area size of this CPU (what PTRACE_SETREGSET wants), via a tiny C probe."""
    src = workdir / "xsave_size.c"
    exe = workdir / "xsave_size"
    src.write_text(_CPUID_C)
    try:
        subprocess.run(["gcc", "-O", "-o", str(exe), str(src)], check=True,
                       capture_output=True, text=True)
    except FileNotFoundError:
        raise BuildError("gcc is not installed (apt-get install gcc)") from None
    except subprocess.CalledProcessError as exc:
        raise BuildError(f"cannot compile the CPUID probe: {exc.stderr.strip()}") from None
    probe = subprocess.run([str(exe)], capture_output=True, text=True)
    if probe.returncode == 1:
        return LEGACY_XSAVE_SIZE
    size = int(probe.stdout)
    if not 512 <= size <= 1 << 20:
        raise BuildError(f"CPUID leaf 0xD reports an XSAVE area of {size} bytes")
    return size


def _compiler() -> str:
    try:
        return subprocess.run(["gcc", "--version"], capture_output=True, text=True,
                              check=True).stdout.splitlines()[0]
    except (FileNotFoundError, subprocess.CalledProcessError):
        raise BuildError("gcc is not installed (apt-get install gcc)") from None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def inputs(source: Path, xsave_size: int) -> dict[str, str]:
    """Everything the kernel binary depends on, as strings (hashed into the cache key)."""
    if not source.is_file():
        raise BuildError(f"{source} is missing (apt-get install linux-source-6.1)")
    found = {
        "source": _sha256_file(source),
        "fragment": hashlib.sha256(FRAGMENT.read_bytes()).hexdigest(),
        "script": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "compiler": _compiler(),
        "xsave_size": str(xsave_size),
    }
    for patch in PATCHES:
        found[f"patch {patch.name}"] = hashlib.sha256(patch.read_bytes()).hexdigest()
    return found


def cache_key(found: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(found, sort_keys=True).encode()).hexdigest()[:32]


def _run(cmd: list[str], cwd: Path, log: Path) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        done = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-30:])
        raise BuildError(f"{' '.join(cmd)} failed (status {done.returncode}); "
                         f"last lines of {log}:\n{tail}")


def _wanted_options() -> dict[str, str | None]:
    """CONFIG_X -> value from the fragment (None: 'is not set')."""
    wanted: dict[str, str | None] = {}
    for line in FRAGMENT.read_text().splitlines():
        if m := re.fullmatch(r"(CONFIG_\w+)=(.*)", line.strip()):
            wanted[m.group(1)] = m.group(2)
        elif m := re.fullmatch(r"# (CONFIG_\w+) is not set", line.strip()):
            wanted[m.group(1)] = None
    return wanted


def _check_config(config: Path) -> None:
    """Every option of the fragment must have survived olddefconfig (a missing dependency
    silently drops an option, and the kernel would boot without rpmsg)."""
    have: dict[str, str] = {}
    for line in config.read_text().splitlines():
        if m := re.fullmatch(r"(CONFIG_\w+)=(.*)", line):
            have[m.group(1)] = m.group(2)
    wrong = [f"{name}={have.get(name, '(not set)')}, wanted {value or '(not set)'}"
             for name, value in _wanted_options().items() if have.get(name) != value]
    if wrong:
        raise BuildError("the kernel configuration lost options of config.fragment: "
                         + "; ".join(wrong))


def build(source: Path, target: Path, xsave_size: int, jobs: int, workdir: Path) -> None:
    """Unpack, patch, configure and build; leave the kernel at ``target``."""
    log = workdir / "build.log"
    _run(["tar", "xf", str(source), "-C", str(workdir)], workdir, log)
    trees = [p for p in workdir.iterdir() if p.is_dir() and p.name.startswith("linux-source")]
    if len(trees) != 1:
        raise BuildError(f"{source} did not unpack to one linux-source-* directory")
    tree = trees[0]
    for patch in PATCHES:
        _run(["patch", "-p1", "--forward", "--batch", "-i", str(patch)], tree, log)
    make = ["make", "ARCH=um", f"-j{jobs}"]
    _run([*make, "tinyconfig"], tree, log)
    _run(["scripts/kconfig/merge_config.sh", "-m", ".config", str(FRAGMENT)], tree, log)
    _run([*make, "olddefconfig"], tree, log)
    _check_config(tree / ".config")
    _run([*make, f"KCFLAGS=-DUML_HOST_XSAVE_SIZE={xsave_size}", "linux"], tree, log)
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy2(tree / ".config", target / "config")
    shutil.copy2(log, target / "build.log")
    shutil.copy2(tree / "linux", target / "linux.tmp")
    os.replace(target / "linux.tmp", target / "linux")  # the kernel appears last, whole


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE,
                        help=f"the linux-source-6.1 tarball (default {DEFAULT_SOURCE})")
    parser.add_argument("--cached", action="store_true",
                        help=f"do not build: print the path if built, else exit {NOT_BUILT}")
    parser.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    cache = cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="probe-", dir=cache) as probe_dir:
            found = inputs(args.source, host_xsave_size(Path(probe_dir)))
        target = cache / cache_key(found)
        kernel = target / "linux"
        if kernel.is_file():
            print(kernel)
            return 0
        if args.cached:
            print(f"not built: {kernel} (run tools/uml/build.py)", file=sys.stderr)
            return NOT_BUILT
        with (cache / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the loser finds it built
            if not kernel.is_file():
                t0 = time.monotonic()
                print(f"building UML kernel in {target} (about 2 min on 2 cores) ...",
                      file=sys.stderr, flush=True)
                with tempfile.TemporaryDirectory(prefix="build-", dir=cache) as workdir:
                    build(args.source, target, int(found["xsave_size"]), args.jobs,
                          Path(workdir))
                seconds = time.monotonic() - t0
                (target / "inputs.json").write_text(
                    json.dumps({**found, "build_seconds": round(seconds, 1)}, indent=1))
                print(f"built in {seconds:.0f} s", file=sys.stderr)
    except BuildError as exc:
        print(f"tools/uml/build.py: {exc}", file=sys.stderr)
        return 1
    print(kernel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
