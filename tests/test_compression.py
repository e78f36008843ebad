"""The compression stages (fedkb.compression): unbiasedness, error bounds, rotation,
field sums, the encoded update's refusals and its size. NumPy only, fast.

Statistical tests state their bound. For the mean of K independent stochastic roundings
of one value, each rounding error lies in an interval of width ``step``, so Hoeffding
gives ``P(|mean error| >= t) <= 2 exp(-2 K t^2 / step^2)``. Writing ``t = c * sigma /
sqrt(K)`` with ``sigma = step / 2`` (the largest rounding std) makes that
``2 exp(-c^2 / 2)``; a union bound over ``d`` elements and ``c = sqrt(2 ln(2 d / delta))``
keeps the chance of a false failure below ``delta = 1e-6``.
"""

from __future__ import annotations

import ast
import math
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from fedkb.compression import field
from fedkb.compression.encoding import (
    REASONS,
    Encoding,
    EncodingError,
    decode_update,
    encode_update,
    encode_update_measured,
)
from fedkb.compression.quantize import (
    BITS,
    codes_to_ints,
    dequantize,
    dequantize_sum,
    levels,
    minmax_grid,
    pack_codes,
    quantize,
    shared_grid,
    unpack_codes,
)
from fedkb.compression.rotate import block_sizes, fwht_, rotate, rotated_length, signs, unrotate

DELTA = 1e-6
SMALL_SHAPES = [(10000, 96), (96, 1024), (256, 1024), (1024,), (256, 96), (96,), (10000,)]


def element_steps(grid) -> np.ndarray:
    return np.repeat(grid.scale.astype(np.float64), grid.chunk)[: grid.n]


def mean_error_within_hoeffding(x, bits, chunk, K, rng, **kw) -> tuple[bool, float]:
    """Whether the mean of K encodings of x is within the Hoeffding bound of x; worst ratio."""
    acc = np.zeros(x.size, dtype=np.float64)
    for _ in range(K):
        q = quantize(x, bits, chunk, rng, **kw)
        acc += dequantize(q)
    step = element_steps(q.grid)
    c = math.sqrt(2 * math.log(2 * x.size / DELTA))
    bound = c * (step / 2) / math.sqrt(K)
    ratio = float(np.max(np.abs(acc / K - x) / bound))
    return ratio <= 1.0, ratio


@pytest.mark.parametrize("bits", BITS)
def test_stochastic_rounding_is_unbiased(bits):
    rng = np.random.default_rng(bits)
    x = rng.standard_normal(4096).astype(np.float32)
    ok, ratio = mean_error_within_hoeffding(x, bits, 2048, 2000, rng)
    assert ok, f"mean of 2000 encodings is {ratio:.2f}x the 1e-6 bound away"


def test_unbiasedness_test_catches_biased_rounding():
    # every value sits a quarter step above a grid point (min and max pin the grid), so
    # round-to-nearest is off by -step/4 everywhere: ~3.3x the bound at K = 2000
    bits, chunk, d = 2, 2048, 4096
    step = 1.0
    k = np.arange(d) % levels(bits)
    x = (k + 0.25) * step
    x[::chunk] = 0.0
    x[1::chunk] = levels(bits) * step
    x = x.astype(np.float32)
    rng = np.random.default_rng(1)
    ok, ratio = mean_error_within_hoeffding(x, bits, chunk, 2000, rng, rounding="nearest")
    assert not ok and ratio > 2, ratio
    ok, ratio = mean_error_within_hoeffding(x, bits, chunk, 2000, rng)
    assert ok, ratio


def test_shared_grid_is_unbiased_inside_its_range_and_counts_clipping():
    rng = np.random.default_rng(3)
    x = rng.uniform(-0.9, 0.9, 4096).astype(np.float32)
    grid = shared_grid(x.size, 4, 1.0, 2048)
    ok, ratio = mean_error_within_hoeffding(x, 4, 2048, 1000, rng, grid=grid)
    assert ok, ratio
    y = x.copy()
    y[:10] = 5.0
    q = quantize(y, 4, 2048, rng, grid=grid)
    assert q.clipped == 10
    assert np.all(dequantize(q)[:10] == pytest.approx(1.0, abs=1e-6))


@pytest.mark.parametrize("bits", BITS)
def test_one_encoding_error_within_theoretical_bound(bits):
    rng = np.random.default_rng(10 + bits)
    x = rng.standard_normal(50_000).astype(np.float32)
    x[rng.integers(0, x.size, 20)] *= 30  # outliers widen some chunks' grids
    q = quantize(x, bits, 2048, rng)
    step = element_steps(q.grid)
    err = dequantize(q).astype(np.float64) - x
    assert np.all(np.abs(err) <= step * (1 + 1e-5))  # less than one step per element
    assert np.mean(err**2) <= np.mean(step**2) / 4  # E[err^2] = step^2 p(1-p) <= step^2/4


