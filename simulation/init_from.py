"""`--init-from`: start federated training from a model trained on another corpus.

Gboard-style production pretrains on public data and fine-tunes with federated learning.
The source is a model with its vocabulary:

- a model artifact directory (``metadata.json``): its ``weights.safetensors``, e.g. the
  ``model-central/`` the demo writes with its central model's weights;
- a server state directory (``checkpoints/`` + ``artifact/``, e.g. a demo's
  ``federated/server-state``): its newest checkpoint;
- one checkpoint file ``.../checkpoints/vNNNNNN.safetensors`` of such a directory.

The target is the artifact exported for the new corpus (its preset must have the same
shapes apart from the vocabulary). Weights that do not depend on the vocabulary are
copied; the embedding's and the output bias's rows are copied for every word both
vocabularies have (special tokens included) and keep the target's seeded initial values
for new words. The result is a new artifact (same graph, same config) whose initial
weights are the mapped ones: the server's version 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedkb.errors import UserError

VOCAB_WEIGHTS = ("embedding", "output_bias")  # indexed by word id in their first axis


@dataclass(frozen=True)
class Source:
    words: list[str]
    weights: dict[str, np.ndarray]
    where: str


def read_source(path: str | Path) -> Source:
    """The weights and vocabulary at ``path`` (see the module docstring)."""
    from fedkb.artifact import Artifact, ArtifactError
    from fedkb.tensorfile import decode_weights

    p = Path(path)
    try:
        if p.is_dir() and (p / "metadata.json").is_file():
            art = Artifact.load(p)
            return Source(art.vocab(), dict(zip(art.weight_names, art.initial_weights(),
                                                strict=True)), f"artifact {p}")
        ckpt = None
        if p.is_dir() and (p / "checkpoints").is_dir() and (p / "artifact").is_dir():
            ckpts = sorted((p / "checkpoints").glob("v*.safetensors"))
            if not ckpts:
                raise UserError(f"--init-from {p}: no checkpoint in {p / 'checkpoints'}")
            ckpt, art_dir = ckpts[-1], p / "artifact"
        elif p.is_file() and p.suffix == ".safetensors":
            ckpt, art_dir = p, p.parent.parent / "artifact"
        if ckpt is None:
            raise UserError(f"--init-from {p}: not a model artifact, a server state "
                            "directory or a checkpoint file")
        art = Artifact.load(art_dir)
        weights, _, _ = decode_weights(art.specs, ckpt.read_bytes())
    except (ArtifactError, OSError, ValueError) as exc:
        raise UserError(f"--init-from {p}: {exc}") from None
    return Source(art.vocab(), dict(zip(art.weight_names, weights, strict=True)),
                  f"checkpoint {ckpt}")


def map_weights(src: Source, words: list[str], names: list[str],
                initial: list[np.ndarray]) -> tuple[list[np.ndarray], dict[str, Any]]:
    """The target's weights (``names`` order) with ``src``'s values mapped onto ``words``."""
    rows = min(len(a) for n, a in src.weights.items() if n in VOCAB_WEIGHTS) \
        if any(n in src.weights for n in VOCAB_WEIGHTS) else len(src.words)
    index = {w: i for i, w in enumerate(src.words[:rows])}  # words the weights hold
    dst_ids = np.array([i for i, w in enumerate(words) if w in index], np.int64)
    src_ids = np.array([index[words[i]] for i in dst_ids], np.int64)
    out = []
    for name, init in zip(names, initial, strict=True):
        if name not in src.weights:
            raise UserError(f"--init-from {src.where}: it has no weight {name!r} "
                            "(another model preset?)")
        have = src.weights[name]
        if name in VOCAB_WEIGHTS:
            if have.shape[1:] != init.shape[1:]:
                raise UserError(f"--init-from {src.where}: {name} is {have.shape}, the "
                                f"model needs (V, {init.shape[1:]}): another model preset?")
            w = np.array(init, np.float32, copy=True)
            w[dst_ids] = have[src_ids]
        elif have.shape != init.shape:
            raise UserError(f"--init-from {src.where}: {name} is {have.shape}, the model "
                            f"needs {init.shape} (use the same --preset)")
        else:
            w = np.asarray(have, np.float32)
        out.append(w)
    stats = {"source": src.where, "source_words": len(src.words), "words": len(words),
             "shared_words": len(dst_ids), "new_words": len(words) - len(dst_ids)}
    return out, stats


def init_artifact(target: Path, source: str | Path, out: Path) -> tuple[Path, dict[str, Any]]:
    """Write into ``out`` the artifact ``target`` with initial weights mapped from
    ``source``; returns its path and the mapping's figures (also in its metadata)."""
    from fedkb.artifact import METADATA_FILE, Artifact, initial_weights_file, write_artifact

    art = Artifact.load(target)
    weights, stats = map_weights(read_source(source), art.vocab(), art.weight_names,
                                 art.initial_weights())
    files = {n: f.data for n, f in art.files.items() if n != METADATA_FILE}
    files[art.meta["weights_file"]] = initial_weights_file(art.specs, weights)
    meta = {k: v for k, v in art.meta.items() if k != "files"}
    meta["init_from"] = stats
    write_artifact(out, meta, files)
    return out, stats


def save_as_artifact(template: Path, weights: list[np.ndarray], out: Path) -> Path:
    """``template`` (an artifact) with ``weights`` as its initial weights, written to
    ``out``: how the demo keeps its central model for a later ``--init-from``."""
    from fedkb.artifact import METADATA_FILE, Artifact, initial_weights_file, write_artifact

    art = Artifact.load(template)
    files = {n: f.data for n, f in art.files.items() if n != METADATA_FILE}
    files[art.meta["weights_file"]] = initial_weights_file(art.specs, weights)
    write_artifact(out, {k: v for k, v in art.meta.items() if k != "files"}, files)
    return out


def warm_artifact(data: Path, preset: str, artifact: Path, source: str | Path) -> Path:
    """The export of ``preset`` for ``data`` at ``artifact`` (made if missing), warm-started
    from ``source`` into ``artifact-init`` next to it (what `simulate --init-from` runs)."""
    from fedkb.simulation.fleet_engine import ensure_artifact

    base = ensure_artifact(Path(data), preset, Path(artifact))
    out, _ = init_artifact(base, source, base.parent / f"{base.name}-init")
    return out
