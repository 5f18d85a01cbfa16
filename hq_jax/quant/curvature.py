"""Curvature of the loss with respect to the quantized matrices, and the GSTE's delta from it.

HQ-GNN spec, "Gradient estimators" [ours]: delta = max(0, (Tr(H) / N) / (3 std(g))), with H the Hessian of
the loss with respect to one quantized matrix x^ (N its number of elements, g = dL/dx^), Tr(H) by
Hutchinson's estimator (mean over Rademacher v of v^T H v), averaged over a few mini-batches, one delta
per matrix. Beyond the paper, the element-wise variant uses Hutchinson's diagonal diag(H) ~ mean(v * Hv).

Everything here differentiates the loss as a function of x^, the smooth part of the model after the
quantizer. Never take these through the estimators: forward-mode autodiff does not go through a
`jax.custom_vjp`.

Stopping rule (spec: "stop at 50 vectors or when the running mean changes by < 1e-3 relative"): after
k >= min_samples vectors, stop when |m_k - m_{k-1}| <= rtol * |m_k| (m_k the running mean of the samples;
for the diagonal, the same with Euclidean norms of the running-mean vectors), or at k = max_samples.
min_samples (default 5) is ours: it keeps two chance-equal first samples from ending the estimate and
gives the standard error something to work with. We use <= so that a zero Hessian stops too.
The k-th Rademacher vector is drawn from `jax.random.fold_in(key, k)` (k = 0, 1, ...).
"""

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

Mode = Literal["trace", "diagonal"]
DeltaMode = Literal["trace", "diagonal", "fixed"]
MODES = ("trace", "diagonal")


# ----------------------------------------------------------------------------------------------------------
# Hessian-vector products
# ----------------------------------------------------------------------------------------------------------


