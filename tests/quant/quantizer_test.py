"""Golden tests of hq_jax.quant.quantizer against a plain NumPy float64 reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hq_jax.quant import quantizer

ALL_BITS = (1, 2, 3, 4, 8)


def _np_quantize(x, bits, lower=None, upper=None, scale=None):
  """Reference: (codes, x^) in float64, straight from the spec's formulas."""
  x = np.asarray(x, np.float64)
  if bits == 1:
    s = np.mean(np.abs(x)) if scale is None else np.float64(scale)
    q = np.where(x >= 0, 1.0, -1.0)
    return q, s * q
  if lower is None:
    lower, upper = x.mean() - 3 * x.std(), x.mean() + 3 * x.std()
  lower, upper = np.float64(lower), np.float64(upper)
  num_levels = 2**bits - 1
  t = np.clip((x - lower) / (upper - lower), 0.0, 1.0)
  q = np.round(t * num_levels)  # NumPy rounds half to even too
  return q, lower + q * (upper - lower) / num_levels


def _random(shape, seed=0):
  return np.random.default_rng(seed).normal(0.0, 0.1, shape).astype(np.float32)


@pytest.mark.parametrize("bits", ALL_BITS)
def test_random_matrix_matches_numpy(bits):
  x = _random((50, 16), seed=bits)
  qm = jax.jit(quantizer.quantize, static_argnums=1)(x, bits)
  ref_codes, ref_xhat = _np_quantize(x, bits)
  np.testing.assert_array_equal(np.asarray(qm.codes, np.float64), ref_codes)
  np.testing.assert_allclose(np.asarray(quantizer.dequantize(qm)), ref_xhat, rtol=0, atol=1e-6)
  # fake_quant_* gives the same x^ without going through integer codes.
  if bits == 1:
    fq = quantizer.fake_quant_sign(x, quantizer.sign_scale(jnp.asarray(x)))
  else:
    lower, upper = quantizer.init_range(jnp.asarray(x))
    fq = quantizer.fake_quant_uniform(x, lower, upper, bits)
  np.testing.assert_allclose(np.asarray(fq), ref_xhat, rtol=0, atol=1e-6)


GOLDEN = [
    # (name, bits, x, lower, upper, expected codes)
    ("2bit_grid", 2, [0.0, 1.0, 2.0, 3.0], 0.0, 3.0, [0, 1, 2, 3]),
    ("2bit_half_to_even", 2, [0.5, 1.5, 2.5], 0.0, 3.0, [0, 2, 2]),
    ("2bit_clip", 2, [-5.0, -0.01, 3.01, 100.0], 0.0, 3.0, [0, 0, 3, 3]),
    ("3bit_grid", 3, [-3.5, -2.5, -0.5, 0.5, 3.5], -3.5, 3.5, [0, 1, 3, 4, 7]),
    ("3bit_half_to_even", 3, [2.5, 3.5, 6.5], 0.0, 7.0, [2, 4, 6]),
    ("4bit_ends", 4, [-1.0, 1.0, 0.0], -1.0, 1.0, [0, 15, 8]),  # t L = 7.5 rounds to 8 (even)
    ("8bit_half_to_even", 8, [0.5, 1.5, 254.5, 255.0], 0.0, 255.0, [0, 2, 254, 255]),
    ("8bit_clip", 8, [-1.0, 300.0], 0.0, 255.0, [0, 255]),
]


@pytest.mark.parametrize("name,bits,x,lower,upper,codes", GOLDEN, ids=[g[0] for g in GOLDEN])
def test_uniform_golden(name, bits, x, lower, upper, codes):
  del name
  x = jnp.asarray(x, jnp.float32)[None, :]
  qm = jax.jit(lambda x: quantizer.quantize(x, bits, lower=lower, upper=upper))(x)
  assert qm.codes.dtype == jnp.uint8
  np.testing.assert_array_equal(np.asarray(qm.codes)[0], codes)
  step = (upper - lower) / (2**bits - 1)
  np.testing.assert_allclose(np.asarray(qm.dequantize())[0], lower + step * np.asarray(codes), atol=1e-5)
  # Clipped elements dequantize to the range ends exactly.
  xhat = np.asarray(quantizer.fake_quant_uniform(x, jnp.float32(lower), jnp.float32(upper), bits))[0]
  np.testing.assert_array_equal(xhat[np.asarray(x)[0] <= lower], lower)
  np.testing.assert_array_equal(xhat[np.asarray(x)[0] >= upper], upper)


