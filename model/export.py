"""Export the next-word model as a LiteRT on-device training artifact.

An artifact directory holds::

    model.tflite   signatures train / evaluate / infer / get_weights / set_weights
                   (see :mod:`fedkb.model.signatures`), builtin ops only
    weights.safetensors  the initial weights (safetensors, named, canonical order recorded),
                   deterministic from a seed
    vocab.json     the model's vocabulary (JSON list, index = id), the dataset's capped at V
    metadata.json  self-description (written last: a directory without it is no artifact)

The layout, file names, format id and special tokens are the contract's
(:mod:`fedkb.artifact`); everyone reads an artifact with :class:`fedkb.artifact.Artifact`.

The converter may drop variable initial values (TF#98964), so the weights in
``model.tflite`` mean nothing: a user of the artifact always calls ``set_weights`` first.
An export that would need any Flex (``SELECT_TF_OPS``) or custom op is refused, naming
the op, before anything is written.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedkb.artifact import (
    MODEL_FILE,
    SPECIAL_TOKENS,
    VOCAB_FILE,
    WEIGHTS_FILE,
    initial_weights_file,
    sha256,
    write_artifact,
)
from fedkb.errors import UserError
from fedkb.model.config import ModelConfig
from fedkb.model.oplist import OpReport, op_report
from fedkb.model.weights import initial_weights, weight_specs

# The training graph's revision: same signatures and math, a different (faster) graph.
# 2: hoisted input projection, one-matmul recurrent gradient, SCATTER_ND embedding grad.
# 3: `train` takes `grad_clip` (per-step global-norm gradient clipping) and returns
#    `grad_norm`.
GRAPH_REVISION = 3


class FlexOpError(UserError):
    """The converted model needs ops that a stock LiteRT runtime does not have."""


@dataclass(frozen=True)
class ExportResult:
    out: Path
    config: ModelConfig
    num_params: int
    ops: OpReport
    sizes: dict[str, int]
    seconds: float


def convert(config: ModelConfig, weights: Sequence[np.ndarray] | None = None) -> bytes:
    """Build the Keras model and convert its training module to a ``.tflite`` flatbuffer."""
    import tensorflow as tf

    from fedkb.model.keras_model import build_model
    from fedkb.model.signatures import TrainingModule

    module = TrainingModule(build_model(config, weights))
    with tempfile.TemporaryDirectory(prefix="fedkb-export-") as tmp:
        tf.saved_model.save(module, tmp, signatures=module.concrete_signatures())
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.experimental_enable_resource_variables = True
        try:
            return converter.convert()
        except Exception as exc:  # the converter's error names the unsupported op
            raise FlexOpError(f"conversion with builtin ops only failed: {exc}") from exc


def require_builtin_only(model_bytes: bytes) -> OpReport:
    """The op report of a model; :class:`FlexOpError` naming the ops if any is not builtin."""
    report = op_report(model_bytes)
    if not report.builtin_only:
        raise FlexOpError("the model needs non-builtin (Flex/custom) ops: "
                          + ", ".join(report.non_builtin) + "; refusing to write it")
    return report


def _signature_io(model_bytes: bytes) -> dict[str, Any]:
    """Input/output names, shapes and dtypes of every signature, read back with LiteRT."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model_bytes)
    out: dict[str, Any] = {}
    for name in interp.get_signature_list():
        runner = interp.get_signature_runner(name)

        def describe(details: dict[str, dict]) -> list[dict[str, Any]]:
            return [{"name": k, "shape": [int(d) for d in v["shape"]],
                     "dtype": np.dtype(v["dtype"]).name} for k, v in sorted(details.items())]

        out[name] = {"inputs": describe(runner.get_input_details()),
                     "outputs": describe(runner.get_output_details())}
    return out


def export_artifact(config: ModelConfig, vocab: Sequence[str], out: str | Path,
                    seed: int | None = None, data_info: dict[str, Any] | None = None,
                    ) -> ExportResult:
    """Convert ``config`` and write a complete artifact directory to ``out``.

    Args:
        config: the model configuration, already fitted to the data
            (:meth:`ModelConfig.fit_to_data`); ``config.vocab_size`` words are kept.
        vocab: the dataset's words (index = id; starting with the special tokens).
        out: the artifact directory (created; existing artifact files are replaced).
        seed: seed of the initial weights (default ``config.seed``).
        data_info: what to record about the source dataset.
    """
    import tensorflow as tf

    t0 = time.perf_counter()
    if tuple(vocab[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
        raise UserError(f"the vocabulary must start with {SPECIAL_TOKENS}")
    if len(vocab) < config.vocab_size:
        raise UserError(f"the vocabulary has {len(vocab)} words, the model wants "
                        f"{config.vocab_size}")
    seed = config.seed if seed is None else seed
    config = config.replace(seed=seed)
    weights = initial_weights(config, seed)
    model_bytes = convert(config, weights)
    ops = require_builtin_only(model_bytes)
    signatures = _signature_io(model_bytes)

    specs = weight_specs(config)
    files = {
        MODEL_FILE: model_bytes,
        WEIGHTS_FILE: initial_weights_file(specs, weights),
        VOCAB_FILE: json.dumps(list(vocab[: config.vocab_size]),
                               ensure_ascii=False).encode("utf-8"),
    }
    seconds = time.perf_counter() - t0
    meta = {
        "graph_revision": GRAPH_REVISION,
        "preset": config.name,
        "config": config.to_dict(),
        "num_params": sum(s.size for s in specs),
        "vocab_size": config.vocab_size,
        "seq_len": config.seq_len,
        "batch_size": config.batch_size,
        "infer_batch": config.infer_batch,
        "infer_k": config.infer_k,
        "seed": seed,
        "special_tokens": {name: i for i, name in enumerate(SPECIAL_TOKENS)},
        "vocab": {"file": VOCAB_FILE, "size": config.vocab_size,
                  "sha256": sha256(files[VOCAB_FILE])},
        "weights": [s.to_json() for s in specs],
        "signatures": signatures,
        "ops": ops.counts,
        "builtin_only": ops.builtin_only,
        "data": data_info or {},
        "export_seconds": round(seconds, 3),
        "tensorflow_version": tf.__version__,
    }
    out = Path(out)
    (out / "weights.bin").unlink(missing_ok=True)  # the initial weights of format 1
    art = write_artifact(out, meta, files)
    return ExportResult(out, config, int(art.meta["num_params"]), ops,
                        {n: len(b) for n, b in files.items()}, seconds)


def export_from_dataset(preset: ModelConfig, data_dir: str | Path, out: str | Path,
                        seed: int | None = None) -> ExportResult:
    """Export ``preset`` for a prepared dataset: V from its vocab (capped), T from its data."""
    from fedkb.datasets.store import Dataset

    try:
        ds = Dataset.open(data_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    vocab = list(ds.vocab.words)
    config = preset.fit_to_data(len(vocab), ds.seq_len)
    info = {"path": str(Path(data_dir).resolve()), "vocab_size": len(vocab),
            "vocab_sha256": ds.vocab.sha256, "seq_len": ds.seq_len,
            "preset_seq_len": preset.seq_len, "preset_vocab_size": preset.vocab_size}
    return export_artifact(config, vocab, out, seed=seed, data_info=info)
