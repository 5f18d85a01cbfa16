"""LSQ+ forward and gradients against the spec's formulas (NumPy float64) and finite differences."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hq_jax.ctr import lsq


def _reference(w, alpha, beta, bits, table_size, g):
  """The spec, in float64 NumPy: forward value and the three gradients."""
  lo, hi = -2 ** (bits - 1), 2 ** (bits - 1) - 1
  v = (w - beta) / alpha
  out = alpha * np.clip(np.round(v), lo, hi) + beta  # np.round is half to even.
  s = 1 / math.sqrt(2 ** (bits - 1)) / math.sqrt(table_size)
  small, big = (v < lo).astype(float), (v > hi).astype(float)
  mid = 1 - small - big
  return (out, mid * g, np.sum((small * lo + big * hi + mid * (np.round(v) - v)) * g) * s,
          np.sum(((small + big) * g).reshape(-1, w.shape[-1]), axis=0) * s)


CASES = [  # name, bits, alpha, input scale (relative to alpha), rows, whether some entries are clipped
    ("1bit", 1, 0.01, 1.5, 7, True),
    ("2bit", 2, 0.01, 3.0, 9, True),
    ("4bit_nothing_clipped", 4, 0.02, 2.0, 5, False),
    ("6bit", 6, 0.001, 40.0, 11, True),
]


@pytest.mark.parametrize("name,bits,alpha,scale,rows,clipped", CASES, ids=[c[0] for c in CASES])
def test_forward_and_gradients_match_spec(name, bits, alpha, scale, rows, clipped):
  del name
  rng = np.random.default_rng(bits)
  d = 4
  w = rng.normal(size=(rows, d)) * alpha * scale
  beta = rng.normal(size=(d,)) * alpha
  g = rng.normal(size=(rows, d))
  table_size = 1000 * d

  def f(w, alpha, beta):
    return jnp.sum(lsq.lsq_quantize(w, alpha, beta, bits, table_size) * g)

  out = jax.jit(lambda w, a, b: lsq.lsq_quantize(w, a, b, bits, table_size))(
      jnp.float32(w), jnp.float32(alpha), jnp.float32(beta))
  grads = jax.jit(jax.grad(f, argnums=(0, 1, 2)))(jnp.float32(w), jnp.float32(alpha), jnp.float32(beta))
  ref_out, ref_w, ref_alpha, ref_beta = _reference(w, alpha, beta, bits, table_size, g)
  np.testing.assert_allclose(out, ref_out, atol=1e-6 * alpha * scale + 1e-9)
  np.testing.assert_allclose(grads[0], ref_w, atol=1e-6)
  np.testing.assert_allclose(grads[1], ref_alpha, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(grads[2], ref_beta, rtol=1e-4, atol=1e-7)
  # The cases exercise the branches they claim to (otherwise the alpha/beta checks are weak).
  lo, hi = lsq.int_range(bits)
  v = (w - beta) / alpha
  assert np.any((v >= lo) & (v <= hi))
  assert np.any((v < lo) | (v > hi)) == clipped


def test_round_half_to_even():
  w = jnp.array([[0.5, 1.5, 2.5, -0.5, -1.5]])
  out = lsq.lsq_quantize(w, jnp.float32(1.0), jnp.zeros(5), 4, 5)
  np.testing.assert_array_equal(out, [[0.0, 2.0, 2.0, -0.0, -2.0]])


def test_alpha_and_beta_gradients_match_finite_differences_where_clipped():
  """Where every entry is clipped, Q = alpha * (lo or hi) + beta is smooth in alpha and beta, and the
  true derivatives are sum(lo/hi * g) and sum(g); the spec's are those times s_b."""
  bits, table_size = 3, 64
  lo, hi = lsq.int_range(bits)
  w = jnp.array([[-1.0, 2.0], [3.0, -4.0]])  # |v| >> 4 with alpha = 0.05.
  g = jnp.array([[0.3, -0.7], [1.1, 0.2]])
  f = lambda a, b: jnp.sum(lsq.lsq_quantize(w, a, b, bits, table_size) * g)
  a0, b0 = 0.05, jnp.array([0.01, -0.02])
  eps = 1e-3
  fd_alpha = (f(a0 + eps, b0) - f(a0 - eps, b0)) / (2 * eps)
  fd_beta = np.array([(f(a0, b0.at[i].add(eps)) - f(a0, b0.at[i].add(-eps))) / (2 * eps) for i in range(2)])
  s = lsq.grad_scale(bits, table_size)
  ga, gb = jax.grad(f, argnums=(0, 1))(a0, b0)
  np.testing.assert_allclose(ga, fd_alpha * s, rtol=1e-3)
  np.testing.assert_allclose(gb, fd_beta * s, rtol=1e-3)
  np.testing.assert_allclose(fd_alpha, np.sum(np.where(np.asarray(w) > 0, hi, lo) * np.asarray(g)), rtol=1e-3)