def test_sign_of_zero_is_plus_one():
  x = jnp.asarray([[0.0, -0.0, 1e-30, -1e-30, -2.0]], jnp.float32)
  qm = jax.jit(lambda x: quantizer.quantize(x, 1, scale=0.5))(x)
  assert qm.codes.dtype == jnp.int8
  np.testing.assert_array_equal(np.asarray(qm.codes)[0], [1, 1, 1, -1, -1])
  np.testing.assert_array_equal(np.asarray(qm.dequantize())[0], [0.5, 0.5, 0.5, -0.5, -0.5])


def test_sign_scale_modes():
  x = _random((7, 5))
  np.testing.assert_allclose(quantizer.sign_scale(x, "matrix"), np.abs(x.astype(np.float64)).mean(), rtol=1e-6)
  np.testing.assert_allclose(quantizer.sign_scale(x, "row"),
                             np.abs(x.astype(np.float64)).mean(axis=1, keepdims=True), rtol=1e-6)
  with pytest.raises(ValueError):
    quantizer.sign_scale(x, "column")


def test_row_scale_one_bit():
  x = _random((7, 5))
  scale = quantizer.sign_scale(x, "row")
  qm = quantizer.quantize(x, 1, scale=scale)
  assert qm.scale.shape == (7, 1)
  ref = np.abs(x).mean(axis=1, keepdims=True) * np.where(x >= 0, 1.0, -1.0)
  np.testing.assert_allclose(np.asarray(qm.dequantize()), ref, rtol=1e-6)


def test_init_range_is_three_std():
  x = _random((40, 8))
  lower, upper = quantizer.init_range(x)
  x64 = x.astype(np.float64)
  np.testing.assert_allclose([lower, upper], [x64.mean() - 3 * x64.std(), x64.mean() + 3 * x64.std()],
                             rtol=1e-5)


@pytest.mark.parametrize("bits", ALL_BITS)
def test_invariant(bits):
  """dequantize == offset + scale * codes; codes in range with the stated dtype; scale > 0."""
  x = _random((30, 8), seed=10 + bits)
  qm = quantizer.quantize(x, bits)
  codes = np.asarray(qm.codes)
  if bits == 1:
    assert codes.dtype == np.int8 and set(np.unique(codes)) <= {-1, 1}
    assert float(qm.offset) == 0.0
  else:
    assert codes.dtype == np.uint8 and codes.min() >= 0 and codes.max() <= 2**bits - 1
    assert qm.offset.shape == ()
  assert np.all(np.asarray(qm.scale) > 0)
  np.testing.assert_array_equal(np.asarray(quantizer.dequantize(qm)),
                                np.asarray(qm.offset + qm.scale * qm.codes.astype(jnp.float32)))
  assert qm.shape == (30, 8)


@pytest.mark.parametrize("bits", ALL_BITS)
def test_bits_is_static_pytree_metadata(bits):
  qm = quantizer.quantize(_random((4, 8)), bits)
  leaves, treedef = jax.tree.flatten(qm)
  assert len(leaves) == 3  # codes, scale, offset; bits is metadata
  assert jax.tree.unflatten(treedef, leaves).bits == bits
  out = jax.jit(lambda q: q)(qm)
  assert out.bits == bits


@pytest.mark.parametrize("bits,expected", [(1, 16 * 1 + 8), (2, 16 * 2 + 8), (3, 16 * 3 + 8),
                                           (4, 16 * 4 + 8), (8, 16 * 8 + 8)])
def test_nbytes_packed(bits, expected):
  """16 rows of 8 values: 8 * bits bits = bits bytes a row, plus two float32 scalars."""
  assert quantizer.quantize(_random((16, 8)), bits).nbytes_packed() == expected


def test_unsupported_bits():
  with pytest.raises(ValueError):
    quantizer.quantize(_random((4, 4)), 5)


# ----------------------------------------------------------------------------------------------------------
# Per-row scales in 8 bits
# ----------------------------------------------------------------------------------------------------------


