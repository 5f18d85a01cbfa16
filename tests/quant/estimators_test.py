"""Tests of the STE / GSTE custom_vjps against the spec's formulas (NumPy float64) and autodiff references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest


from hq_jax.quant import estimators
from hq_jax.quant import quantizer

ALL_BITS = (1, 2, 3, 4, 8)
UNIFORM_BITS = (2, 3, 4, 8)


def _data(bits, seed=0, shape=(24, 8)):
  """x with some elements outside the (narrowed) range, qparams, and a random upstream gradient g."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(0.0, 0.1, shape), jnp.float32)
  qparams = estimators.init_qparams(x, bits, num_std=1.5)  # narrow: about 13% of x is clipped
  g = jnp.asarray(rng.normal(0.0, 1.0, shape), jnp.float32)
  return x, qparams, g


def _vjp(x, qparams, delta, g, *, bits, estimator, clip=None):
  """(dL/dx, dL/dqparams, dL/ddelta) for L = <g, x^>, under jit."""

  @jax.jit
  def run(x, qparams, delta, g):
    f = functools.partial(estimators.fake_quant, bits=bits, estimator=estimator, clip=clip)
    _, pullback = jax.vjp(f, x, qparams, delta)
    return pullback(g)

  return run(x, qparams, delta, g)


def _np_support(x, qparams, bits, clip=None):
  x = np.asarray(x, np.float64)
  if bits == 1:
    return np.ones(x.shape, bool) if clip is None else np.abs(x) <= clip
  return (x >= float(qparams["lower"])) & (x <= float(qparams["upper"]))


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("estimator", ["ste", "gste"])
def test_forward_is_the_quantizer(bits, estimator):
  """Bit for bit the plain quantizer compiled the same way; the exported codes dequantize to it.

  A different program (dequantize(quantize(x))) may differ in the last bits: XLA turns a / b into
  a * (1 / b) in some programs and not others, so the step (u - l) / L can differ by an ulp, which q (up to
  L) multiplies. That comparison allows 4 float32 eps of the range's magnitude (absolute: l + q step
  cancels near zero).
  """
  x, qparams, _ = _data(bits)
  xhat = jax.jit(lambda x, q: estimators.fake_quant(x, q, 0.3, bits=bits, estimator=estimator))(x, qparams)
  if bits == 1:
    plain = jax.jit(lambda x, q: quantizer.fake_quant_sign(x, q["scale"]))(x, qparams)
  else:
    plain = jax.jit(lambda x, q: quantizer.fake_quant_uniform(x, q["lower"], q["upper"], bits))(x, qparams)
  np.testing.assert_array_equal(np.asarray(xhat), np.asarray(plain))
  qm = jax.jit(lambda x, q: estimators.to_quantized_matrix(x, q, bits))(x, qparams)
  assert qm.bits == bits
  atol = 4 * float(np.finfo(np.float32).eps) * float(jnp.abs(xhat).max())
  np.testing.assert_allclose(np.asarray(quantizer.dequantize(qm)), np.asarray(xhat), rtol=0, atol=atol)


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("delta_kind", ["scalar", "elementwise"])
def test_gste_with_zero_delta_is_ste_bit_for_bit(bits, delta_kind):
  x, qparams, g = _data(bits, seed=1)
  delta = jnp.zeros(() if delta_kind == "scalar" else x.shape, jnp.float32)
  ste = _vjp(x, qparams, None, g, bits=bits, estimator="ste")
  gste = _vjp(x, qparams, delta, g, bits=bits, estimator="gste")
  np.testing.assert_array_equal(np.asarray(gste[0]), np.asarray(ste[0]))
  for name in qparams:
    np.testing.assert_array_equal(np.asarray(gste[1][name]), np.asarray(ste[1][name]))


