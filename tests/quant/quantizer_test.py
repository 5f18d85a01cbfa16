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
