"""Straight-through gradient estimators for the quantizers (HQ-GNN spec, "Gradient estimators" [ours]).

The forward pass of every estimator is exactly the quantizer's x^ (`fake_quant_sign` /
`fake_quant_uniform`); only the backward pass differs. With g = dL/dx^ the upstream gradient:

* STE:  dL/dx = g on the support, 0 outside it.
* GSTE: dL/dx = g * (1 + delta * sign(g) * (x - x^)) on the same support, 0 outside it (`gste_grad`).
* Gaussian (BiGeaR's, b = 1 only; Chen et al., KDD 2022, "Learning Binarized Graph Representations with
  Multi-faceted Quantization Reinforcement for Top-K Recommendation", arXiv 2206.02115): the derivative of
  sign is the Dirac delta, approximated by a Gaussian, dL/dx = g * clamp(a / sqrt(pi) * exp(-(a x)^2),
  1e-8, 1) (`gaussian_sign_grad`; a = BiGeaR's `norm_a`, default 1).
  delta >= 0 is an array (a scalar, one per matrix, or x's shape for the element-wise variant) passed as
  a normal argument so that it can change between steps without recompiling; it is not learned, its
  cotangent is zero. With delta = 0 the GSTE gradient is g * 1 = g, bit for bit the STE.

Support and the gradients of the quantizer's own parameters:

* b = 1, x^ = s * sign(x): the support is everything, or |x| <= clip when a clip is given.
  x^ is linear in s, so dL/ds = sum(g * sign(x)) is exact (summed to s's shape: () or (n, 1)).
* b >= 2, uniform on [l, u] with L = 2^b - 1 levels, t = clip((x - l) / (u - l), 0, 1), q = round(t L):
  the support is l <= x <= u. The range gradients are those of the LSQ-style surrogate
  x~ = l + (t L + stop_gradient(q - t L)) (u - l) / L, i.e. round() is the identity in the backward but
  its error q - t L is kept as a constant:
    x < l:        dx^/dl = 1,               dx^/du = 0
    x > u:        dx^/dl = 0,               dx^/du = 1
    l <= x <= u:  dx^/dl = -(q - t L) / L,  dx^/du = (q - t L) / L
  so dL/dl and dL/du each sum g times these over the matrix (and are summed to the shapes of l, u).
  Unlike PACT (which would give the inside elements no range gradient at all), the inside terms let the
  range trade clipping error against rounding error. The GSTE changes only dL/dx, never the range
  gradients.

Product codes (`hq_jax.quant.pq`, ours; issue 22): x^ = decode(encode(x, C), C), each sub-vector replaced by
its nearest codeword. The rules for x are the same STE (g everywhere: every row has a nearest codeword, so
there is no clipping range) and GSTE, with x - x^ the codeword residual and delta from the same curvature
rule (`hq_jax.quant.curvature`, taken of the loss as a function of x^). The codebooks' gradient is exact:
x^ copies codeword (m, k) into every row that chose it, so dL/dC[m, k] = sum of g over those rows
(`pq.codebook_grad`); the GSTE changes only dL/dx. With EMA codebooks (`pq.ema_codebooks`) the caller
stops this gradient and updates them outside the optimizer.

Each rule is a `jax.custom_vjp` (a tiny decorated function plus module-level `_fwd` / `_bwd`), with the
static settings (bits, clip) in `nondiff_argnums`. `fake_quant` is the single entry point that picks one.
Forward-mode autodiff (jvp, hessian) does not go through a custom_vjp: take curvature of the loss as a
function of x^ (see `hq_jax.quant.curvature`).
"""

import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from hq_jax.quant import pq
from hq_jax.quant import quantizer

Estimator = Literal["ste", "gste", "gaussian"]
ESTIMATORS = ("ste", "gste", "gaussian")
QParams = dict[str, jax.Array]  # {'scale'} for bits == 1, {'lower', 'upper'} for bits >= 2


# ----------------------------------------------------------------------------------------------------------
# The formulas, each in one place.
# ----------------------------------------------------------------------------------------------------------


