"""Ranking keys order exactly like the dequantized scores: float64 / exact rational references, golden tiers,
adversarial near-ties and exact ties (ties go to the lower id)."""

import fractions

import jax.numpy as jnp
import numpy as np
import pytest
import retrieval_ref as ref

from hq_jax.errors import UserError
from hq_jax.quant import quantizer
from hq_jax.quant.quantizer import LayeredQuantized, QuantizedMatrix, ScaleCodes, quantize
from hq_jax.retrieval import scoring

F = fractions.Fraction


def _codes(rng, n, d, bits):
  if bits == 1:
    return jnp.asarray(rng.choice([-1, 1], (n, d)), jnp.int8)
  return jnp.asarray(rng.integers(0, 1 << bits, (n, d)), jnp.uint8)


def _matrix(rng, n, d, bits, scale, offset):
  return QuantizedMatrix(_codes(rng, n, d, bits), jnp.asarray(scale, jnp.float32), jnp.float32(offset), bits)


def _assert_orders(keys, want_scores, name=""):
  for row in range(keys.shape[0]):
    assert ref.key_order(keys[row]) == ref.order(want_scores[row]), (name, row)


# ----------------------------------------------------------------------------------------------------------
# Every width and dimension against the float64 reference
# ----------------------------------------------------------------------------------------------------------

WIDTHS = [  # name, bits, d, method, expected raw kind, expected tier
    ("1bit_d64_hamming", 1, 64, "auto", "hamming", "i32"),
    ("1bit_d1000_sign_matmul", 1, 1000, "sign_matmul", "sign_matmul", "f32"),
    ("1bit_d64_int8", 1, 64, "int8", "int8", "i32"),
    ("2bit_d64", 2, 64, "auto", "matmul", "f32"),
    ("3bit_d300", 3, 300, "auto", "matmul", "f32"),
    ("4bit_d1024", 4, 1024, "auto", "matmul", "f32"),
    ("4bit_d64_int8", 4, 64, "int8", "int8", "i32"),
    ("8bit_d64", 8, 64, "auto", "matmul", "f32"),
    ("8bit_d300", 8, 300, "auto", "matmul", "f32"),
    ("8bit_d1024", 8, 1024, "auto", "int8", "i32"),
    ("8bit_d4096", 8, 4096, "auto", "int8", "i32"),
    ("8bit_d4096_int_matmul_chunks", 8, 4096, "int_matmul", "matmul", "i32"),
    ("8bit_d64_int8", 8, 64, "int8", "int8", "i32"),
]


@pytest.mark.parametrize("name, bits, d, method, kind, tier", WIDTHS, ids=[c[0] for c in WIDTHS])
def test_every_width_matches_float64_reference(name, bits, d, method, kind, tier):
  """Scales and offsets near the integer-ranking-large-dim case's (0.013, -1.7; 0.011, -1.4) but with short
  mantissas (k / 2^10), so the float64 reference is exact (every product and sum is an integer times 2^-20
  below 2^53) and its exact ties are real ties; the item term o'_u / s_u = -1741 / 13 + z is not an integer."""
  rng = np.random.default_rng(len(name) + d)
  off_u, off_i = (0.0, 0.0) if bits == 1 else (-1741 / 1024, -1434 / 1024)
  users = _matrix(rng, 4, d, bits, 13 / 1024, off_u)
  items = _matrix(rng, 400, d, bits, 11 / 1024, off_i)
  items = QuantizedMatrix(items.codes.at[7].set(items.codes[3]), items.scale, items.offset, bits)  # a tie
  table = scoring.prepare_items(items, users, method)
  assert (table.kind, table.spec.tier) == (kind, tier), name
  keys = scoring.ranking_scores(users, items, method)
  _assert_orders(keys, ref.float64_scores(users, items), name)