def _np_quantize_scales(s):
  """Reference for `quantize_scales` in float64 (module docstring's formula)."""
  s = np.asarray(s, np.float64).reshape(-1, 1)
  smax, smin = s.max(), s.min()
  exponent = int(np.floor(np.log2(smax))) - 15
  if smax > smin:
    exponent = max(exponent, int(np.ceil(np.log2((smax - smin) / 254))))
  step = 2.0**exponent
  base = np.floor(smin / step)
  codes = np.clip(np.round(s / step) - base, max(1 - base, 0), 255)
  return codes, base * step, step


SCALE_GOLDEN = [  # name, scales, codes, minimum, step
    ("power_of_two_step", [1.0, 1.5, 2.0], [0, 64, 128], 1.0, 2.0**-7),
    ("all_equal_16_bit_precision", [0.3, 0.3, 0.3], [1, 1, 1], 39321 * 2.0**-17, 2.0**-17),
    ("tiny_scale_rounds_up_not_to_zero", [1e-6, 1.0], [1, 128], 0.0, 2.0**-7),
    ("wide_spread", [0.001, 100.0], [1, 200], 0.0, 0.5),
]


@pytest.mark.parametrize("name, scales, codes, minimum, step", SCALE_GOLDEN, ids=[g[0] for g in SCALE_GOLDEN])
def test_quantize_scales_golden(name, scales, codes, minimum, step):
  sc = jax.jit(quantizer.quantize_scales)(jnp.asarray(scales, jnp.float32).reshape(-1, 1))
  assert sc.codes.dtype == jnp.uint8 and sc.codes.shape == (len(scales), 1)
  np.testing.assert_array_equal(np.asarray(sc.codes)[:, 0], codes, err_msg=name)
  assert float(sc.minimum) == minimum and float(sc.step) == step


@pytest.mark.parametrize("seed, spread", [(0, 0.5), (1, 3.0), (2, 100.0), (3, 1e-4)])
def test_quantize_scales_matches_numpy_and_is_exact(seed, spread):
  s = np.random.default_rng(seed).uniform(1.0, 1.0 + spread, (200, 1)).astype(np.float32)
  sc = quantizer.quantize_scales(s)
  codes, minimum, step = _np_quantize_scales(s)
  np.testing.assert_array_equal(np.asarray(sc.codes, np.float64), codes)
  assert float(sc.minimum) == minimum and float(sc.step) == step
  values = np.asarray(sc.values(), np.float64)
  np.testing.assert_array_equal(values, minimum + step * codes)  # float32 values are exact
  assert np.all(values > 0) and np.max(np.abs(values - s)) <= step / 2
  assert minimum / step <= 1 << 16


def test_row_scales_in_8_bits():
  x = _random((16, 8))
  qm = quantizer.quantize(x, 1, scale=quantizer.sign_scale(x, "row"), scale_bits=8)
  assert isinstance(qm.scale, quantizer.ScaleCodes) and qm.scale_bits == 8 and qm.per_row_scale
  np.testing.assert_array_equal(np.asarray(qm.dequantize()),
                                np.asarray(qm.scale.values()) * np.where(x >= 0, 1.0, -1.0))
  assert qm.nbytes_packed() == 16 * 1 + (16 + 8) + 4  # codes, scale codes + min + step, offset
  fp = quantizer.quantize(x, 1, scale=quantizer.sign_scale(x, "row"))
  assert fp.scale_bits == 32 and fp.nbytes_packed() == 16 * 1 + 16 * 4 + 4
  leaves, treedef = jax.tree.flatten(qm)
  assert len(leaves) == 5 and jax.tree.unflatten(treedef, leaves).scale_bits == 8


def test_without_row_scales_keeps_codes_and_each_rows_order():
  x = _random((6, 8))
  scale = np.linspace(0.5, 3.0, 6, dtype=np.float32)[:, None]
  qm = quantizer.quantize(x, 1, scale=scale)
  plain = quantizer.without_row_scales(qm)
  np.testing.assert_array_equal(plain.codes, qm.codes)
  np.testing.assert_array_equal(np.asarray(plain.dequantize()) * scale, np.asarray(qm.dequantize()))
  assert plain.nbytes_packed() == 6 * 1 + 4 + 4 and qm.nbytes_packed() == 6 * 1 + 6 * 4 + 4
  with pytest.raises(ValueError, match="only 1-bit codes"):
    quantizer.without_row_scales(quantizer.quantize(x, 2))


