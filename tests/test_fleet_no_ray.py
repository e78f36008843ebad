"""Without ``--ray`` the fleet never imports Ray (it is an optional dependency).

A fresh interpreter runs the multiprocessing fleet's whole path in-process (the CLI's
parser, the fleet, its worker loop against a server that is not there, for a second),
parses ``--ray`` into options, and then checks that ``ray`` is not among its modules.
"""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
from pathlib import Path
from fedkb.cli import build_parser
from fedkb.device_runtime import compute, worker
from fedkb.device_runtime.cli import ray_options
from fedkb.device_runtime.fleet import Fleet, FleetConfig
from fedkb.simulation import fleet_engine, fleet_run

args = build_parser().parse_args(["fleet", "--server", "http://127.0.0.1:9", "--data",
                                  sys.argv[1], "--devices", "3", "--ray", "auto"])
opts = ray_options(args.ray, args.ray_shards, args.ray_trainers)
assert opts is not None and opts.address == "auto", opts
assert ray_options(None) is None
summary = Fleet(FleetConfig("http://127.0.0.1:9", Path(sys.argv[1]), 3, workers=0,
                            duration_s=1.0)).run()
assert summary["phones"] == 3 and "ray" not in summary, summary
loaded = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
print("RAY_MODULES", loaded)
"""


def test_the_default_fleet_path_never_imports_ray(tiny_data):
    out = subprocess.run([sys.executable, "-c", CODE, str(tiny_data)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "RAY_MODULES []" in out.stdout, out.stdout
