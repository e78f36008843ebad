"""The server's half of compression: the plan it asks for, and the float16 downlink.

:func:`with_compression` writes the ``[compression]`` table into a training round's
:class:`~fedkb.wire.Plan` (the uplink encoding, the rotation, the downlink dtype);
:meth:`fedkb.server.tasks.TaskBook.assign` gives each rotating task its own rotation
seed, stored with the task, which is how the server knows it when the upload comes
(:func:`fedkb.plan_codec.decode_delta`, outside the round lock). Evaluation
rounds keep a plain plan: a held-out phone evaluates the exact float32 model and
uploads no update.

:class:`Float16Weights` serves ``GET /v1/models/<v>/weights?dtype=float16``: the
version's weights rounded to float16 once (codec bytes, their SHA-256 the ETag), for the
few newest versions. The server's own model, its optimizer and every fold stay float32.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections import OrderedDict
from typing import Any

from fedkb.codec import encode_arrays
from fedkb.plan_codec import float16_weights
from fedkb.server.checkpoints import Checkpoint
from fedkb.server.config import CompressionConfig
from fedkb.server.rounds import RoundStats
from fedkb.wire import Plan

KEPT_VERSIONS = 3


def round_bytes(stats: RoundStats) -> dict[str, int]:
    """A round's bytes on the wire: its uploads' total and median Content-Length, and
    the total its reporting phones downloaded."""
    up = sorted(stats.upload_bytes)
    return {"upload_bytes": sum(up), "uploads": len(up),
            "upload_bytes_median": up[len(up) // 2] if up else 0,
            "download_bytes": stats.download_bytes}


def communication_status(cfg: CompressionConfig, last_round: dict[str, int],
                         raw_update_bytes: int | None) -> dict[str, Any]:
    """The ``communication`` object of ``GET /v1/status``: the encodings in force, the
    last committed training round's bytes, and a float32 update's size to compare."""
    return {"encoding": cfg.label, "downlink": cfg.downlink, "last_round": last_round,
            "float32_update_bytes": raw_update_bytes}


def with_compression(plan: Plan, cfg: CompressionConfig) -> Plan:
    """``plan`` asking for ``cfg``'s encodings (training plans only)."""
    if plan.kind != "train":
        return plan
    return dataclasses.replace(plan, uplink=cfg.uplink, rotate=cfg.rotate,
                               downlink=cfg.downlink, min_elements=cfg.min_elements)


class Float16Weights:
    """Float16 codec bytes of recent versions' weights, and their SHA-256."""

    def __init__(self, kept: int = KEPT_VERSIONS) -> None:
        self._kept = kept
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, str], tuple[bytes, str]] = OrderedDict()

    def get(self, ckpt: Checkpoint) -> tuple[bytes, str]:
        key = (ckpt.version, ckpt.sha256)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        data = encode_arrays(float16_weights(ckpt.weights))
        entry = (data, hashlib.sha256(data).hexdigest())
        with self._lock:
            self._cache[key] = entry
            while len(self._cache) > self._kept:
                self._cache.popitem(last=False)
        return entry