def test_8bit_case_d4096_top20_equals_float64_top20():
  """The shared case's construction: codes ~ N(127.5, 42.5) clipped, so scores differ by small amounts."""
  rng = np.random.default_rng(15)
  cu = np.clip(np.round(rng.normal(127.5, 42.5, (8, 4096))), 0, 255).astype(np.uint8)
  ci = np.clip(np.round(rng.normal(127.5, 42.5, (500, 4096))), 0, 255).astype(np.uint8)
  users = QuantizedMatrix(cu, np.float32(0.013), np.float32(-1.7), 8)
  items = QuantizedMatrix(ci, np.float32(0.011), np.float32(-1.4), 8)
  keys = scoring.ranking_scores(users, items)
  _assert_orders(keys, ref.float64_scores(users, items))


DYADIC = [  # name, bits, method, user (scale, offset), item (scale, offset)
    ("1bit_hamming", 1, "hamming", (0.5, 0.0), (0.25, 0.0)),
    ("1bit_sign_matmul", 1, "sign_matmul", (0.5, 0.0), (0.25, 0.0)),
    ("2bit_int_matmul", 2, "int_matmul", (0.125, -0.25), (0.25, -0.375)),
    ("2bit_int8", 2, "int8", (0.125, -0.25), (0.25, -0.375)),
    ("4bit_int_matmul", 4, "int_matmul", (0.0625, -0.4375), (0.03125, -0.25)),
    ("4bit_int8", 4, "int8", (0.0625, -0.4375), (0.03125, -0.25)),
    ("8bit_int8", 8, "int8", (2.0**-7, -1.0), (2.0**-6, -2.0)),
    ("8bit_float", 8, "float", (2.0**-7, -1.0), (2.0**-6, -2.0)),
]


@pytest.mark.parametrize("name, bits, method, u, i", DYADIC, ids=[c[0] for c in DYADIC])
def test_order_matches_dyadic_reference(name, bits, method, u, i):
  """Dyadic scales: the float64 reference is exact, and every tie is a real tie."""
  rng = np.random.default_rng(len(name))
  users = _matrix(rng, 6, 13, bits, *u)
  items = _matrix(rng, 300, 13, bits, *i)
  _assert_orders(scoring.ranking_scores(users, items, method), ref.float64_scores(users, items), name)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_order_matches_exact_rationals_for_real_quantizers(bits):
  """Scales from `quantize` are not dyadic: compare with the exact rational scores."""
  rng = np.random.default_rng(bits)
  users = quantize(rng.standard_normal((3, 8)).astype(np.float32) + 0.3, bits)
  items = quantize(rng.standard_normal((150, 8)).astype(np.float32), bits)
  _assert_orders(scoring.ranking_scores(users, items), ref.exact_scores(users, items))


def test_1bit_keys_are_d_minus_twice_hamming():
  rng = np.random.default_rng(0)
  users, items = quantize(rng.standard_normal((4, 70)), 1), quantize(rng.standard_normal((9, 70)), 1)
  keys = scoring.ranking_scores(users, items, "hamming")
  cu, ci = np.asarray(users.codes, np.int64), np.asarray(items.codes, np.int64)
  hamming = (cu[:, None, :] != ci[None, :, :]).sum(-1)
  np.testing.assert_array_equal(keys[..., 0], 70 - 2 * hamming)


# ----------------------------------------------------------------------------------------------------------
# Adversarial near-ties: exact scores that float32 (and a float32 key) cannot tell apart
# ----------------------------------------------------------------------------------------------------------


def _near_tie_items(rng, d, j, bits, copies=40):
  """Items around one base row: coordinate j moved by -2..2 (clipped) and duplicates (exact ties)."""
  top = (1 << bits) - 1
  base = rng.integers(0, top + 1, d)
  base[j] = top // 2
  rows = []
  for t in range(copies):
    row = base.copy()
    row[j] = np.clip(base[j] + (t % 5) - 2, 0, top)
    rows.append(row)
  rows = np.asarray(rows)[rng.permutation(copies)]
  return np.concatenate([rows, rng.integers(0, top + 1, (60, d))]).astype(np.uint8)


@pytest.mark.parametrize("bits, d, eps", [(8, 64, 2.0**-13), (8, 4096, 2.0**-12), (4, 300, 2.0**-15),
                                          (2, 33, 2.0**-18), (8, 300, 0.0)])
