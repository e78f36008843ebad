"""The Ray two-node cluster tests (``tests/ray_fleet_cases.py``), each in its own pytest
process, with a watchdog on the cluster's start-up.

Ray's core runs in the test process as a driver. Once, at load 18, a run of the node-kill
case aborted the whole process inside Ray (``actor_manager.cc`` "Cannot find an actor
handle" from ``ray.kill``, right after a second driver session connected in the same
process), and in the twelfth session 1 run in 4 exited 1 with nothing printed: the
driver had taken the doomed node's raylet (both nodes were on 127.0.0.1) and Ray's core
exits a driver whose raylet dies (its log: "Disconnected from the local raylet"), then
reconnected once (the second session). The case now pins the driver to the head
(``ray_fleet_cases.py``). In-process, such a crash ends every other test of the session
with it: a child process per case keeps it to one failing test, and gives each case one
driver session; the wrapper kills whatever a dead child left (its server).

In the ninth session's fresh-clone CI rehearsal the first case hung five minutes in
``ray.init`` (``Node._init_gcs_client``: the head's own GCS never answered on 127.0.0.1,
machine idle), after passing three times elsewhere; it did not happen again in ten runs
since, so its cause is not known. So each attempt gets a short temp dir of its own (no
session, socket or cached port of an earlier Ray is shared) and :data:`START_S` to bring
its two nodes up (the case writes a marker then). An attempt that does not is killed
with its whole process group, its Ray logs are kept for the report, and the case runs
once more; a second start-up failure fails the test with both attempts' logs. Failures
after the cluster is up are never retried.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

pytest.importorskip("ray")

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
CASES = ("test_a_two_node_cluster_commits_rounds_with_phones_on_both_nodes",
         "test_killing_a_node_mid_round_loses_its_tasks_and_the_run_goes_on",
         "test_killing_the_job_queue_mid_round_and_the_run_goes_on")
START_S = 150.0  # two nodes up; ~15 s on an idle 2-core VM
CASE_S = 420.0  # the case after that


def _ray_logs(temp_dir: Path, limit: int = 3000) -> str:
    """The tails of the GCS's and raylets' logs of an attempt."""
    out = []
    for name in ("gcs_server.err", "gcs_server.out", "raylet.err", "raylet.out",
                 "python-core-driver-*.log"):
        for f in sorted(temp_dir.glob(f"session_*/logs/{name}")):
            text = f.read_text(errors="replace")[-limit:]
            out.append(f"--- {f.relative_to(temp_dir)}\n{text}")
    return "\n".join(out) or "(no Ray logs written)"


def _child_report(text: str, limit: int = 6000) -> str:
    """The child pytest's failure section (or its output's tail), at most ``limit`` chars."""
    start = text.find("= FAILURES =")
    if start < 0:
        start = text.find("= ERRORS =")
    part = text[max(start, 0):] if start >= 0 else text
    if len(part) > limit:
        part = part[:limit // 2] + "\n[...]\n" + part[-limit // 2:]
    return f"--- the case's pytest output\n{part}"


def _kill_group(proc: subprocess.Popen, *dirs: Path) -> None:
    """The child, everything in its process group, and any process whose command line
    names one of ``dirs`` (Ray's of its temp dir; the case's server, whose state lies
    under the child's basetemp and which runs in a session of its own)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    _kill_leftovers(*dirs)


def _kill_leftovers(*dirs: Path) -> list[str]:
    """Kill every process whose command line names one of ``dirs``; their commands."""
    killed = []
    for p in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(p.info["cmdline"] or [])
            if any(f"{d}{os.sep}" in cmd for d in dirs) and p.pid != os.getpid():
                p.kill()
                killed.append(cmd[:200])
    return killed


def _attempt(case: str, basetemp: Path) -> tuple[str, int | None, str]:
    """One run of the case: ('up'|'no_start', exit code, output and logs)."""
    temp_dir = Path(tempfile.mkdtemp(prefix="fkray", dir="/tmp"))
    marker = temp_dir / "cluster-up"
    log = basetemp / "child.log"
    basetemp.mkdir(parents=True, exist_ok=True)
    # RAY_TMPDIR too: ``Cluster`` writes the current cluster's address under
    # $RAY_TMPDIR/ray whatever a node's temp_dir is (and fails where /tmp/ray is missing)
    env = {**os.environ, "FEDKB_RAY_TEMP_DIR": str(temp_dir), "FEDKB_RAY_UP_MARKER": str(marker),
           "RAY_TMPDIR": str(temp_dir), "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", f"{HERE / 'ray_fleet_cases.py'}::{case}", "-q",
             "-n", "0", "-p", "no:cacheprovider", "--basetemp", str(basetemp / "t")],
            stdout=out, stderr=subprocess.STDOUT, cwd=HERE.parent, env=env,
            start_new_session=True)
    try:
        started = time.monotonic()
        while not marker.exists() and proc.poll() is None:
            if time.monotonic() - started > START_S:
                _kill_group(proc, temp_dir, basetemp)
                return ("no_start", None, f"{log.read_text(errors='replace')[-4000:]}\n"
                        f"{_ray_logs(temp_dir)}")
            time.sleep(0.5)
        if not marker.exists():  # it ended before its cluster was up
            return ("no_start", proc.returncode, f"{log.read_text(errors='replace')[-6000:]}"
                    f"\n{_ray_logs(temp_dir)}")
        try:
            rc = proc.wait(timeout=CASE_S)
        except subprocess.TimeoutExpired:
            _kill_group(proc, temp_dir, basetemp)
            rc = None
        # the child's own report last: CI shows the tail of a failure's message
        return ("up", rc, ("" if rc == 0 else _ray_logs(temp_dir, limit=1200) + "\n")
                + _child_report(log.read_text(errors="replace")))
    finally:
        if proc.poll() is None:
            _kill_group(proc, temp_dir, basetemp)
        # a child that died abruptly (Ray's core exits a driver whose raylet died) ran no
        # fixture teardown: its server and Ray processes would outlive the test
        _kill_leftovers(temp_dir, basetemp)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.timeout(2 * START_S + CASE_S + 60)
@pytest.mark.parametrize("case", CASES)
def test_ray_cluster_case_in_its_own_process(case, tmp_path):
    state, rc, out = _attempt(case, tmp_path / "1")
    if state == "no_start":  # the start-up hang above: once more, with the first's logs
        print(f"attempt 1: the cluster did not come up (exit {rc}):\n{out}")
        first = out
        state, rc, out = _attempt(case, tmp_path / "2")
        assert state == "up", (f"the cluster did not come up twice\n--- attempt 1\n{first}"
                               f"\n--- attempt 2 (exit {rc})\n{out}")
    assert rc == 0, f"exit {rc}\n{out}"