@pytest.mark.parametrize("bits", BITS)
def test_pack_unpack_dense(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, 1001).astype(np.uint8)
    packed = pack_codes(codes, bits)
    assert packed.size == math.ceil(1001 * bits / 8)
    assert np.array_equal(unpack_codes(packed, bits, 1001), codes)
    if bits == 2:  # lowest bits first: codes 1, 2, 3, 0 -> 0b00_11_10_01
        assert pack_codes(np.array([1, 2, 3, 0], np.uint8), 2).tolist() == [0b00111001]


def test_constant_chunk_is_exact():
    x = np.full(3000, 0.5, np.float32)
    q = quantize(x, 2, 2048, np.random.default_rng(0))
    assert np.array_equal(dequantize(q), x)


def test_fwht_matches_the_hadamard_matrix_and_is_self_inverse():
    m = 16
    h = np.array([[1.0]])
    while h.shape[0] < m:
        h = np.block([[h, h], [h, -h]])
    x = np.random.default_rng(0).standard_normal((3, m))
    got = fwht_(x.copy())
    assert np.allclose(got, x @ h.T / math.sqrt(m))
    assert np.allclose(fwht_(got.copy()), x)


@pytest.mark.parametrize("n,max_block", [(1, 1024), (5, 1024), (2048, 1024), (5000, 1024),
                                         (70_003, 1 << 16)])
def test_rotation_is_orthonormal_and_exactly_invertible(n, max_block):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    y = rotate(x, seed=2**64 - 1, stream=3, max_block=max_block)
    assert y.size == rotated_length(n, max_block)
    nx = np.linalg.norm(x.astype(np.float64))
    assert abs(np.linalg.norm(y.astype(np.float64)) - nx) <= 1e-5 * nx
    back = unrotate(y, n, seed=2**64 - 1, stream=3, max_block=max_block)
    assert np.linalg.norm((back - x).astype(np.float64)) <= 1e-5 * nx
    if n > 1:
        other = unrotate(y, n, seed=2**64 - 2, stream=3, max_block=max_block)
        assert np.linalg.norm((other - x).astype(np.float64)) > 0.5 * nx


def test_blocks_keep_padding_small():
    assert block_sizes(960_000) == [65536] * 14 + [65536]  # tail 42,496 -> 65,536
    assert rotated_length(960_000) == 983_040  # TFF's whole-vector padding: 1,048,576
    assert rotated_length(98_304) == 98_304 and block_sizes(98_304) == [65536, 32768]
    assert rotated_length(1000, 256) == 1024


def test_signs_are_a_fixed_function_of_the_seed():
    # a change in NumPy's PCG64 stream or in the derivation breaks phone/server agreement
    assert signs(42, 16).astype(int).tolist() == [1, -1, -1, 1, -1, 1, -1, 1,
                                                  1, -1, 1, 1, -1, 1, -1, -1]
    assert not np.array_equal(signs(42, 64, stream=1), signs(42, 64))


def test_rotation_reduces_quantization_error_with_outliers():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(1 << 16).astype(np.float32)
    x[rng.choice(x.size, 32, replace=False)] = 100.0
    plain = np.mean((dequantize(quantize(x, 4, 2048, rng)) - x) ** 2)
    y = rotate(x, seed=9)
    rotated = unrotate(dequantize(quantize(y, 4, 2048, rng)), x.size, seed=9)
    mse_rot = np.mean((rotated - x) ** 2)
    assert mse_rot < 0.25 * plain, (mse_rot, plain)  # measured: 0.025-0.032x over 5 seeds


def test_modulus_bits_is_the_smallest_exact_headroom():
    for bits in BITS:
        for n in range(1, 300):
            k = field.modulus_bits(bits, n)
            minimal = (n * levels(bits)).bit_length()  # ceil(log2(n L + 1))
            assert n * levels(bits) < 2**k and minimal <= k <= minimal + 1
    assert field.modulus_bits(8, 1) == 8 and field.modulus_bits(8, 4) == 10
    assert field.modulus_bits(8, 5) == 11 and field.modulus_bits(2, 1000) == 12


def _shared_updates(n, bits, d, rng):
    grid = shared_grid(d, bits, 1.0, 2048)
    xs = [rng.uniform(-1, 1, d).astype(np.float32) for _ in range(n)]
    return grid, [quantize(x, bits, 2048, rng, grid=grid) for x in xs]