@pytest.mark.parametrize("bits", ALL_BITS)
def test_ste_gradient_is_g_on_the_support(bits):
  x, qparams, g = _data(bits, seed=2)
  grad_x = _vjp(x, qparams, None, g, bits=bits, estimator="ste")[0]
  support = _np_support(x, qparams, bits)
  if bits > 1:
    assert 0 < support.sum() < support.size  # the test data does clip some elements
  np.testing.assert_array_equal(np.asarray(grad_x), np.where(support, np.asarray(g), 0.0))


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("delta_kind", ["scalar", "elementwise"])
def test_gste_gradient_matches_formula(bits, delta_kind):
  """dL/dx = g (1 + delta sign(g) (x - x^)) inside the support, 0 outside, in float64."""
  x, qparams, g = _data(bits, seed=3)
  rng = np.random.default_rng(4)
  # Scaled so that delta |x - x^| is O(0.1): |x - x^| <= step / 2 for bits >= 2, O(0.1) for bits == 1.
  size = 5.0 if bits == 1 else 0.5 / float(quantizer.uniform_step(qparams["lower"], qparams["upper"], bits))
  delta = jnp.asarray(size if delta_kind == "scalar" else rng.uniform(0.0, 2 * size, x.shape), jnp.float32)
  grad_x, _, grad_delta = _vjp(x, qparams, delta, g, bits=bits, estimator="gste")
  xhat = np.asarray(estimators.fake_quant(x, qparams, bits=bits), np.float64)  # tested in quantizer_test
  x64, g64, d64 = (np.asarray(a, np.float64) for a in (x, g, delta))
  ref = np.where(_np_support(x, qparams, bits), g64 * (1.0 + d64 * np.sign(g64) * (x64 - xhat)), 0.0)
  assert np.abs(ref - np.where(_np_support(x, qparams, bits), g64, 0.0)).max() > 1e-2  # delta matters
  # float32 x - x^ loses ~1 ulp of x, times delta up to ~1 / step: hence rtol 1e-5.
  np.testing.assert_allclose(np.asarray(grad_x), ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(grad_delta), np.zeros(np.shape(delta)))  # delta is not learned


GSTE_GRAD_CASES = [
    # (name, g, x, x^, delta, expected)
    ("zero_delta", 2.0, 0.3, 0.25, 0.0, 2.0),
    ("positive_g_above", 2.0, 0.3, 0.25, 4.0, 2.0 * (1 + 4.0 * 0.05)),
    ("negative_g_above", -2.0, 0.3, 0.25, 4.0, -2.0 * (1 - 4.0 * 0.05)),
    ("positive_g_below", 2.0, 0.2, 0.25, 4.0, 2.0 * (1 - 4.0 * 0.05)),
    ("zero_g", 0.0, 0.2, 0.25, 4.0, 0.0),
]


@pytest.mark.parametrize("name,g,x,xhat,delta,expected", GSTE_GRAD_CASES, ids=[c[0] for c in GSTE_GRAD_CASES])
def test_gste_grad_golden(name, g, x, xhat, delta, expected):
  del name
  out = jax.jit(estimators.gste_grad)(*(jnp.float32(a) for a in (g, x, xhat, delta)))
  np.testing.assert_allclose(float(out), expected, rtol=1e-6)


def _surrogate_uniform(x, lower, upper, bits):
  """The LSQ-style STE surrogate, l + (t L + stop_gradient(q - t L)) (u - l) / L, differentiated by autodiff."""
  num_levels = 2**bits - 1
  t = jnp.clip((x - lower) / (upper - lower), 0.0, 1.0)
  tl = t * num_levels
  return lower + (tl + jax.lax.stop_gradient(jnp.round(tl) - tl)) * (upper - lower) / num_levels


