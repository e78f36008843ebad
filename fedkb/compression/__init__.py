"""Compression stages of the aggregation pipeline (ARCHITECTURE.md, "Where
extensions plug in"), as pure NumPy function pairs a phone (encode) and the server
(decode, fold) both run:

- :mod:`~fedkb.compression.quantize`: b-bit stochastic quantization on per-chunk grids
  (private min/max, or shared ``[-R, R]`` for integer folds);
- :mod:`~fedkb.compression.rotate`: randomized Hadamard rotation in power-of-two blocks;
- :mod:`~fedkb.compression.field`: shared-grid codes as residues mod 2^k for secure
  aggregation, with the headroom that keeps the sum exact;
- :mod:`~fedkb.compression.encoding`: the versioned, self-describing encoded update.

:mod:`fedkb.plan_codec` (outside this package, which imports nothing else of fedkb)
applies a task plan's encoding: the phone's ``encode_delta``, the server's
``decode_delta``, and the float16 downlink.

NumPy and the standard library only, so a phone can import it.
"""

from fedkb.compression.encoding import (
    EncodeReport,
    Encoding,
    EncodingError,
    decode_update,
    encode_update,
    encode_update_measured,
)
from fedkb.compression.field import FieldOverflowError, decode_sum, modulus_bits, sum_mod
from fedkb.compression.quantize import (
    Grid,
    QuantizedTensor,
    codes_to_ints,
    dequantize,
    dequantize_sum,
    minmax_grid,
    quantize,
    shared_grid,
)
from fedkb.compression.rotate import rotate, rotated_length, unrotate

__all__ = [
    "EncodeReport", "Encoding", "EncodingError", "FieldOverflowError", "Grid",
    "QuantizedTensor", "codes_to_ints", "decode_sum", "decode_update", "dequantize",
    "dequantize_sum", "encode_update", "encode_update_measured", "minmax_grid",
    "modulus_bits", "quantize", "rotate", "rotated_length", "shared_grid", "sum_mod",
    "unrotate",
]
