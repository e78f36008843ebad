"""The huge-page tunable: when fedkb restarts itself with it, and that the restart happens."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fedkb import hugepages as hp


def test_mode_is_the_bracketed_word(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert hp.thp_mode(f) == "madvise"
    assert hp.thp_mode(tmp_path / "missing") is None


@pytest.mark.parametrize(("version", "ok"), [
    (("glibc", "2.36"), True), (("glibc", "2.35"), True), (("glibc", "2.31"), False),
    (("", ""), False), (("musl", "1.2"), False), (("glibc", "x"), False)])
def test_only_glibc_2_35_or_newer_has_the_tunable(version, ok):
    assert hp.glibc_has_hugetlb(version) is ok


def test_restart_only_where_it_helps_and_never_twice():
    assert hp.wanted({}, "madvise", True)
    assert not hp.wanted({}, "always", True)  # the kernel already gives huge pages
    assert not hp.wanted({}, "never", True)
    assert not hp.wanted({}, "madvise", False)  # old glibc
    assert not hp.wanted({hp.OPT_OUT: "1"}, "madvise", True)
    once = hp.with_tunable({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert once["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert not hp.wanted(once, "madvise", True)


@pytest.mark.skipif(not (hp.thp_mode() == "madvise" and hp.glibc_has_hugetlb()),
                    reason="the restart applies only to THP madvise mode with glibc >= 2.35")
def test_the_command_restarts_with_the_tunable_and_its_children_inherit_it():
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hp.OPT_OUT)}
    child = "import os; print(os.environ.get('GLIBC_TUNABLES', 'unset'))"
    code = ("import sys; from fedkb.hugepages import reexec_if_needed; "
            f"reexec_if_needed([sys.executable, '-c', {child!r}]); print('not restarted')")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.strip() == hp.TUNABLE
    off = subprocess.run([sys.executable, "-c", code], env={**env, hp.OPT_OUT: "1"},
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert off.strip() == "not restarted"
