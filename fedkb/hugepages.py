"""Large tensors in transparent huge pages: glibc's ``glibc.malloc.hugetlb=1`` tunable.

TensorFlow's CPU allocator takes every tensor from ``malloc``. Central training's logits,
softmax and their gradients are 40-50 MB a step (batch x sequence x vocabulary floats), above
glibc's mmap threshold (32 MB at most), so each step maps fresh memory and the kernel faults
it in 4 KiB pages: 12,500 faults for one 51 MB softmax on the project's 2-core VM, where a
fault costs ~6 us. On a kernel whose transparent huge pages are in ``madvise`` mode (the
default of many distributions, and of this VM), nothing asks for huge pages: a third of the
demo's central-training CPU time went to the kernel (bench/README.md, "Huge pages for
TensorFlow's tensors").

glibc >= 2.35 reads ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` at process start and then
madvises its mmapped chunks and heap for huge pages. A tunable is read only at start, so
:func:`reexec_if_needed` restarts the ``fedkb`` command once with it set; every process the
command starts (server, fleet workers) inherits it. ``FEDKB_NO_HUGEPAGES=1`` turns it off.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "FEDKB_NO_HUGEPAGES"
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode(path: Path = THP_MODE) -> str | None:
    """The kernel's transparent-huge-page mode (``always``, ``madvise``, ``never``), if any."""
    try:
        text = path.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def glibc_has_hugetlb(version: tuple[str, str] | None = None) -> bool:
    """Whether this process runs on glibc 2.35 or newer (the first with the tunable)."""
    lib, ver = version if version is not None else platform.libc_ver()
    if lib != "glibc" or not ver:
        return False
    try:
        major, minor = (int(part) for part in ver.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (2, 35)


def wanted(env: Mapping[str, str], mode: str | None, has_tunable: bool) -> bool:
    """Whether to restart with the tunable: huge pages on request only, glibc that can, not
    already set, not opted out."""
    if env.get(OPT_OUT, "") not in ("", "0") or not has_tunable:
        return False
    if mode != "madvise":  # "always" needs no request; "never" or unknown cannot use one
        return False
    return "glibc.malloc.hugetlb" not in env.get("GLIBC_TUNABLES", "")


def with_tunable(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with the tunable added to any tunables already set."""
    out = dict(env)
    current = out.get("GLIBC_TUNABLES", "")
    out["GLIBC_TUNABLES"] = f"{current}:{TUNABLE}" if current else TUNABLE
    return out


def reexec_if_needed(command: Sequence[str]) -> None:
    """Replace this process by ``command`` with the tunable set, when it would help.

    Returns (doing nothing) when it would not; never returns otherwise. Call it first thing,
    before threads or files are opened.
    """
    if not wanted(os.environ, thp_mode(), glibc_has_hugetlb()):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], list(command), with_tunable(os.environ))
