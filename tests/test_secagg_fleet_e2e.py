"""End to end: `fedkb simulate --engine fleet --secagg`, a real server process and real
phone processes (LiteRT training, the secure phases over HTTP), and its report's
``secure_aggregation`` object; and the flags refused before anything starts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import psutil
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _command(tiny_data, tiny_artifact) -> list[str]:
    return [sys.executable, "-m", "fedkb", "simulate", "--engine", "fleet", "--data",
            str(tiny_data), "--preset", "tiny", "--rounds", "2", "--clients-per-round", "4",
            "--devices", "16", "--workers", "1", "--selection-window", "3",
            "--reporting-deadline", "30", "--overselect", "1.0", "--clip-norm", "4",
            "--uplink", "q8", "--artifact", str(tiny_artifact), "--json"]


def _simulate(tiny_data, tiny_artifact, *extra: str, timeout: float = 240):
    return subprocess.run([*_command(tiny_data, tiny_artifact), *extra],
                          capture_output=True, text=True, timeout=timeout)


def test_a_secure_fleet_run_commits_its_rounds_and_reports_them(tiny_data, tiny_artifact):
    proc = _simulate(tiny_data, tiny_artifact, "--secagg", "--secagg-threshold", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    sa = report["secure_aggregation"]
    assert sa["rounds_secure"] == 2 and sa["threshold"] == 3
    assert sa["modulus_bits"] == 8 + 2  # q8 codes, 4 summands
    assert set(sa["dropouts"]) == {"before_keys", "after_keys", "after_shares",
                                   "after_masked_input"}
    assert sa["refused"] == {} or all(k in ("phase_closed", "duplicate", "not_eligible")
                                      for k in sa["refused"])
    assert report["heldout"]["top1_recall"] is not None
    # each round summed at least t inputs; the server saw only the masked vectors' bytes
    assert all(r["clients"] >= 3 for r in report["rounds"])
    assert all(r["wall_s"] > 0 for r in report["rounds"])
    # the phones' exchanges ran on held requests (the fleet engine holds by default),
    # and every phone that finished a protocol said so
    phones = sa["phones"]
    assert phones["held_steps"] > 0 and phones["completed"] >= 2 * 3


def test_a_distributed_dp_fleet_run_noises_on_the_phones(tiny_data, tiny_artifact):
    """--dp fedavg --dp-distributed with --secagg: the phone processes add the noise, the
    server process adds none and records the multiplier the survivors reached."""
    proc = _simulate(tiny_data, tiny_artifact, "--secagg", "--secagg-threshold", "3",
                     "--dp", "fedavg", "--dp-distributed", "--dp-noise", "0.5",
                     "--dp-clip", "0.5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["secure_aggregation"]["rounds_secure"] == 2
    priv = report["privacy"]
    assert priv["noise_placement"] == "phones" and priv["rounds"] == 2
    assert priv["epsilon"] is not None and "discrete tau" in priv["accountant"]
    # the field holds the noise: more bits than the codes' 8 + 2
    assert report["secure_aggregation"]["modulus_bits"] > 10
    assert report["secure_aggregation"]["phone_noise"]["std"] > 0


@pytest.mark.parametrize("extra, message", [
    (("--secagg", "--secagg-threshold", "2"), "too small for the threat model"),
    (("--secagg", "--secagg-threshold", "5"), "more than the 4 phones"),
    (("--secagg", "--uplink", "float32"), "quantized codes"),
    (("--secagg-neighbours", "2",), "need --secagg"),
    (("--dp", "fedavg", "--dp-distributed"), "needs [secagg]"),
])
def test_bad_secure_settings_are_refused_at_start(tiny_data, tiny_artifact, extra, message,
                                                 capsys):
    from fedkb.cli import main

    rc = main(["simulate", "--engine", "fleet", "--data", str(tiny_data), "--preset", "tiny",
               "--rounds", "2", "--clients-per-round", "4", "--overselect", "1.0",
               "--clip-norm", "4", "--uplink", "q8", "--artifact", str(tiny_artifact),
               "--json", *extra])
    err = capsys.readouterr().err
    assert rc != 0 and message in err, err[-2000:]


def test_a_secure_fleet_run_on_ray(tiny_data, tiny_artifact):
    """The same secure run with the phones on a local Ray (``--ray``): shards' phones step
    the protocol on their pool threads like worker processes' phones do."""
    pytest.importorskip("ray")
    # a short temp dir of its own: Ray's socket paths must fit in 107 bytes
    temp = tempfile.mkdtemp(prefix="fkrs", dir="/tmp")
    try:
        proc = subprocess.run(
            [*_command(tiny_data, tiny_artifact), "--secagg", "--secagg-threshold", "3",
             "--ray", "--ray-shards", "1", "--ray-trainers", "1"],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "RAY_TMPDIR": temp})
        left = [p.pid for p in psutil.process_iter(["cmdline"])
                if temp in " ".join(p.info["cmdline"] or [])]
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not left, f"Ray processes left: {left}"
    sa = json.loads(proc.stdout)["secure_aggregation"]
    assert sa["rounds_secure"] == 2
    assert sa["phones"]["held_steps"] > 0 and sa["phones"]["completed"] >= 2 * 3
