"""``fedkb predict``: next-word suggestions from a running server or a local artifact.

::

    fedkb predict "to be or not to " --server http://127.0.0.1:8000 [-k 3] [--json]
    fedkb predict "to be or not to b" --model ARTIFACT_DIR [--weights FILE] [-k 3] [--json]

``--server`` posts to ``/v1/predict``; ``--model`` loads an exported artifact with the
LiteRT interpreter in this process (no TensorFlow), with the artifact's initial weights
or ``--weights``: a ``.safetensors`` file such as the server's
``STATE_DIR/checkpoints/latest.safetensors`` (its ``state.*`` tensors are ignored), or a
weights file as served by ``/v1/models/<v>/weights`` (fedkb codec). Text ending
in a space asks for the next word; text ending inside a word asks for completions of
it. ``--json`` prints the endpoint's JSON; otherwise one line of suggestions, each with
its model probability (or ``freq`` when it was ranked by corpus frequency).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fedkb.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="next-word suggestions (server or local artifact)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", help="the typed text (end it with a space for the next word)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", help="server URL, e.g. http://127.0.0.1:8000")
    where.add_argument("--model", type=Path, help="exported artifact directory (LiteRT)")
    p.add_argument("--weights", type=Path, default=None,
                   help="with --model: weights instead of the initial ones (.safetensors, "
                   "e.g. a server checkpoint, or a /v1/models/<v>/weights download)")
    p.add_argument("-k", type=int, default=3, help="number of suggestions (1..10, default 3)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def _from_server(url: str, text: str, k: int) -> dict[str, Any]:
    import requests

    try:
        resp = requests.post(url.rstrip("/") + "/v1/predict", json={"text": text, "k": k},
                             timeout=30)
    except requests.RequestException as exc:
        raise UserError(f"cannot reach {url}: {exc}") from exc
    try:
        body = resp.json()
    except ValueError as exc:
        raise UserError(f"{url} answered HTTP {resp.status_code} without JSON") from exc
    if not resp.ok:
        err = body.get("error", {}) if isinstance(body, dict) else {}
        raise UserError(f"{url}: {err.get('code', resp.status_code)}: "
                        f"{err.get('message', resp.text[:200])}")
    return body


def _read_weights(path: Path) -> list[Any] | dict[str, Any]:
    """Weights from a safetensors file (by name) or a codec file (in order)."""
    from fedkb.codec import decode_arrays
    from fedkb.server.checkpoints import STATE_PREFIX
    from fedkb.tensorfile import decode_tensors

    data = path.read_bytes()
    if path.suffix == ".safetensors":
        tensors, _ = decode_tensors(data)
        return {k: v for k, v in tensors.items() if not k.startswith(STATE_PREFIX)}
    return decode_arrays(data)


def _local(model: Path, weights: Path | None, text: str, k: int) -> dict[str, Any]:
    from fedkb.artifact import ArtifactError
    from fedkb.codec import CodecError
    from fedkb.server.config import PredictConfig
    from fedkb.server.errors import ApiError
    from fedkb.server.predictor import Engine, check_request
    from fedkb.weights import WeightsError

    cfg = PredictConfig(interpreters=1)
    try:
        check_request(text, k, cfg)
        w = _read_weights(weights) if weights is not None else None
        engine = Engine.from_dir(model, w, cfg)
    except ApiError as exc:
        raise UserError(exc.message) from exc
    except (OSError, ArtifactError, WeightsError, CodecError, KeyError, ValueError) as exc:
        raise UserError(f"cannot load {model}: {exc}") from exc
    return engine.predict(text, k).to_json()


def run(args: argparse.Namespace) -> int:
    if args.weights is not None and args.model is None:
        raise UserError("--weights goes with --model")
    body = (_from_server(args.server, args.text, args.k) if args.server
            else _local(args.model, args.weights, args.text, args.k))
    if args.json:
        print(json.dumps(body))
        return 0
    words = [f"{s['word']} ({'freq' if s['p'] is None else format(s['p'], '.3f')})"
             for s in body["suggestions"]]
    version = body.get("model_version")
    head = f"model v{version}" if version is not None else "local model"
    print(f"{head}: {'  '.join(words) if words else '(no suggestions)'}")
    return 0