@pytest.mark.parametrize("name, kwargs", [
    ("matrix_scale", dict(bits=1, scale_bits=8)),
    ("b_bit", dict(bits=4, scale_bits=8)),
    ("unknown_width", dict(bits=1, scale_bits=16)),
])
def test_scale_bits_errors(name, kwargs):
  with pytest.raises(ValueError, match="scale_bits"):
    quantizer.quantize(_random((4, 4)), **kwargs)


@pytest.mark.parametrize("name, rep, expected", [
    ("1bit_d64_matrix_scale", lambda: quantizer.quantize(_random((100, 64)), 1), 64 + 64 / 100),
    ("1bit_d64_row8", lambda: quantizer.quantize(_random((100, 64)), 1, scale=np.ones((100, 1), np.float32),
                                                 scale_bits=8), 64 + 8 + 96 / 100),
    ("4bit_d10", lambda: quantizer.quantize(_random((50, 10)), 4), 40 + 64 / 50),
    ("layered_4x16_row8", lambda: quantizer.quantize_layers([_random((10, 16))] * 4, 1, scale_mode="row",
                                                            scale_bits=8), 4 * (16 + 8 + 96 / 10)),
])
def test_bits_per_node(name, rep, expected):
  assert quantizer.bits_per_node(rep()) == pytest.approx(expected)


# ----------------------------------------------------------------------------------------------------------
# Layer-wise codes
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_layers, scheme, expected", [
    (3, "mean", (1 / 3, 1 / 3, 1 / 3)),
    (4, "mean", (0.25,) * 4),
    (3, "bigear", (1 / 9, 4 / 9, 1.0)),  # BiGeaR scales both sides by (k + 1) / (K + 1)
    (2, "bigear", (0.25, 1.0)),
])
def test_layer_weights(num_layers, scheme, expected):
  got = quantizer.layer_weights(num_layers, scheme)
  np.testing.assert_allclose(got, expected, rtol=1e-15)
  exact = quantizer.exact_weights(got)
  assert [w.limit_denominator(100) for w in exact] == list(exact)  # small rationals, e.g. exactly 1/3
  assert float(sum(exact)) == pytest.approx(sum(expected))


def test_layer_weights_errors():
  with pytest.raises(ValueError, match="unknown layer weight scheme"):
    quantizer.layer_weights(3, "median")
  with pytest.raises(ValueError, match="one weight per layer"):
    quantizer.LayeredQuantized((quantizer.quantize(_random((3, 4)), 1),), (0.5, 0.5))
  with pytest.raises(ValueError, match="positive"):
    quantizer.LayeredQuantized((quantizer.quantize(_random((3, 4)), 1),), (-1.0,))


def test_layered_dequantize_is_the_weighted_concatenation():
  xs = [_random((6, 8), seed=s) for s in range(3)]
  rep = quantizer.quantize_layers(xs, 2, weights="bigear")
  assert rep.shape == (6, 24) and rep.dims == (8, 8, 8) and rep.num_rows == 6
  want = np.concatenate([np.sqrt(w) * np.asarray(quantizer.quantize(x, 2).dequantize(), np.float64)
                         for w, x in zip((1 / 9, 4 / 9, 1.0), xs)], axis=1)
  np.testing.assert_allclose(np.asarray(rep.dequantize()), want, rtol=1e-6, atol=1e-7)
  # the concatenation's inner products are the weighted per-layer inner products
  deq = [np.asarray(q.dequantize(), np.float64) for q in rep.layers]
  weighted = sum(w * d @ d.T for w, d in zip((1 / 9, 4 / 9, 1.0), deq))
  np.testing.assert_allclose(want @ want.T, weighted, rtol=1e-12)
  assert rep.nbytes_packed() == sum(q.nbytes_packed() for q in rep.layers)


def test_layered_is_a_pytree_with_static_weights():
  rep = quantizer.quantize_layers([_random((4, 8)), _random((4, 8), seed=1)], 1, scale_mode="row", scale_bits=8)
  out = jax.jit(lambda r: r)(rep)
  assert out.weights == rep.weights and isinstance(out.layers[0].scale, quantizer.ScaleCodes)
  assert len(jax.tree.leaves(rep)) == 2 * 5