@pytest.mark.parametrize("bits,n", [(8, 37), (4, 1000), (2, 3)])
def test_field_sum_equals_integer_sum_even_under_masks(bits, n):
    rng = np.random.default_rng(n)
    d = 5000
    grid, qs = _shared_updates(n, bits, d, rng)
    k = field.modulus_bits(bits, n)
    plain = sum(codes_to_ints(q) for q in qs)
    residues = [field.encode(q, k) for q in qs]
    assert np.array_equal(field.sum_mod(residues, k).astype(np.int64), plain)
    # masks that cancel mod 2^k (as pairwise secure-aggregation masks do) change nothing
    masks = [rng.integers(0, 2**k, d, dtype=np.uint64) for _ in range(n - 1)]
    last = (-sum(m.astype(object) for m in masks)) % 2**k
    masks.append(last.astype(np.uint64))
    dt = field.residue_dtype(k)
    masked = [field.add_mod(r.copy(), m.astype(dt), k) for r, m in zip(residues, masks,
                                                                          strict=True)]
    total = field.sum_mod(masked, k)
    assert np.array_equal(total.astype(np.int64), plain)
    got = field.decode_sum(total, n, grid, k)
    want = np.sum([dequantize(q).astype(np.float64) for q in qs], axis=0)
    assert np.allclose(got, want, rtol=1e-5, atol=1e-4 * n)
    assert np.allclose(dequantize_sum(plain, n, grid), got)


def test_field_overflow_with_too_little_headroom_is_refused():
    n, bits = 4, 2
    grid = shared_grid(100, bits, 1.0, 2048)
    qs = [quantize(np.ones(100, np.float32), bits, 2048, np.random.default_rng(i), grid=grid)
          for i in range(n)]  # every code is L = 3, the sum is 12
    k = field.modulus_bits(bits, n) - 1  # 3 bits: 12 wraps to 4, undetectable from residues
    total = field.sum_mod([field.encode(q, k) for q in qs], k)
    assert int(total[0]) == 12 % 8
    with pytest.raises(field.FieldOverflowError, match="need 4 modulus bits"):
        field.decode_sum(total, n, grid, k)
    k = field.modulus_bits(bits, n)
    bad = field.sum_mod([field.encode(q, k) for q in qs], k)
    bad[7] = n * levels(bits) + 1  # e.g. a mask that was not removed
    with pytest.raises(field.FieldOverflowError, match="exceeds"):
        field.decode_sum(bad, n, grid, k)


def test_field_needs_a_shared_grid_and_wraps_at_64_bits():
    q = quantize(np.arange(10, dtype=np.float32), 8, 2048, np.random.default_rng(0))
    with pytest.raises(ValueError, match="shared grid"):
        field.encode(q, 16)
    acc = np.array([2**64 - 1, 5], np.uint64)
    assert field.add_mod(acc, np.array([2, 1], np.uint64), 64).tolist() == [1, 6]
    acc = np.array([2**40 - 1], np.uint64)
    assert field.add_mod(acc, np.array([3], np.uint64), 40).tolist() == [2]
    assert field.residue_dtype(32) == np.uint32 and field.residue_dtype(33) == np.uint64


# ---- the encoded update ----

SHAPES = [(300, 100), (50,), (128, 256), (7, 3)]


def _arrays(rng, shapes=SHAPES, scale=0.01):
    return [(rng.standard_normal(s) * scale).astype(np.float32) for s in shapes]


def test_encoding_json_round_trip_and_strictness():
    e = Encoding("q4", True, 1024)
    assert Encoding.from_json(e.to_json()) == e
    with pytest.raises(ValueError):
        Encoding.from_json('{"name":"q4"}')
    with pytest.raises(ValueError):
        Encoding("q3")
    with pytest.raises(ValueError):
        Encoding("q8", rotate=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["float32", "q8", "q4", "q2"])
@pytest.mark.parametrize("rot", [False, True])
def test_update_round_trip(name, rot):
    rng = np.random.default_rng(7)
    arrays = _arrays(rng)
    enc = Encoding(name, rot)
    out = decode_update(encode_update(arrays, enc, 1234, rng), SHAPES, enc, 1234)
    for i, (a, b) in enumerate(zip(arrays, out, strict=True)):
        assert b.shape == a.shape and b.dtype == np.float32
        if not enc.compressed(a.size):
            assert np.array_equal(a, b)  # small tensors travel as float32, unrotated
        elif name == "float32":
            assert np.allclose(a, b, atol=1e-6 * np.abs(a).max())
        else:
            # per coordinate the error is below one step of its chunk; rotating back is
            # orthonormal then a projection, so the L2 error is below sqrt(sum step^2)
            flat = rotate(a.ravel(), 1234, stream=i) if rot else a.ravel()
            bound = np.sqrt(np.sum(element_steps(minmax_grid(flat, enc.bits, enc.chunk)) ** 2))
            assert np.linalg.norm((b - a).astype(np.float64)) <= bound * (1 + 1e-4)


