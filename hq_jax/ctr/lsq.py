"""LSQ+ quantization of embedding rows, with the gradients of the MPE spec (`specs/mpe.md`).

For a bit width b >= 1 the integer range is [lo_b, hi_b] = [-2^(b-1), 2^(b-1) - 1] and

  v = (w - beta) / alpha;   Q_b(w) = alpha * clip(round(v), lo_b, hi_b) + beta,

with round half to even. The backward pass is the straight-through LSQ+ estimator, written out so that the
gradients are exactly the spec's (not whatever autodiff of a rounding trick would give): with
small = [v < lo], big = [v > hi], mid = the rest, g the upstream gradient and s the gradient scale,

  dL/dw = mid * g
  dL/dalpha = sum((small * lo + big * hi + mid * (round(v) - v)) * g) * s
  dL/dbeta_d = sum over rows of ((small + big) * g) * s.

These are LSQ+'s gradients (Bhalgat et al. 2020, arXiv 2004.09576) in the spec's form; `lsq_plus_grads` writes
the per-element terms once, and the three custom_vjps (`lsq_quantize`: one width; `lsq_quantize_rowwise`: a
width per row; `lsq_mixture`: a weighted sum of widths) only sum them.

`s = 1 / sqrt(2^(b-1)) / sqrt(N * D)` uses the WHOLE table size N * D even though only a batch of rows is
quantized: that is what the authors' code does and it keeps the step-size learning rate independent of the
batch size. `alpha` here is the effective (positive) step; callers hold a raw parameter and pass
`effective_step(raw)` = |raw| + 1e-10, so autodiff adds the sign factor as the authors' code does.
"""

import functools
import math

import jax
import jax.numpy as jnp

ALPHA_EPS = 1e-10


def int_range(bits: int) -> tuple[int, int]:
  """The signed integer range [lo, hi] of a `bits`-wide code."""
  if bits < 1:
    raise ValueError(f"bits must be >= 1, got {bits}")
  return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def grad_scale(bits: int, table_size: int) -> float:
  """The spec's s_b = 1 / sqrt(2^(b-1)) / sqrt(N * D) for a table with `table_size` = N * D entries."""
  return 1.0 / math.sqrt(2 ** (bits - 1)) / math.sqrt(table_size)


def init_step(w0: jax.Array, bits: int) -> jax.Array:
  """The spec's initial step 2 * mean|W0| / sqrt(2^(b-1))."""
  return 2.0 * jnp.mean(jnp.abs(w0)) / math.sqrt(2 ** (bits - 1))


def effective_step(raw_alpha: jax.Array) -> jax.Array:
  """The step actually used: |alpha| + 1e-10, so a raw step crossing zero never divides by zero."""
  return jnp.abs(raw_alpha) + ALPHA_EPS


def quantize_codes(w: jax.Array, alpha: jax.Array, beta: jax.Array, bits: int) -> jax.Array:
  """Integer codes clip(round((w - beta) / alpha), lo, hi) as int32 (round half to even)."""
  lo, hi = int_range(bits)
  return jnp.clip(jnp.round((w - beta) / alpha), lo, hi).astype(jnp.int32)


def dequantize(codes: jax.Array, alpha: jax.Array, beta: jax.Array) -> jax.Array:
  """alpha * codes + beta: the inverse of `quantize_codes` on the grid."""
  return alpha * codes.astype(jnp.float32) + beta