def test_b_bit_near_ties_with_offsets(bits, d, eps):
  """o_u / s_u = -c_u[j] + eps: moving an item's code j by one changes its score by eps * s_u * s_i only
  (about 2^-20 of the score or less), far below float32 resolution; eps = 0 makes those items tie exactly
  (same score, different codes): lower id first."""
  rng = np.random.default_rng(d + bits)
  cu = rng.integers(0, 1 << bits, (1, d)).astype(np.uint8)
  j = 5
  s_u = np.float32(11 * 2.0**-10)
  ratio = -int(cu[0, j]) + eps
  o_u = np.float32(ratio * np.float64(s_u))
  assert np.float64(o_u) / np.float64(s_u) == ratio, "construction must be exact"
  users = QuantizedMatrix(cu, s_u, o_u, bits)
  items = QuantizedMatrix(_near_tie_items(rng, d, j, bits), np.float32(0.0123), np.float32(-0.77), bits)
  exact = ref.exact_scores(users, items)
  cluster = sorted(set(exact[0, :40].tolist()))
  top = (1 << bits) - 1
  moved = {int(np.clip(top // 2 + m, 0, top)) for m in range(-2, 3)}
  assert len(cluster) == (1 if eps == 0 else len(moved))
  assert abs(cluster[-1] - cluster[0]) <= F(1, 2**20) * abs(cluster[0])
  _assert_orders(scoring.ranking_scores(users, items), exact)


def test_1bit_row_scales_adjacent_floats_and_exact_ties():
  """Per-row float32 scales one ulp apart and P equal: float32 products tie, exact keys do not; scales in
  ratio 2 with P in ratio 1/2: an exact tie, lower id first."""
  rng = np.random.default_rng(3)
  d = 64
  cu = rng.choice([-1, 1], (1, d)).astype(np.int8)
  rows, scales = [], []
  for t in range(30):
    flips = t % 4  # P = d - 2 * flips
    row = cu[0].copy()
    row[:flips] *= -1
    rows.append(row)
    scales.append(np.nextafter(np.float32(1.5), np.float32(2), dtype=np.float32) if t % 3 else np.float32(1.5))
  # exact ties: s * P == (2 s) * (P / 2): P = 64 with s = 0.75 vs P = 32 with s = 1.5
  row32 = cu[0].copy()
  row32[:16] *= -1
  rows += [cu[0], row32]
  scales += [np.float32(0.75), np.float32(1.5)]
  order = rng.permutation(len(rows))
  items = QuantizedMatrix(np.asarray(rows)[order], np.asarray(scales, np.float32)[order].reshape(-1, 1),
                          np.float32(0), 1)
  users = QuantizedMatrix(cu, np.float32(0.3), np.float32(0), 1)
  assert scoring.prepare_items(items, users).spec.tier == "i32"  # 64 * (3 * 2^22 + 1) < 2^31
  _assert_orders(scoring.ranking_scores(users, items), ref.exact_scores(users, items))


@pytest.mark.parametrize("per_row_users", [False, True])
def test_1bit_8bit_row_scales_match_exact(per_row_users):
  rng = np.random.default_rng(11)
  xu, xi = rng.standard_normal((5, 48)), rng.standard_normal((300, 48))
  s_i = quantizer.sign_scale(jnp.asarray(xi, jnp.float32), "row")
  items = quantize(xi, 1, scale=s_i, scale_bits=8)
  items = QuantizedMatrix(items.codes.at[9].set(items.codes[2]), ScaleCodes(
      items.scale.codes.at[9].set(items.scale.codes[2]), items.scale.minimum, items.scale.step), items.offset, 1)
  users = quantize(xu, 1, scale=quantizer.sign_scale(jnp.asarray(xu, jnp.float32), "row" if per_row_users else
                                                      "matrix"), scale_bits=8 if per_row_users else 32)
  assert scoring.prepare_items(items, users).spec.tier in ("f32", "i32")
  _assert_orders(scoring.ranking_scores(users, items), ref.exact_scores(users, items))


# ----------------------------------------------------------------------------------------------------------
# Layer-wise codes
# ----------------------------------------------------------------------------------------------------------


def _layered(rng, n, specs, weights, magnitudes):
  layers = []
  for (bits, d, scale_form), mag in zip(specs, magnitudes):
    x = jnp.asarray(rng.standard_normal((n, d)) * mag, jnp.float32)
    if bits == 1:
      scale = quantizer.sign_scale(x, "matrix" if scale_form == "matrix" else "row")
      layers.append(quantize(x, 1, scale=scale, scale_bits=8 if scale_form == "row8" else 32))
    else:
      layers.append(quantize(x, bits))
  return LayeredQuantized(tuple(layers), weights)


LAYERED = [  # name, per-layer (bits, d, user scale form), item scale forms, weights
    ("1bit_3layers_matrix_mean", [(1, 32, "matrix")] * 3, ["matrix"] * 3, "mean"),
    ("1bit_3layers_row8_bigear", [(1, 32, "row8")] * 3, ["row8"] * 3, "bigear"),
    ("1bit_4layers_row32_mean", [(1, 16, "row32")] * 4, ["row32"] * 4, "mean"),
    ("1bit_row8_users_row32_items", [(1, 24, "row8")] * 2, ["row32"] * 2, "bigear"),
    ("mixed_bits_1_2_4_8", [(1, 16, "row8"), (2, 16, "-"), (4, 8, "-"), (8, 24, "-")], ["row8", "-", "-", "-"],
     "mean"),
    ("8bit_2layers_bigear", [(8, 64, "-")] * 2, ["-"] * 2, "bigear"),
    ("8bit_d1100_int8_layers", [(8, 1100, "-"), (1, 40, "matrix")], ["-", "matrix"], "mean"),
]


@pytest.mark.parametrize("name, user_specs, item_forms, scheme", LAYERED, ids=[c[0] for c in LAYERED])
def test_layered_matches_exact_rationals(name, user_specs, item_forms, scheme):
  rng = np.random.default_rng(len(name))
  weights = quantizer.layer_weights(len(user_specs), scheme)
  mags = rng.uniform(0.05, 2.0, len(user_specs))
  users = _layered(rng, 4, user_specs, weights, mags)
  item_specs = [(b, d, f) for (b, d, _), f in zip(user_specs, item_forms)]
  items = _layered(rng, 120, item_specs, weights, mags)
  # exact duplicates of a row (ties) at ids 5 and 77
  items = LayeredQuantized(tuple(QuantizedMatrix(q.codes.at[77].set(q.codes[5]), _copy_scale(q.scale, 5, 77),
                                                 q.offset, q.bits) for q in items.layers), weights)
  keys = scoring.ranking_scores(users, items)
  _assert_orders(keys, ref.exact_scores(users, items), name)
  if max(d for _, d, _ in user_specs) < 1000:
    _assert_orders(keys, ref.float64_scores(users, items), name)


def _copy_scale(scale, src, dst):
  if isinstance(scale, ScaleCodes):
    return ScaleCodes(scale.codes.at[dst].set(scale.codes[src]), scale.minimum, scale.step)
  if np.ndim(scale) == 2:
    return jnp.asarray(scale).at[dst].set(jnp.asarray(scale)[src])
  return scale


def test_layered_exact_ties_across_layers_and_near_ties():
  """Mean weights, equal layer scales: items with per-layer P (6, 2), (2, 6), (4, 4), (8, 0) tie exactly
  (lower id first); two (4, 4) items with one layer's scale one float32 ulp larger beat them by 2^-24
  relative."""
  d = 8
  cu = np.ones((1, d), np.int8)

  def row(p):  # +-1 codes with <1, c> = p
    flips = (d - p) // 2
    return np.asarray([-1] * flips + [1] * (d - flips), np.int8)

  pairs = [(6, 2), (2, 6), (4, 4), (2, 6), (6, 2), (8, 0), (0, 8)]
  one = np.float32(1.0)
  ulp = np.nextafter(one, np.float32(2), dtype=np.float32)
  layer_scales = [np.asarray([one] * 7 + [one, ulp], np.float32), np.asarray([one] * 7 + [ulp, one], np.float32)]
  pairs += [(4, 4), (4, 4)]
  layers_i = tuple(QuantizedMatrix(np.stack([row(p[k]) for p in pairs]), layer_scales[k].reshape(-1, 1),
                                   np.float32(0), 1) for k in range(2))
  layers_u = tuple(QuantizedMatrix(cu, np.float32(0.5), np.float32(0), 1) for _ in range(2))
  weights = quantizer.layer_weights(2, "mean")
  users, items = LayeredQuantized(layers_u, weights), LayeredQuantized(layers_i, weights)
  exact = ref.exact_scores(users, items)
  assert exact[0, 0] == exact[0, 1] == exact[0, 2]  # (3,1), (1,3), (2,2) tie exactly
  assert exact[0, 8] > exact[0, 2] and exact[0, 7] > exact[0, 2]
  _assert_orders(scoring.ranking_scores(users, items), exact)


def test_layered_dequantize_identity():
  """<dequantize(u), dequantize(i)> = sum_k w_k <x^_uk, x^_ik> (float32 vs the float64 reference)."""
  rng = np.random.default_rng(2)
  specs = [(1, 16, "row8"), (4, 16, "-"), (1, 16, "matrix")]
  weights = quantizer.layer_weights(3, "bigear")
  users = _layered(rng, 5, specs, weights, [1, 0.5, 0.25])
  items = _layered(rng, 9, specs, weights, [1, 0.5, 0.25])
  np.testing.assert_allclose(np.asarray(scoring.dequantized_scores(users, items)),
                             ref.float64_scores(users, items), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# Tiers and errors
# ----------------------------------------------------------------------------------------------------------


def test_tiers_follow_the_bound():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((50, 64)).astype(np.float32)
  # 8 bits at d = 64 used to fall back to an inexact float key: now exact float32 integers.
  assert scoring.prepare_items(quantize(x, 8), quantize(x, 8)).spec.tier == "f32"
  big = np.abs(rng.standard_normal((40, 1))).astype(np.float32) + 0.1
  assert scoring.prepare_items(quantize(x[:40], 1, scale=big), quantize(x, 1)).spec.words == 2
  shifted = x * np.float32(0.003) + np.float32(1000.005)  # range [1000, 1000.01]: o / s ~ 2.5e7
  far = quantize(shifted, 8, lower=np.float32(1000.0), upper=np.float32(1000.01))
  assert scoring.prepare_items(far, far).spec.tier == "limbs"
  _assert_orders(scoring.ranking_scores(far, far), ref.exact_scores(far, far))


@pytest.mark.parametrize("name, users, items, method, message", [
    ("bits_differ", lambda r: quantize(r, 1), lambda r: quantize(r, 2), "auto", "differ: 1 vs 2 bits"),
    ("float_vs_codes", lambda r: r, lambda r: quantize(r, 4), "auto", "differ: float vs 4 bits"),
    ("method_for_bits", lambda r: quantize(r, 4), lambda r: quantize(r, 4), "hamming", "does not apply"),
    ("unknown_method", lambda r: quantize(r, 4), lambda r: quantize(r, 4), "magic", "unknown scoring method"),
    ("layered_vs_matrix", lambda r: quantizer.quantize_layers([r, r], 1), lambda r: quantize(r, 1), "auto",
     "differ: 2-layer codes vs 1 bits"),
    ("layer_counts", lambda r: quantizer.quantize_layers([r, r], 1), lambda r: quantizer.quantize_layers([r], 1),
     "auto", "2 vs 1 layers"),
    ("weights_differ", lambda r: quantizer.quantize_layers([r, r], 1),
     lambda r: quantizer.quantize_layers([r, r], 1, weights="bigear"), "auto", "layer weights differ"),
])
def test_user_errors(name, users, items, method, message):
  x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
  with pytest.raises(UserError, match=message):
    scoring.ranking_scores(users(x), items(x), method)
