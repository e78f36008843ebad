"""The layers of ARCHITECTURE.md, checked: every ``fedkb`` import in every module points
down (or sideways where the table allows it), and TensorFlow appears only in ``model``
and ``simulation``.

Imports are read with :mod:`ast` from the source files, at module level and inside
functions alike (a lazy import is still a dependency), so nothing is imported here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# folder -> its import package; the contract layer is the folder named `fedkb`
PACKAGES = {"fedkb": "fedkb", "datasets": "fedkb.datasets", "model": "fedkb.model",
            "device_runtime": "fedkb.device_runtime", "server": "fedkb.server",
            "simulation": "fedkb.simulation"}

# which layers each layer may import (itself always)
ALLOWED = {
    "fedkb": {"fedkb"},
    "datasets": {"fedkb"},
    # `fedkb model check` runs the phones' LiteRT engine against Keras
    "model": {"fedkb", "datasets", "device_runtime"},
    "device_runtime": {"fedkb", "datasets"},
    # the prediction endpoint runs the phones' LiteRT engine (device_runtime.trainer)
    "server": {"fedkb", "datasets", "device_runtime"},
    "simulation": {"fedkb", "datasets", "model", "device_runtime", "server"},
}
TENSORFLOW = ("tensorflow", "tensorflow_federated", "keras")
TF_ALLOWED = {"model", "simulation"}
# the CLI sits on top of everything: it only names the area modules (as strings)
TOP_OF_GRAPH = {ROOT / "fedkb" / "cli.py", ROOT / "fedkb" / "__main__.py"}


def layer_of(module: str) -> str | None:
    """The layer (folder) of a ``fedkb...`` module name; None if not ours."""
    if module != "fedkb" and not module.startswith("fedkb."):
        return None
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in PACKAGES and parts[1] != "fedkb":
        return parts[1]
    return "fedkb"


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
            # `from fedkb import wire` names a module of the contract layer
            if node.module == "fedkb":
                out += [f"fedkb.{a.name}" for a in node.names]
    return out


def modules() -> list[tuple[str, Path]]:
    return [(folder, p) for folder in PACKAGES for p in sorted((ROOT / folder).rglob("*.py"))]


def test_every_layer_folder_has_modules():
    found = {folder for folder, _ in modules()}
    assert found == set(PACKAGES)


@pytest.mark.parametrize("folder,path", modules(), ids=lambda x: str(x))
def test_imports_point_down(folder, path):
    if path in TOP_OF_GRAPH:
        return
    bad = [m for m in imports(path)
           if (layer := layer_of(m)) is not None and layer != folder
           and layer not in ALLOWED[folder]]
    assert not bad, f"{path.relative_to(ROOT)} ({folder}) imports {bad} against the layers"
    if folder not in TF_ALLOWED:
        tf = [m for m in imports(path) if m.split(".")[0] in TENSORFLOW]
        assert not tf, f"{path.relative_to(ROOT)} imports {tf}: no TensorFlow in {folder}"


def test_the_checker_sees_a_violation(tmp_path):
    """The rule is not vacuous: a device module importing the server would be caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from fedkb.server.app import create_app\n"
                   "    import tensorflow as tf\n")
    found = imports(bad)
    assert "fedkb.server.app" in found and "tensorflow" in found
    assert layer_of("fedkb.server.app") not in ALLOWED["device_runtime"]
    assert layer_of("fedkb.wire") == "fedkb" and layer_of("numpy") is None