def test_effective_step_gradient_carries_sign():
  f = lambda raw: jnp.sum(lsq.lsq_quantize(jnp.array([[5.0]]), lsq.effective_step(raw), jnp.zeros(1), 2, 1))
  gp, gn = jax.grad(f)(0.5), jax.grad(f)(-0.5)
  assert gp == pytest.approx(-gn) and gp != 0


@pytest.mark.parametrize("bits,expected", [(1, 2 * 0.5 / 1.0), (3, 2 * 0.5 / 2.0), (5, 2 * 0.5 / 4.0)])
def test_init_step(bits, expected):
  w0 = jnp.array([[0.5, -0.5], [-0.5, 0.5]])
  assert float(lsq.init_step(w0, bits)) == pytest.approx(expected)


def test_codes_and_dequantize_round_trip():
  w = jnp.array([[0.013, -0.2, 0.05]])
  alpha, beta = jnp.float32(0.01), jnp.array([0.0, 0.001, -0.002])
  codes = lsq.quantize_codes(w, alpha, beta, 4)
  np.testing.assert_array_equal(codes, [[1, -8, 5]])
  np.testing.assert_allclose(lsq.dequantize(codes, alpha, beta), lsq.lsq_quantize(w, alpha, beta, 4, 3),
                             atol=1e-7)


def _per_width_reference_inputs():
  rng = np.random.default_rng(3)
  w = jnp.asarray(rng.normal(size=(5, 3, 4)) * 0.01, jnp.float32)
  alphas = jnp.asarray([0.02, 0.01, 0.004, 0.002], jnp.float32)
  beta = jnp.asarray([0.001, 0.0, -0.002, 0.003], jnp.float32)
  g = jnp.asarray(rng.normal(size=(5, 3, 4)), jnp.float32)
  return w, alphas, beta, g


def test_lsq_mixture_equals_sum_of_single_widths_values_and_gradients():
  w, alphas, beta, g = _per_width_reference_inputs()
  bits = (1, 2, 4, 6)
  probs = jnp.asarray(np.random.default_rng(4).dirichlet(np.ones(4), size=(5, 3)), jnp.float32)
  fast = lambda w, p, a, b: jnp.sum(lsq.lsq_mixture(w, p, a, b, bits, 1000) * g)
  slow = lambda w, p, a, b: sum(jnp.sum(p[..., k:k + 1] * lsq.lsq_quantize(w, a[k], b, bits[k], 1000) * g)
                                for k in range(4))
  args = (w, probs, alphas, beta)
  assert float(jax.jit(fast)(*args)) == pytest.approx(float(slow(*args)), rel=1e-5)
  for got, want in zip(jax.jit(jax.grad(fast, argnums=(0, 1, 2, 3)))(*args),
                       jax.grad(slow, argnums=(0, 1, 2, 3))(*args)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_lsq_quantize_rowwise_equals_per_row_single_widths_values_and_gradients():
  w, alphas, beta, g = _per_width_reference_inputs()
  bits = (1, 2, 4, 6)
  index = jnp.asarray(np.random.default_rng(5).integers(-1, 4, size=(5, 3)), jnp.int32)
  fast = lambda w, a, b: jnp.sum(lsq.lsq_quantize_rowwise(w, index, a, b, bits, 1000) * g)

  def slow(w, a, b):
    total = 0.0
    for i in range(5):
      for j in range(3):
        k = int(index[i, j])
        if k >= 0:
          total = total + jnp.sum(lsq.lsq_quantize(w[i, j], a[k], b, bits[k], 1000) * g[i, j])
    return total

  assert float(jax.jit(fast)(w, alphas, beta)) == pytest.approx(float(slow(w, alphas, beta)), rel=1e-5)
  for got, want in zip(jax.jit(jax.grad(fast, argnums=(0, 1, 2)))(w, alphas, beta),
                       jax.grad(slow, argnums=(0, 1, 2))(w, alphas, beta)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  pruned = np.asarray(index) < 0
  out = np.asarray(lsq.lsq_quantize_rowwise(w, index, alphas, beta, bits, 1000))
  assert pruned.any() and np.all(out[pruned] == 0)