def _body(enc=None, seed=1234):
    rng = np.random.default_rng(0)
    enc = enc or Encoding("q4", True)
    return encode_update(_arrays(rng), enc, seed, rng), enc


def _rewrite(body: bytes, pos: int, raw: bytes) -> bytes:
    """``raw`` written at payload-relative ``pos``, with the checksum fixed up."""
    (hlen,) = struct.unpack_from("<I", body, 6)
    start = 10 + hlen + pos
    b = bytearray(body[:-4])
    b[start : start + len(raw)] = raw
    return bytes(b) + struct.pack("<I", zlib.crc32(b))


def refused(body, enc, seed=1234, shapes=SHAPES) -> str:
    with pytest.raises(EncodingError) as ei:
        decode_update(body, shapes, enc, seed)
    assert ei.value.reason in REASONS
    return ei.value.reason


def test_refusals_carry_the_right_reason():
    body, enc = _body()
    assert refused(body, Encoding("q8", True)) == "wrong_encoding"
    assert refused(body, Encoding("q4", False)) == "wrong_encoding"
    assert refused(body, enc, seed=99) == "wrong_seed"
    assert refused(body, enc, shapes=[*SHAPES[:-1], (3, 8)]) == "shape_mismatch"
    assert refused(body, enc, shapes=[*SHAPES[:-1], (3, 7)]) == "shape_mismatch"  # same size
    assert refused(body, enc, shapes=SHAPES[:-1]) == "shape_mismatch"
    assert refused(body[:-1], enc) == "truncated"
    assert refused(body[:200], enc) == "truncated"
    assert refused(body[:3], enc) == "truncated"
    assert refused(body + b"\0", enc) == "oversized"
    flipped = bytearray(body)
    flipped[len(body) // 2] ^= 0x40
    assert refused(bytes(flipped), enc) == "corrupt"
    rng = np.random.default_rng(1)
    assert refused(rng.bytes(len(body)), enc) == "malformed"
    assert refused(b"FKBQ" + struct.pack("<HI", 1, 5) + b"{nope" + b"\0" * 8, enc) == "malformed"
    assert refused(b"FKBQ" + struct.pack("<HI", 1, 1 << 30) + b"\0" * 8, enc) == "malformed"
    assert refused(body[:4] + struct.pack("<H", 2) + body[6:], enc) == "wrong_version"
    # the first compressed tensor's first scale, made NaN (checksum fixed up)
    assert refused(_rewrite(body, 0, struct.pack("<f", float("nan"))), enc) == "bad_scale"
    assert refused(_rewrite(body, 0, struct.pack("<f", -1.0)), enc) == "bad_scale"
    # a float32 tensor (SHAPES[1], after the first one's payload) holding a NaN
    body32, enc32 = _body(Encoding("float32"))
    assert refused(_rewrite(body32, 4 * 30_000, struct.pack("<f", float("inf"))),
                   enc32) == "bad_value"


def test_encoder_refuses_non_finite_and_missing_inputs():
    rng = np.random.default_rng(0)
    arrays = _arrays(rng)
    arrays[0][3, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        encode_update(arrays, Encoding("q8"), None, rng)
    with pytest.raises(ValueError, match="seed"):
        encode_update(_arrays(rng), Encoding("q8", True), None, rng)
    with pytest.raises(ValueError, match="Generator"):
        encode_update(_arrays(rng), Encoding("q8"), None, None)


@pytest.fixture(scope="module")
def small_update():
    rng = np.random.default_rng(0)
    return _arrays(rng, SMALL_SHAPES)


@pytest.mark.parametrize("name,most", [("q8", 1 / 3.5), ("q4", 1 / 7), ("q2", 1 / 12)])
@pytest.mark.parametrize("rot", [False, True])
def test_small_model_bytes(small_update, name, most, rot):
    rng = np.random.default_rng(0)
    body, report = encode_update_measured(small_update, Encoding(name, rot), 5, rng)
    assert report.raw_bytes == 4 * 1_356_144
    assert report.encoded_bytes == len(body) <= most * report.raw_bytes
    assert report.quantized_tensors == 4 and report.float32_tensors == 3
    assert report.encode_s > 0 and report.to_dict()["ratio"] == report.ratio


def test_compression_imports_only_numpy_and_the_standard_library():
    root = Path(__file__).resolve().parents[1] / "fedkb" / "compression"
    allowed = set(sys.stdlib_module_names) | {"numpy", "fedkb"}
    files = sorted(root.glob("*.py"))
    assert len(files) >= 5
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                top = name.split(".")[0]
                assert top in allowed, f"{path.name} imports {name}"
                if top == "fedkb":
                    assert name.startswith("fedkb.compression"), f"{path.name} imports {name}"
