"""The weights contract: one weight spec, one check, one error with a stable reason code.

A model's weights are an ordered list of named float32 tensors. :class:`WeightSpec` names
one of them; the artifact's ``metadata.json`` lists them in the canonical order (the
order of the LiteRT ``set_weights`` inputs, of server checkpoints and of device updates).
:func:`check_weights` is the one gate every weight list passes before it is used: the
device before ``set_weights``, the server before it folds an upload, the artifact reader
for its initial weights. Its :class:`WeightsError` carries a stable ``reason`` code
(:data:`REASONS`) that the server maps to its HTTP error codes.

NumPy and the standard library only: a phone imports this.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

BAD_COUNT = "bad_count"  # not as many arrays as specs
BAD_NAME = "bad_name"  # by name: a spec's name missing, or a name no spec has
NOT_ARRAY = "not_array"  # an element that is not a NumPy array
BAD_DTYPE = "bad_dtype"  # not the spec's dtype (float32)
BAD_SHAPE = "bad_shape"  # not the spec's shape
NON_FINITE = "non_finite"  # a NaN or an infinity
REASONS = (BAD_COUNT, BAD_NAME, NOT_ARRAY, BAD_DTYPE, BAD_SHAPE, NON_FINITE)


class WeightsError(ValueError):
    """Weights that do not fit the model. ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class WeightSpec:
    """One weight tensor: its name (a valid identifier, used as a signature key) and shape."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize

    def to_json(self) -> dict[str, Any]:
        """The entry of ``metadata.json["weights"]``."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, rec: Mapping[str, Any]) -> WeightSpec:
        """Inverse of :meth:`to_json` (``dtype`` defaults to float32)."""
        return cls(str(rec["name"]), tuple(int(d) for d in rec["shape"]),
                   str(rec.get("dtype", "float32")))


def specs_from_json(records: Sequence[Mapping[str, Any]]) -> tuple[WeightSpec, ...]:
    """Weight specs from ``metadata.json["weights"]``, in order."""
    return tuple(WeightSpec.from_json(r) for r in records)


def check_weights(specs: Sequence[WeightSpec],
                  weights: Sequence[np.ndarray] | Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Validate weights against ``specs``; returns them as C-contiguous arrays, in order.

    Accepts a sequence in spec order or a mapping keyed by weight name. Refuses, with a
    :class:`WeightsError` naming the offending weight, a wrong count (``bad_count``),
    missing or unexpected names (``bad_name``), a non-array (``not_array``), a dtype other
    than the spec's (``bad_dtype``, float32 is never cast), a wrong shape (``bad_shape``)
    and any NaN or infinity (``non_finite``). Structure is checked for every weight before
    values are, so a malformed list is reported as such even when it also holds a NaN.
    """
    if isinstance(weights, Mapping):
        missing = [s.name for s in specs if s.name not in weights]
        extra = sorted(set(weights) - {s.name for s in specs})
        if missing or extra:
            raise WeightsError(BAD_NAME, f"weights by name: missing {missing}, "
                                         f"unexpected {extra}")
        weights = [weights[s.name] for s in specs]
    weights = list(weights)
    if len(weights) != len(specs):
        raise WeightsError(BAD_COUNT, f"expected {len(specs)} weight arrays "
                                      f"({', '.join(s.name for s in specs)}), got {len(weights)}")
    for spec, w in zip(specs, weights, strict=True):
        if not isinstance(w, np.ndarray):
            raise WeightsError(NOT_ARRAY, f"weight {spec.name!r}: expected a NumPy array, "
                                          f"got {type(w).__name__}")
        if w.dtype != np.dtype(spec.dtype):
            raise WeightsError(BAD_DTYPE, f"weight {spec.name!r}: dtype {w.dtype}, "
                                          f"expected {spec.dtype}")
        if tuple(w.shape) != tuple(spec.shape):
            raise WeightsError(BAD_SHAPE, f"weight {spec.name!r}: shape {tuple(w.shape)}, "
                                          f"expected {tuple(spec.shape)}")
    for spec, w in zip(specs, weights, strict=True):
        finite = np.isfinite(w)
        if not finite.all():
            bad = int(finite.size - np.count_nonzero(finite))
            raise WeightsError(NON_FINITE, f"weight {spec.name!r}: {bad} non-finite value(s)")
    return [np.ascontiguousarray(w) for w in weights]


__all__ = ["REASONS", "WeightSpec", "WeightsError", "check_weights", "specs_from_json"]