def gste_grad(g: jax.Array, x: jax.Array, xhat: jax.Array, delta: jax.Array) -> jax.Array:
  """The GSTE gradient g * (1 + delta * sign(g) * (x - x^)) (before masking by the support).

  A first-order expansion of the gradient around x^, g(x) ~ g + H (x - x^), with the curvature H
  approximated by delta * |g|. With delta = 0 this returns g unchanged (g * 1.0 is exact).
  """
  return g * (1.0 + delta * jnp.sign(g) * (x - xhat))


def gaussian_sign_grad(g: jax.Array, x: jax.Array, a: float) -> jax.Array:
  """BiGeaR's gradient of sign(x): g * clamp(a / sqrt(pi) * exp(-(a x)^2), 1e-8, 1), a Gaussian stand-in for
  the Dirac delta (its integral over x is 1 before the clamp, as sign's jump of 2 is split over both sides).
  """
  density = a / jnp.sqrt(jnp.pi) * jnp.exp(-jnp.square(a * x))
  return g * jnp.clip(density, 1e-8, 1.0).astype(g.dtype)


def _sum_to_shape(a: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Sums `a` over the axes along which an array of `shape` was broadcast to `a.shape` (unbroadcast)."""
  lead = a.ndim - len(shape)
  axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1 and a.shape[lead + i] != 1)
  return jnp.sum(a, axis=axes, keepdims=True).reshape(shape) if axes else a.reshape(shape)


def sign_support(x: jax.Array, clip: float | None) -> jax.Array:
  """Where the 1-bit STE passes the gradient: everywhere, or |x| <= clip."""
  if clip is None:
    return jnp.ones(x.shape, bool)
  return jnp.abs(x) <= clip


def uniform_range_partials(x: jax.Array, lower: jax.Array, upper: jax.Array,
                           bits: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Element-wise (support, dx^/dl, dx^/du) of the uniform quantizer, round() treated as identity.

  See the module docstring for the derivation; these are the derivatives of the LSQ-style surrogate.
  """
  num_levels = quantizer.levels(bits)
  below = x < lower
  above = x > upper
  inside = ~(below | above)
  t = jnp.clip((x - lower) / (upper - lower), 0.0, 1.0)
  rounding_error = (jnp.round(t * num_levels) - t * num_levels) / num_levels  # (q - t L) / L
  d_lower = jnp.where(below, 1.0, jnp.where(inside, -rounding_error, 0.0)).astype(x.dtype)
  d_upper = jnp.where(above, 1.0, jnp.where(inside, rounding_error, 0.0)).astype(x.dtype)
  return inside, d_lower, d_upper


# ----------------------------------------------------------------------------------------------------------
# b = 1: x^ = s * sign(x)
# ----------------------------------------------------------------------------------------------------------


class _SignResiduals(NamedTuple):
  x: jax.Array  # the input
  scale: jax.Array  # s, () or (n, 1)
  xhat: jax.Array  # s * sign(x), for the GSTE's x - x^


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def ste_sign(x: jax.Array, scale: jax.Array, clip: float | None = None) -> jax.Array:
  """x^ = scale * sign(x) with the STE: dL/dx = g (on |x| <= clip), dL/ds = sum(g * sign(x))."""
  return quantizer.fake_quant_sign(x, scale)


def _ste_sign_fwd(x, scale, clip):
  """Forward pass; keeps x and the scale (x^ only for symmetry with the GSTE)."""
  xhat = quantizer.fake_quant_sign(x, scale)
  return xhat, _SignResiduals(x=x, scale=scale, xhat=xhat)


def _ste_sign_bwd(clip, res: _SignResiduals, g):
  """dL/dx = g on the support; dL/ds = sum(g * sign(x)) reduced to the scale's shape."""
  grad_x = jnp.where(sign_support(res.x, clip), g, jnp.zeros_like(g))
  grad_scale = _sum_to_shape(g * quantizer.sign_codes(res.x), jnp.shape(res.scale))
  return grad_x, grad_scale.astype(res.scale.dtype)


ste_sign.defvjp(_ste_sign_fwd, _ste_sign_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def gste_sign(x: jax.Array, scale: jax.Array, delta: jax.Array, clip: float | None = None) -> jax.Array:
  """x^ = scale * sign(x) with the GSTE: dL/dx = g (1 + delta sign(g) (x - x^)) on the support."""
  return quantizer.fake_quant_sign(x, scale)


def _gste_sign_fwd(x, scale, delta, clip):
  """Forward pass; keeps x, the scale, x^ and delta."""
  xhat = quantizer.fake_quant_sign(x, scale)
  return xhat, (_SignResiduals(x=x, scale=scale, xhat=xhat), delta)


def _gste_sign_bwd(clip, residuals, g):
  """GSTE gradient for x on the support, the STE's dL/ds, and a zero cotangent for delta."""
  res, delta = residuals
  grad_x = jnp.where(sign_support(res.x, clip), gste_grad(g, res.x, res.xhat, delta), jnp.zeros_like(g))
  grad_scale = _sum_to_shape(g * quantizer.sign_codes(res.x), jnp.shape(res.scale))
  return grad_x, grad_scale.astype(res.scale.dtype), jnp.zeros_like(delta)


gste_sign.defvjp(_gste_sign_fwd, _gste_sign_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def gaussian_sign(x: jax.Array, scale: jax.Array, a: float = 1.0) -> jax.Array:
  """x^ = scale * sign(x) with BiGeaR's Gaussian derivative of sign for x; dL/ds = sum(g * sign(x))."""
  return quantizer.fake_quant_sign(x, scale)


def _gaussian_sign_fwd(x, scale, a):
  """Forward pass; keeps x and the scale."""
  xhat = quantizer.fake_quant_sign(x, scale)
  return xhat, _SignResiduals(x=x, scale=scale, xhat=xhat)


def _gaussian_sign_bwd(a, res: _SignResiduals, g):
  """dL/dx by `gaussian_sign_grad`; the scale's gradient as the STE's (x^ is linear in s)."""
  grad_scale = _sum_to_shape(g * quantizer.sign_codes(res.x), jnp.shape(res.scale))
  return gaussian_sign_grad(g, res.x, a), grad_scale.astype(res.scale.dtype)


gaussian_sign.defvjp(_gaussian_sign_fwd, _gaussian_sign_bwd)


# ----------------------------------------------------------------------------------------------------------
# b >= 2: uniform on [lower, upper]
# ----------------------------------------------------------------------------------------------------------


class _UniformResiduals(NamedTuple):
  x: jax.Array  # the input
  lower: jax.Array  # l
  upper: jax.Array  # u
  xhat: jax.Array  # l + q (u - l) / L, for the GSTE's x - x^


def _uniform_range_grads(res: _UniformResiduals, bits: int, g: jax.Array):
  """(support, dL/dl, dL/du) shared by the STE and the GSTE."""
  inside, d_lower, d_upper = uniform_range_partials(res.x, res.lower, res.upper, bits)
  grad_lower = _sum_to_shape(g * d_lower, jnp.shape(res.lower)).astype(res.lower.dtype)
  grad_upper = _sum_to_shape(g * d_upper, jnp.shape(res.upper)).astype(res.upper.dtype)
  return inside, grad_lower, grad_upper


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def ste_uniform(x: jax.Array, lower: jax.Array, upper: jax.Array, bits: int) -> jax.Array:
  """x^ = uniform b-bit quantization of x on [lower, upper] with the STE and LSQ-style range gradients."""
  return quantizer.fake_quant_uniform(x, lower, upper, bits)


def _ste_uniform_fwd(x, lower, upper, bits):
  """Forward pass; keeps x, the range and x^."""
  xhat = quantizer.fake_quant_uniform(x, lower, upper, bits)
  return xhat, _UniformResiduals(x=x, lower=lower, upper=upper, xhat=xhat)


def _ste_uniform_bwd(bits, res: _UniformResiduals, g):
  """dL/dx = g inside [l, u], 0 outside; range gradients as in the module docstring."""
  inside, grad_lower, grad_upper = _uniform_range_grads(res, bits, g)
  return jnp.where(inside, g, jnp.zeros_like(g)), grad_lower, grad_upper


ste_uniform.defvjp(_ste_uniform_fwd, _ste_uniform_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def gste_uniform(x: jax.Array, lower: jax.Array, upper: jax.Array, delta: jax.Array,
                 bits: int) -> jax.Array:
  """Uniform b-bit quantization with the GSTE for x (STE range gradients; delta gets zero)."""
  return quantizer.fake_quant_uniform(x, lower, upper, bits)


def _gste_uniform_fwd(x, lower, upper, delta, bits):
  """Forward pass; keeps x, the range, x^ and delta."""
  xhat = quantizer.fake_quant_uniform(x, lower, upper, bits)
  return xhat, (_UniformResiduals(x=x, lower=lower, upper=upper, xhat=xhat), delta)


def _gste_uniform_bwd(bits, residuals, g):
  """GSTE gradient for x inside [l, u] (0 outside), the STE's range gradients, zero for delta."""
  res, delta = residuals
  inside, grad_lower, grad_upper = _uniform_range_grads(res, bits, g)
  grad_x = jnp.where(inside, gste_grad(g, res.x, res.xhat, delta), jnp.zeros_like(g))
  return grad_x, grad_lower, grad_upper, jnp.zeros_like(delta)


gste_uniform.defvjp(_gste_uniform_fwd, _gste_uniform_bwd)


# ----------------------------------------------------------------------------------------------------------
# Product codes: x^ = decode(encode(x, C), C)
# ----------------------------------------------------------------------------------------------------------


class _ProductResiduals(NamedTuple):
  x: jax.Array  # the input (n, d)
  codes: jax.Array  # (n, M) uint8, the chosen codewords
  xhat: jax.Array  # the decoded rows, for the GSTE's codeword residual x - x^
  codebooks: jax.Array  # (M, K, d / M), for K and the dtype of its cotangent


def _pq_forward(x, codebooks):
  codes = pq.encode(x, codebooks)
  return pq.decode(codes, codebooks).astype(x.dtype), codes


def _codebook_cotangent(res: _ProductResiduals, g):
  return pq.codebook_grad(g, res.codes, res.codebooks.shape[1]).astype(res.codebooks.dtype)


@jax.custom_vjp
def ste_pq(x: jax.Array, codebooks: jax.Array) -> jax.Array:
  """x^ = decode(encode(x, C), C) with the STE: dL/dx = g, dL/dC = `pq.codebook_grad` (exact)."""
  return _pq_forward(x, codebooks)[0]


def _ste_pq_fwd(x, codebooks):
  """Forward pass; keeps x, the codes, x^ and the codebooks."""
  xhat, codes = _pq_forward(x, codebooks)
  return xhat, _ProductResiduals(x=x, codes=codes, xhat=xhat, codebooks=codebooks)


def _ste_pq_bwd(res: _ProductResiduals, g):
  """dL/dx = g; dL/dC = the sum of g over the rows that chose each codeword."""
  return g, _codebook_cotangent(res, g)


ste_pq.defvjp(_ste_pq_fwd, _ste_pq_bwd)


@jax.custom_vjp
def gste_pq(x: jax.Array, codebooks: jax.Array, delta: jax.Array) -> jax.Array:
  """x^ = decode(encode(x, C), C) with the GSTE: dL/dx = g (1 + delta sign(g) (x - x^)), dL/dC as the STE's."""
  return _pq_forward(x, codebooks)[0]


def _gste_pq_fwd(x, codebooks, delta):
  """Forward pass; keeps x, the codes, x^, the codebooks and delta."""
  xhat, codes = _pq_forward(x, codebooks)
  return xhat, (_ProductResiduals(x=x, codes=codes, xhat=xhat, codebooks=codebooks), delta)


def _gste_pq_bwd(residuals, g):
  """`gste_grad` with the codeword residual for x, the STE's codebook gradient, a zero cotangent for delta."""
  res, delta = residuals
  return gste_grad(g, res.x, res.xhat, delta), _codebook_cotangent(res, g), jnp.zeros_like(delta)


gste_pq.defvjp(_gste_pq_fwd, _gste_pq_bwd)


def fake_quant_pq(x: jax.Array, codebooks: jax.Array, delta: jax.Array | None = None, *,
                  estimator: Estimator = "ste") -> jax.Array:
  """Product-code quantize-dequantize of x (n, d) with codebooks (M, K, d / M): forward exactly
  `pq.decode(pq.encode(x, C), C)`, backward the STE or the GSTE (delta None = 0; scalar or x's shape)."""
  if estimator == "ste":
    return ste_pq(x, codebooks)
  if estimator == "gste":
    delta = jnp.zeros((), x.dtype) if delta is None else jnp.asarray(delta, x.dtype)
    return gste_pq(x, codebooks, delta)
  raise ValueError(f"product codes take the ste or gste estimator, got {estimator!r}")


# ----------------------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------------------


def init_qparams(x: jax.Array, bits: int, *, one_bit_scale: quantizer.ScaleMode = "matrix",
                 num_std: float = 3.0) -> QParams:
  """Initial quantizer parameters of a matrix: {'scale': mean |x|} or {'lower', 'upper': mean -+ k std}."""
  quantizer.check_bits(bits)
  x = jnp.asarray(x)
  if bits == 1:
    return {"scale": quantizer.sign_scale(x, one_bit_scale)}
  lower, upper = quantizer.init_range(x, num_std)
  return {"lower": lower, "upper": upper}


def fake_quant(x: jax.Array, qparams: QParams, delta: jax.Array | None = None, *, bits: int,
               estimator: Estimator = "ste", clip: float | None = None, gaussian_a: float = 1.0) -> jax.Array:
  """Quantize-dequantize x (forward = the quantizer's x^ exactly) with the chosen gradient rule.

  Args:
    x: (n, d) float matrix (any shape works).
    qparams: {'scale'} (bits == 1; () or (n, 1)) or {'lower', 'upper'} (bits >= 2; scalars).
    delta: the GSTE's delta, a scalar or x's shape; None means 0. Ignored by the STE.
    bits: 1, 2, 3, 4 or 8 (static).
    estimator: 'ste', 'gste' or 'gaussian' (BiGeaR's, bits == 1 only) (static).
    clip: bits == 1 only: zero dL/dx where |x| > clip (None: never).
    gaussian_a: the Gaussian estimator's a (BiGeaR's norm_a).

  Returns:
    x^, same shape and dtype as x.
  """
  quantizer.check_bits(bits)
  if estimator not in ESTIMATORS:
    raise ValueError(f"unknown estimator {estimator!r} (expected one of {ESTIMATORS})")
  if clip is not None and bits != 1:
    raise ValueError("clip applies to bits == 1 only (bits >= 2 clip at the learned range)")
  if estimator == "gaussian":
    if bits != 1 or clip is not None:
      raise ValueError("the gaussian estimator (BiGeaR's) applies to bits == 1 without clip only")
    return gaussian_sign(x, qparams["scale"], gaussian_a)
  if estimator == "gste":
    delta = jnp.zeros((), x.dtype) if delta is None else jnp.asarray(delta, x.dtype)
  if bits == 1:
    if estimator == "ste":
      return ste_sign(x, qparams["scale"], clip)
    return gste_sign(x, qparams["scale"], delta, clip)
  if estimator == "ste":
    return ste_uniform(x, qparams["lower"], qparams["upper"], bits)
  return gste_uniform(x, qparams["lower"], qparams["upper"], delta, bits)


def to_quantized_matrix(x: jax.Array, qparams: QParams, bits: int) -> quantizer.QuantizedMatrix:
  """The integer codes of x under qparams, for export and retrieval (dequantizes to `fake_quant`'s x^)."""
  if bits == 1:
    return quantizer.quantize(x, 1, scale=qparams["scale"])
  return quantizer.quantize(x, bits, lower=qparams["lower"], upper=qparams["upper"])