def lsq_plus_grads(v: jax.Array, g: jax.Array, lo, hi) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The LSQ+ gradients of the module docstring per element, times the upstream gradient `g` (before the sums
  and the scale s_b): (dL/dw, dL/dalpha terms, dL/dbeta terms), each shaped like `v`.

  The one place the formulas are written (Bhalgat et al. 2020, arXiv 2004.09576): the three custom_vjps below
  call it. `v` = (w - beta) / alpha and `g` share a shape; `lo`, `hi` broadcast against them.
  """
  small, big = v < lo, v > hi
  mid = ~(small | big)
  return (jnp.where(mid, g, 0.0), jnp.where(small, lo, jnp.where(big, hi, jnp.round(v) - v)) * g,
          jnp.where(mid, 0.0, g))


def _fake_quant(v, alpha, beta, lo, hi):
  """alpha * clip(round(v), lo, hi) + beta: the forward value of Q_b at v = (w - beta) / alpha."""
  return alpha * jnp.clip(jnp.round(v), lo, hi) + beta


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def lsq_quantize(w: jax.Array, alpha: jax.Array, beta: jax.Array, bits: int,
                 table_size: int) -> jax.Array:
  """Q_b(w) = alpha * clip(round((w - beta) / alpha), lo_b, hi_b) + beta with the LSQ+ gradients.

  Args:
    w: (..., D) embedding rows (usually only the rows of a batch).
    alpha: scalar effective step (> 0), see `effective_step`.
    beta: (D,) offset shared by all rows.
    bits: the width b >= 1 (static).
    table_size: N * D of the whole table, for the gradient scale s_b (static).

  Returns:
    The quantized rows, same shape as `w`.
  """
  return _lsq_fwd(w, alpha, beta, bits, table_size)[0]


def _lsq_fwd(w, alpha, beta, bits, table_size):
  """Forward pass; the residual is v = (w - beta) / alpha, all the backward pass needs."""
  v = (w - beta) / alpha
  return _fake_quant(v, alpha, beta, *int_range(bits)), (v, alpha, beta)


def _lsq_bwd(bits, table_size, residuals, g):
  """`lsq_plus_grads`, summed over all entries (alpha) and over rows (beta), times s_b."""
  v, alpha, beta = residuals
  s = grad_scale(bits, table_size)
  grad_w, grad_alpha, grad_beta = lsq_plus_grads(v, g, *int_range(bits))
  grad_beta = jnp.sum(grad_beta.reshape(-1, g.shape[-1]), axis=0) * s
  return grad_w, (jnp.sum(grad_alpha) * s).astype(alpha.dtype).reshape(jnp.shape(alpha)), \
      grad_beta.astype(beta.dtype).reshape(jnp.shape(beta))


lsq_quantize.defvjp(_lsq_fwd, _lsq_bwd)


# ---------------------------------------------------------------------------------------------------------
# Vectorised variants for MPE: the same formula and gradients as `lsq_quantize`, computed for several widths
# in one pass (one custom_vjp per width made the search step about twice as slow on CPU).


def _range_arrays(bits: tuple[int, ...], table_size: int):
  lo = jnp.asarray([int_range(b)[0] for b in bits], jnp.float32)
  hi = jnp.asarray([int_range(b)[1] for b in bits], jnp.float32)
  s = jnp.asarray([grad_scale(b, table_size) for b in bits], jnp.float32)
  return lo, hi, s


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def lsq_quantize_rowwise(w: jax.Array, width_index: jax.Array, alphas: jax.Array, beta: jax.Array,
                         bits: tuple[int, ...], table_size: int) -> jax.Array:
  """Each row at its own width: row r is quantized as `lsq_quantize(w[r], alphas[k], beta, bits[k])` with
  k = width_index[r], or set to zero where width_index[r] < 0 (pruned). Gradients as the spec's, summed.

  Args:
    w: (..., D) rows.
    width_index: (...) int index into `bits` of each row, -1 for a pruned row.
    alphas: (K,) effective steps.
    beta: (D,) offset.
    bits: the K widths (each >= 1), static.
    table_size: N * D of the whole table, static.
  """
  return _rowwise_fwd(w, width_index, alphas, beta, bits, table_size)[0]


def _rowwise_fwd(w, width_index, alphas, beta, bits, table_size):
  lo, hi, _ = _range_arrays(bits, table_size)
  k = jnp.maximum(width_index, 0)
  alpha = alphas[k][..., None]
  v = (w - beta) / alpha
  out = jnp.where((width_index >= 0)[..., None], _fake_quant(v, alpha, beta, lo[k][..., None], hi[k][..., None]),
                  0.0)
  return out, (v, width_index)


def _rowwise_bwd(bits, table_size, residuals, g):
  """`lsq_plus_grads` of each row at its width (pruned rows: none), summed per width (alpha) and per column
  (beta), each term times its width's s_b."""
  v, width_index = residuals
  lo, hi, s = _range_arrays(bits, table_size)
  k = jnp.maximum(width_index, 0)
  g = jnp.where((width_index >= 0)[..., None], g, 0.0)
  grad_w, grad_alpha, grad_beta = lsq_plus_grads(v, g, lo[k][..., None], hi[k][..., None])
  one_hot = (width_index[..., None] == jnp.arange(len(bits))).astype(g.dtype)  # (..., K); pruned: 0.
  per_row = jnp.sum(grad_alpha, axis=-1)[..., None] * one_hot
  grad_alpha = jnp.sum(per_row.reshape(-1, len(bits)), axis=0) * s
  grad_beta = jnp.sum((grad_beta * s[k][..., None]).reshape(-1, g.shape[-1]), axis=0)
  return grad_w, None, grad_alpha, grad_beta


