"""TFF's DP-FedAvg aggregator on given client deltas: the reference the server's DP stage
is tested against (``tests/test_dp_tff_reference.py``).

``python -m fedkb.simulation.tff_dp_reference SPEC OUT`` reads a JSON spec (``shapes``,
``clients``: each client's arrays as flat lists, ``z``, ``m``, ``clip``), aggregates the
clients with ``tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(z, m, clip)``
(TF Privacy's ``GaussianSumQuery`` clipped to ``clip``, normalised by ``m``: the
aggregation of TFF's unweighted DP FedAvg) and writes ``{"result": [...]}``. Run it with
:func:`run_isolated`: TFF's ``worker_binary`` outlives the process that started it, so it
runs in a process group that is always killed (see :mod:`.tff_engine`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_isolated(spec: dict[str, Any], workdir: Path, timeout: float = 300) -> list:
    """The TFF aggregate of ``spec``'s clients, computed in a child process group."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, out_path = workdir / "dp_spec.json", workdir / "dp_out.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(workdir / "tff_dp.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedkb.simulation.tff_dp_reference", str(spec_path),
             str(out_path)], start_new_session=True, env=env, stdout=log, stderr=log,
            stdin=subprocess.DEVNULL)
        try:
            rc = proc.wait(timeout=timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if rc != 0 or not out_path.exists():
        tail = (workdir / "tff_dp.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"TFF DP reference failed (exit {rc}):\n{tail}")
    return json.loads(out_path.read_text(encoding="utf-8"))["result"]


def main(spec_path: str, out_path: str) -> None:
    import numpy as np
    import tensorflow_federated as tff

    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    shapes = [tuple(s) for s in spec["shapes"]]
    clients = [[np.asarray(a, np.float32).reshape(s) for a, s in zip(c, shapes, strict=True)]
               for c in spec["clients"]]
    factory = tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
        noise_multiplier=spec["z"], clients_per_round=spec["m"], clip=spec["clip"])
    process = factory.create(tff.types.to_type([tff.TensorType(np.float32, s)
                                                for s in shapes]))
    out = process.next(process.initialize(), clients)
    Path(out_path).write_text(json.dumps({"result": [np.asarray(a).tolist()
                                                     for a in out.result]}), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