def _tree_vdot(a: Any, b: Any) -> jax.Array:
  return sum(jnp.vdot(u, w) for u, w in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def hvp(f: Callable[[Any], jax.Array], x: Any, v: Any) -> Any:
  """H v for a scalar f at x, forward-over-reverse (jvp of grad): one extra forward pass' cost."""
  return jax.jvp(jax.grad(f), (x,), (v,))[1]


def hvp_rev_rev(f: Callable[[Any], jax.Array], x: Any, v: Any) -> Any:
  """H v by reverse-over-reverse, grad of <grad f, v>: a reference for `hvp` (costlier in memory)."""
  return jax.grad(lambda y: _tree_vdot(jax.grad(f)(y), v))(x)


def vhv(f: Callable[[Any], jax.Array], x: Any, v: Any) -> jax.Array:
  """v^T H v for a scalar f at x: the second derivative of f along v, forward over forward (jvp of jvp).

  One Hutchinson trace sample without forming H v. For a loss that gathers rows of x (BPR), it needs no
  scatter of gradients into x's shape, which `hvp` does twice (measured on Gowalla sizes:
  results/hqgnn_lowbit.md).
  """
  return jax.jvp(lambda y: jax.jvp(f, (y,), (v,))[1], (x,), (v,))[1]


def block_fn(f: Callable[[Any], jax.Array], xs: Any, index: int) -> Callable[[jax.Array], jax.Array]:
  """f as a function of the `index`-th leaf of the pytree xs, the other leaves held fixed.

  Its Hessian is the diagonal block of f's Hessian for that matrix, e.g. users' block of a loss of
  (users_xhat, items_xhat). Leaves are numbered in `jax.tree.leaves` order.
  """
  leaves, treedef = jax.tree.flatten(xs)

  def f_block(x):
    return f(jax.tree.unflatten(treedef, leaves[:index] + [x] + leaves[index + 1:]))

  return f_block


# ----------------------------------------------------------------------------------------------------------
# Hutchinson estimators
# ----------------------------------------------------------------------------------------------------------


class HutchinsonEstimate(NamedTuple):
  estimate: jax.Array  # mean of the samples: a scalar (trace) or x's shape (diagonal)
  num_samples: jax.Array  # int32, how many Rademacher vectors were used
  stderr: jax.Array  # standard error of the mean, sqrt(sample variance / k); same shape as estimate


def rademacher(key: jax.Array, k: jax.Array | int, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
  """The k-th probe vector, entries +-1 with equal probability, from fold_in(key, k)."""
  size = math.prod(shape)
  bits = jax.random.bits(jax.random.fold_in(key, k), (-(-size // 32),), jnp.uint32)
  # One random bit per entry: 32 entries per generated word (generating one word per entry took 60 ms for a
  # Gowalla item matrix on the 2-core CPU, more than the Hessian-vector product it feeds).
  signs = (bits[:, None] >> jnp.arange(32, dtype=jnp.uint32)) & 1
  return (2 * signs.reshape(-1)[:size].astype(dtype) - 1).reshape(shape)


def _hutchinson(sample_fn: Callable[[jax.Array], jax.Array], sample_shape: tuple[int, ...], dtype,
                *, max_samples: int, rtol: float, min_samples: int) -> HutchinsonEstimate:
  """Running mean (Welford) of sample_fn(k), k = 0, 1, ..., with the module's stopping rule.

  A `lax.while_loop`, so the whole estimate is one compiled loop under `jax.jit`.
  """
  if not 1 <= min_samples <= max_samples:
    raise ValueError(f"need 1 <= min_samples <= max_samples, got {min_samples}, {max_samples}")

  def norm(a):
    return jnp.sqrt(jnp.sum(jnp.square(a)))

  def cond(state):
    k, _, _, converged = state
    return (k < max_samples) & ~converged

  def body(state):
    k, mean, m2, _ = state
    sample = sample_fn(k)
    new_k = k + 1
    change = (sample - mean) / new_k.astype(dtype)
    new_mean = mean + change
    m2 = m2 + (sample - mean) * (sample - new_mean)
    converged = (new_k >= min_samples) & (norm(change) <= rtol * norm(new_mean))
    return new_k, new_mean, m2, converged

  zeros = jnp.zeros(sample_shape, dtype)
  k, mean, m2, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), zeros, zeros, jnp.bool_(False)))
  kf = k.astype(dtype)
  variance = jnp.maximum(m2, 0.0) / jnp.maximum(kf - 1.0, 1.0)  # m2 >= 0 but for rounding
  return HutchinsonEstimate(estimate=mean, num_samples=k, stderr=jnp.sqrt(variance / kf))


def hutchinson_trace(f: Callable[[jax.Array], jax.Array], x: jax.Array, key: jax.Array, *,
                     max_samples: int = 50, rtol: float = 1e-3, min_samples: int = 5) -> HutchinsonEstimate:
  """Tr(H) of a scalar f at the matrix x, as the mean of v^T H v over Rademacher vectors v.

  Unbiased: E[v^T H v] = Tr(H); each sample is one `vhv` (forward over forward). Stops per the module's
  rule. Works under `jax.jit` (f closed over, not an argument).
  """

  def sample(k):
    return vhv(f, x, rademacher(key, k, x.shape, x.dtype))

  return _hutchinson(sample, (), x.dtype, max_samples=max_samples, rtol=rtol, min_samples=min_samples)


def hutchinson_diagonal(f: Callable[[jax.Array], jax.Array], x: jax.Array, key: jax.Array, *,
                        max_samples: int = 50, rtol: float = 1e-3,
                        min_samples: int = 5) -> HutchinsonEstimate:
  """diag(H) of a scalar f at the matrix x, as the mean of v * (H v) over Rademacher vectors v.

  Unbiased: E[v_i (Hv)_i] = H_ii; the stopping rule uses the norm of the running-mean vector.
  Memory is O(size of x), whatever the number of samples (running mean and variance only).
  """

  def sample(k):
    v = rademacher(key, k, x.shape, x.dtype)
    return v * hvp(f, x, v)

  return _hutchinson(sample, x.shape, x.dtype, max_samples=max_samples, rtol=rtol, min_samples=min_samples)


# ----------------------------------------------------------------------------------------------------------
# delta
# ----------------------------------------------------------------------------------------------------------


def gste_delta(trace: jax.Array, num_elements: int, grad: jax.Array) -> jax.Array:
  """The spec's delta = max(0, (Tr(H) / N) / (3 std(g))), std over all N elements of g (ddof 0).

  The mean curvature per element over the gradient's spread: the GSTE's delta * |g| then approximates
  the curvature. Returns 0 when std(g) == 0 (no gradient, nothing to scale).
  """
  std = jnp.std(grad)
  safe_std = jnp.where(std > 0, std, 1.0)
  return jnp.where(std > 0, jnp.maximum(0.0, (trace / num_elements) / (3.0 * safe_std)), 0.0)


def gste_delta_elementwise(diagonal: jax.Array, grad: jax.Array) -> jax.Array:
  """Element-wise delta_j = max(0, H_jj / (3 std(g))) [ours, by analogy with `gste_delta`].

  The per-element curvature replaces the mean Tr(H) / N; std(g) is still over the whole matrix.
  """
  std = jnp.std(grad)
  safe_std = jnp.where(std > 0, std, 1.0)
  return jnp.where(std > 0, jnp.maximum(0.0, diagonal / (3.0 * safe_std)), jnp.zeros_like(diagonal))


class DeltaEstimate(NamedTuple):
  """`estimate_deltas`' result; every field has the structure of xhats (one entry per matrix)."""

  deltas: Any  # the delta to use: scalar (trace) or the matrix's shape (diagonal), mean over batches
  curvature: Any  # (num_batches,) Tr(H) / N estimates, or (num_batches, *shape) diagonal estimates
  stderr: Any  # standard errors of `curvature`, same shapes
  num_samples: Any  # (num_batches,) int32, Rademacher vectors used
  grad_std: Any  # (num_batches,) std(g)


@functools.partial(jax.jit, static_argnames=("loss_fn", "mode", "max_samples", "rtol", "min_samples"))
def _one_batch(loss_fn, xhats, batch, key, *, mode, max_samples, rtol, min_samples):
  """Per-matrix delta, curvature, stderr, samples and std(g) of one batch (flat lists over leaves)."""
  leaves = jax.tree.leaves(xhats)
  grads = jax.tree.leaves(jax.grad(loss_fn)(xhats, batch))
  out = []
  for i, (x, g) in enumerate(zip(leaves, grads)):
    f = block_fn(lambda xs: loss_fn(xs, batch), xhats, i)
    k = jax.random.fold_in(key, i)
    opts = dict(max_samples=max_samples, rtol=rtol, min_samples=min_samples)
    if mode == "trace":
      est = hutchinson_trace(f, x, k, **opts)
      delta = gste_delta(est.estimate, x.size, g)
      curvature, stderr = est.estimate / x.size, est.stderr / x.size
    else:
      est = hutchinson_diagonal(f, x, k, **opts)
      delta = gste_delta_elementwise(est.estimate, g)
      curvature, stderr = est.estimate, est.stderr
    out.append((delta, curvature, stderr, est.num_samples, jnp.std(g)))
  return out


def estimate_deltas(loss_fn: Callable[[Any, Any], jax.Array], xhats: Any, batches: Sequence[Any],
                    key: jax.Array, *, num_batches: int = 3, mode: Mode = "trace", max_samples: int = 50,
                    rtol: float = 1e-3, min_samples: int = 5) -> DeltaEstimate:
  """One GSTE delta per quantized matrix, from Hutchinson curvature averaged over a few batches.

  For each of the first `num_batches` batches and each matrix (leaf of xhats), the Hessian block of
  `loss_fn(xhats, batch)` for that matrix with the others held fixed gives delta by `gste_delta`
  (mode 'trace') or `gste_delta_elementwise` (mode 'diagonal'); the deltas are averaged over batches.

  Args:
    loss_fn: (xhats, batch) -> scalar loss, smooth in xhats (the model after the quantizer). It is a static
      argument of a jitted function: pass the same function object each time (a module-level function,
      or one built once) or every call recompiles.
    xhats: pytree of the quantized matrices, e.g. (users_xhat, items_xhat); curvature is taken here.
    batches: at least `num_batches` batches (pytrees of arrays of equal shapes).
    key: PRNG key for the Rademacher vectors.
    num_batches: how many batches to average over (spec default 3).
    mode: 'trace' (one scalar delta per matrix) or 'diagonal' (element-wise delta).
    max_samples, rtol, min_samples: the Hutchinson stopping rule.

  Returns:
    A `DeltaEstimate` whose fields have xhats' structure.
  """
  if mode not in MODES:
    raise ValueError(f"unknown mode {mode!r} (expected one of {MODES})")
  batches = list(batches)[:num_batches]
  if len(batches) < num_batches:
    raise ValueError(f"need {num_batches} batches, got {len(batches)}")
  per_batch = [_one_batch(loss_fn, xhats, batch, jax.random.fold_in(key, b), mode=mode,
                          max_samples=max_samples, rtol=rtol, min_samples=min_samples)
               for b, batch in enumerate(batches)]
  treedef = jax.tree.structure(xhats)
  fields = []
  for j in range(5):
    stacked = [jnp.stack([per_batch[b][i][j] for b in range(num_batches)])
               for i in range(treedef.num_leaves)]
    fields.append(jax.tree.unflatten(treedef, stacked))
  deltas = jax.tree.map(lambda d: jnp.mean(d, axis=0), fields[0])
  return DeltaEstimate(deltas, *fields[1:])


# ----------------------------------------------------------------------------------------------------------
# Schedule: when and how delta changes during training
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeltaConfig:
  """How the GSTE's delta is set during training."""

  mode: DeltaMode = "trace"  # 'trace' (spec), 'diagonal' (element-wise, ours) or 'fixed'
  fixed_delta: float = 1e-3  # the delta of mode 'fixed', for every matrix
  multiplier: float = 1.0  # Hessian modes: delta = multiplier * the rule's delta (for sweeps, ours)
  every_epochs: int = 10  # T: recompute delta at epochs T, 2T, ... (Hessian modes); it starts at 0
  num_batches: int = 3  # batches averaged per recomputation
  max_samples: int = 50  # Hutchinson: at most this many Rademacher vectors
  rtol: float = 1e-3  # Hutchinson: stop when the running mean changes by <= rtol relative
  min_samples: int = 5  # Hutchinson: never stop before this many vectors (ours)

  def __post_init__(self):
    if self.mode not in ("trace", "diagonal", "fixed"):
      raise ValueError(f"unknown delta mode {self.mode!r}")
    if not self.multiplier >= 0:
      raise ValueError(f"multiplier must be >= 0, got {self.multiplier}")
    if self.every_epochs < 1:
      raise ValueError(f"every_epochs must be >= 1, got {self.every_epochs}")


def initial_deltas(config: DeltaConfig, xhats: Any) -> Any:
  """delta before any curvature estimate: fixed_delta (mode 'fixed'), else 0 (a scalar, or x's shape)."""
  if config.mode == "fixed":
    return jax.tree.map(lambda x: jnp.asarray(config.fixed_delta, jnp.float32), xhats)
  if config.mode == "diagonal":
    return jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), jnp.float32), xhats)
  return jax.tree.map(lambda x: jnp.zeros((), jnp.float32), xhats)


def deltas_due(config: DeltaConfig, epoch: int) -> bool:
  """Whether delta is to be re-estimated before training epoch `epoch` (0-based): epochs T, 2T, ..."""
  return config.mode != "fixed" and epoch > 0 and epoch % config.every_epochs == 0


def update_deltas(config: DeltaConfig, loss_fn: Callable[[Any, Any], jax.Array], xhats: Any,
                  batches: Sequence[Any], key: jax.Array) -> DeltaEstimate:
  """`estimate_deltas` with the config's settings (modes 'trace' and 'diagonal' only)."""
  if config.mode == "fixed":
    raise ValueError("delta mode 'fixed' has nothing to estimate")
  estimate = estimate_deltas(loss_fn, xhats, batches, key, num_batches=config.num_batches, mode=config.mode,
                             max_samples=config.max_samples, rtol=config.rtol, min_samples=config.min_samples)
  if config.multiplier == 1.0:
    return estimate
  return estimate._replace(deltas=jax.tree.map(lambda d: config.multiplier * d, estimate.deltas))