lsq_quantize_rowwise.defvjp(_rowwise_fwd, _rowwise_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def lsq_mixture(w: jax.Array, probs: jax.Array, alphas: jax.Array, beta: jax.Array, bits: tuple[int, ...],
                table_size: int) -> jax.Array:
  """sum_k probs[..., k] * Q_{bits[k]}(w): MPE's search forward, in one pass, keeping only w as residual.

  Value and gradients equal those of summing `probs[..., k:k+1] * lsq_quantize(w, alphas[k], beta, bits[k])`
  (the spec's LSQ+ gradients through each Q_b, and dL/dp_k = sum_d g_d Q_k(w)_d); the backward pass
  recomputes the quantized copies from w instead of keeping them.

  Args:
    w: (..., D) rows.
    probs: (..., K) mixture weights of each row.
    alphas: (K,) effective steps.
    beta: (D,) offset.
    bits: the K widths (each >= 1), static.
    table_size: N * D of the whole table, static.
  """
  return _mixture_fwd(w, probs, alphas, beta, bits, table_size)[0]


def _mixture_parts(w, alphas, beta, bits, table_size):
  """v (..., K, D) at every width, the quantized copies q (..., K, D), lo and hi (K, 1) and s (K,)."""
  lo, hi, s = _range_arrays(bits, table_size)
  v = (w[..., None, :] - beta) / alphas[:, None]
  lo, hi = lo[:, None], hi[:, None]
  return v, _fake_quant(v, alphas[:, None], beta, lo, hi), lo, hi, s


def _mixture_fwd(w, probs, alphas, beta, bits, table_size):
  _, q, _, _, _ = _mixture_parts(w, alphas, beta, bits, table_size)
  return jnp.sum(probs[..., None] * q, axis=-2), (w, probs, alphas, beta)


def _mixture_bwd(bits, table_size, residuals, g):
  """`lsq_plus_grads` of each quantized copy with upstream gradient p_k * g, summed over the copies (w), per
  width (alpha) and per column (beta), each term times its width's s_b."""
  w, probs, alphas, beta = residuals
  v, q, lo, hi, s = _mixture_parts(w, alphas, beta, bits, table_size)
  k, d = v.shape[-2], v.shape[-1]
  pg = probs[..., None] * g[..., None, :]  # (..., K, D): upstream gradient of each Q_k.
  grad_w, grad_alpha, grad_beta = lsq_plus_grads(v, pg, lo, hi)
  grad_alpha = jnp.sum(grad_alpha.reshape(-1, k, d), axis=(0, 2)) * s
  grad_beta = jnp.sum(grad_beta.reshape(-1, k, d) * s[:, None], axis=(0, 1))
  grad_probs = jnp.sum(q * g[..., None, :], axis=-1)
  return jnp.sum(grad_w, axis=-2), grad_probs, grad_alpha, grad_beta


lsq_mixture.defvjp(_mixture_fwd, _mixture_bwd)