@pytest.mark.parametrize("bits", UNIFORM_BITS)
@pytest.mark.parametrize("estimator", ["ste", "gste"])
def test_range_gradients_match_autodiff_of_surrogate(bits, estimator):
  x, qparams, g = _data(bits, seed=5)
  _, grad_q, _ = _vjp(x, qparams, jnp.float32(3.0), g, bits=bits, estimator=estimator)
  _, pullback = jax.vjp(lambda l, u: _surrogate_uniform(x, l, u, bits), qparams["lower"], qparams["upper"])
  ref_lower, ref_upper = pullback(g)
  assert abs(float(grad_q["lower"])) > 1e-3 and abs(float(grad_q["upper"])) > 1e-3  # they do reach the range
  np.testing.assert_allclose(float(grad_q["lower"]), float(ref_lower), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(float(grad_q["upper"]), float(ref_upper), rtol=1e-4, atol=1e-5)
  # And the surrogate's dL/dx is the STE's, so the surrogate is the right reference.
  ste_x = _vjp(x, qparams, None, g, bits=bits, estimator="ste")[0]
  sur_x = jax.vjp(lambda x: _surrogate_uniform(x, qparams["lower"], qparams["upper"], bits), x)[1](g)[0]
  np.testing.assert_allclose(np.asarray(ste_x), np.asarray(sur_x), atol=1e-6)


@pytest.mark.parametrize("bits", UNIFORM_BITS)
def test_clipped_range_gradients_match_finite_differences(bits):
  """Where every element is clipped x^ is exactly l or u, so dL/dl and dL/du are true derivatives."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(6)
    x = jnp.asarray(np.concatenate([rng.uniform(-3, -2, 20), rng.uniform(2, 3, 12)]))
    w = jnp.asarray(rng.normal(size=32))
    lower, upper = jnp.float64(-1.0), jnp.float64(1.5)

    def loss(lower, upper):
      return jnp.sum(w * estimators.fake_quant(x, {"lower": lower, "upper": upper}, bits=bits))

    grad_lower, grad_upper = jax.jit(jax.grad(loss, argnums=(0, 1)))(lower, upper)
    eps = 1e-6
    fd_lower = (loss(lower + eps, upper) - loss(lower - eps, upper)) / (2 * eps)
    fd_upper = (loss(lower, upper + eps) - loss(lower, upper - eps)) / (2 * eps)
    np.testing.assert_allclose(float(grad_lower), float(fd_lower), rtol=1e-8)
    np.testing.assert_allclose(float(grad_upper), float(fd_upper), rtol=1e-8)
    np.testing.assert_allclose(float(grad_lower), float(w[:20].sum()), rtol=1e-12)


@pytest.mark.parametrize("estimator", ["ste", "gste"])
@pytest.mark.parametrize("scale_mode", ["matrix", "row"])
def test_one_bit_scale_gradient_matches_finite_differences(estimator, scale_mode):
  """x^ = s sign(x) is linear in s, so dL/ds = sum(g sign(x)) equals the central difference in float64."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=(6, 5)))
    w = jnp.asarray(rng.normal(size=(6, 5)))
    scale = estimators.init_qparams(x, 1, one_bit_scale=scale_mode)["scale"]

    def loss(scale):
      return jnp.sum(w * estimators.fake_quant(x, {"scale": scale}, jnp.float64(2.0), bits=1,
                                               estimator=estimator))

    grad = np.asarray(jax.jit(jax.grad(loss))(scale))
    assert grad.shape == np.shape(scale)
    ref = np.sum(np.asarray(w) * np.where(np.asarray(x) >= 0, 1.0, -1.0), axis=1, keepdims=True)
    np.testing.assert_allclose(grad, ref.sum() if scale_mode == "matrix" else ref, rtol=1e-12)
    e = np.zeros(np.shape(scale))
    e.flat[0] = 1e-6
    fd = (loss(scale + e) - loss(scale - e)) / 2e-6
    np.testing.assert_allclose(grad.flat[0], float(fd), rtol=1e-8)


@pytest.mark.parametrize("estimator", ["ste", "gste"])
def test_one_bit_clip_zeroes_gradient_outside(estimator):
  x = jnp.asarray([[-0.5, -0.1, 0.0, 0.1, 0.5]], jnp.float32)
  g = jnp.ones_like(x)
  qparams = {"scale": jnp.float32(0.2)}
  grad_x = _vjp(x, qparams, jnp.float32(0.0), g, bits=1, estimator=estimator, clip=0.3)[0]
  np.testing.assert_array_equal(np.asarray(grad_x), [[0.0, 1.0, 1.0, 1.0, 0.0]])
  with pytest.raises(ValueError):
    estimators.fake_quant(x, {"lower": 0.0, "upper": 1.0}, bits=2, clip=0.3)


@pytest.mark.parametrize("bits", ALL_BITS)
def test_jit_and_vmap(bits):
  """vmap over a stack of matrices (shared qparams) gives each matrix's own x^ and gradient; the shared
  qparams get the sum of the per-matrix gradients."""
  xs = jnp.stack([_data(bits, seed=s)[0] for s in range(3)])
  qparams = estimators.init_qparams(xs[0], bits, num_std=1.5)
  deltas = jnp.asarray([0.0, 1.0, 4.0], jnp.float32)
  w = jnp.asarray(np.random.default_rng(8).normal(size=xs.shape[1:]), jnp.float32)

  def loss(x, qparams, delta):
    return jnp.sum(w * estimators.fake_quant(x, qparams, delta, bits=bits, estimator="gste") ** 2)

  grad_fn = jax.grad(loss, argnums=(0, 1))
  batched = jax.jit(jax.vmap(grad_fn, in_axes=(0, None, 0)))(xs, qparams, deltas)
  total_q = jax.jit(jax.grad(lambda q: sum(loss(xs[i], q, deltas[i]) for i in range(3))))(qparams)
  for i in range(3):
    gx, gq = jax.jit(grad_fn)(xs[i], qparams, deltas[i])
    np.testing.assert_allclose(np.asarray(batched[0][i]), np.asarray(gx), rtol=1e-6, atol=1e-7)
    for name in qparams:
      np.testing.assert_allclose(np.asarray(batched[1][name][i]), np.asarray(gq[name]), rtol=1e-5, atol=1e-6)
  for name in qparams:
    np.testing.assert_allclose(np.asarray(batched[1][name]).sum(0), np.asarray(total_q[name]), rtol=1e-5,
                               atol=1e-6)


def test_delta_change_does_not_recompile():
  x, qparams, g = _data(4, seed=9)
  traces = []

  @jax.jit
  def grad_x(x, qparams, delta):
    traces.append(1)
    return jax.grad(lambda x: jnp.vdot(g, estimators.fake_quant(x, qparams, delta, bits=4, estimator="gste")))(x)

  a = grad_x(x, qparams, jnp.float32(0.0))
  b = grad_x(x, qparams, jnp.float32(2.0))
  assert len(traces) == 1
  assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_bad_arguments():
  x = jnp.zeros((2, 2))
  with pytest.raises(ValueError):
    estimators.fake_quant(x, {"scale": 1.0}, bits=1, estimator="ewgs")
  with pytest.raises(ValueError):
    estimators.fake_quant(x, {"lower": 0.0, "upper": 1.0}, bits=6)


def test_gaussian_sign_is_bigears_derivative():
  # BiGeaR (arXiv 2206.02115, code src/model.py Normal_Ddelta): g * clamp(a/sqrt(pi) exp(-(a x)^2), 1e-8, 1).
  x = jnp.asarray([-3.0, -0.5, -1e-3, 0.0, 0.2, 2.0, 10.0])
  scale = jnp.asarray(0.7)
  g = jnp.asarray([1.0, -2.0, 0.5, 1.0, 3.0, -1.0, 1.0])
  for a in (1.0, 4.0):
    out, vjp = jax.vjp(lambda x, s: estimators.fake_quant(x, {"scale": s}, bits=1, estimator="gaussian",
                                                          gaussian_a=a), x, scale)
    np.testing.assert_allclose(out, 0.7 * np.where(np.asarray(x) >= 0, 1, -1))
    gx, gs = vjp(g)
    density = np.clip(a / np.sqrt(np.pi) * np.exp(-(a * np.asarray(x, np.float64)) ** 2), 1e-8, 1.0)
    np.testing.assert_allclose(gx, np.asarray(g) * density, rtol=1e-6)
    np.testing.assert_allclose(gs, np.sum(np.asarray(g) * np.where(np.asarray(x) >= 0, 1, -1)), rtol=1e-6)
  with pytest.raises(ValueError, match="gaussian"):
    estimators.fake_quant(x, {"lower": -1.0, "upper": 1.0}, bits=2, estimator="gaussian")
