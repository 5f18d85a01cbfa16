"""Baseline embedding tables of the MPE comparison: LSQ+ at a fixed width, ALPT and the QR trick.

Each is an NNX module with the interface of `models.Embedding` (`__call__(ids)`, `regularizer()`,
`post_update(rng)`), so the trainer treats all methods alike; LSQ+ and ALPT subclass it.
- `LSQEmbedding`: every row quantized with LSQ+ at one width (6 bits in the authors' comparison).
- `ALPTEmbedding` (adaptive low-precision training, Li et al. 2022, arXiv 2212.05735): the table is kept
  equal to alpha * int8 codes. Each step updates the rows (the forward pass reads them as they are stored),
  then alpha learns from the loss of the updated float rows quantized with it (the LSQ gradient of an 8-bit
  quantizer without offset, through the updated dense layers: `models.PostUpdateParam`,
  `train.make_train_step`), then the updated rows are written back to the grid of the new alpha with
  stochastic rounding (`stochastic_round`), the order of Hetu's ALPT implementation (`ALPTEmbTrainer`).
  (Learnt in the step's own forward pass, on rows already on its grid, alpha would have a true gradient of 0
  and random-walk on rounding noise.) One alpha for the whole table, as `specs/mpe.md` describes the
  baseline; Hetu's implementation learns one per feature, with its own learning rate. For simplicity
  the trainer holds the table as float32 in memory, constrained to that grid after each step; the export
  stores the int8 codes (1 byte per entry) plus alpha. With a sparse table optimizer only
  the batch's rows are written back (on the grid of the current alpha); the other rows keep the grid of the
  alpha of their last update, and the forward pass and the export round them to the current grid.
- `QREmbedding`: quotient-remainder trick, e_x = R[x mod m] * Q[x // m] with m = ceil(N / ratio).
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from hq_jax.ctr import lsq
from hq_jax.ctr.models import EMBEDDING_INIT_STD, Embedding, PostUpdateParam, QuantParam, TableParam


def stochastic_round(x: jax.Array, rng: jax.Array) -> jax.Array:
  """floor(x) + Bernoulli(x - floor(x)): unbiased, E[round(x)] = x."""
  floor = jnp.floor(x)
  return floor + (jax.random.uniform(rng, x.shape, x.dtype) < (x - floor)).astype(x.dtype)


def qr_indices(ids: jax.Array, num_remainder: int) -> tuple[jax.Array, jax.Array]:
  """(x // m, x mod m): the quotient and remainder rows of feature x."""
  return ids // num_remainder, ids % num_remainder


class LSQEmbedding(Embedding):
  """Table W quantized with LSQ+ at one fixed width (one step, one offset vector)."""

  def __init__(self, num_features: int, dim: int, bits: int, *, rngs: nnx.Rngs):
    self.num_features, self.dim, self.bits = num_features, dim, bits
    w0 = EMBEDDING_INIT_STD * jax.random.normal(rngs.params(), (num_features, dim))
    self.table = TableParam(w0)
    self.alpha = QuantParam(lsq.init_step(w0, bits))
    self.beta = QuantParam(jnp.zeros((dim,)))

  def embed_rows(self, rows: jax.Array, ids: jax.Array) -> jax.Array:
    del ids
    return lsq.lsq_quantize(rows, lsq.effective_step(self.alpha[...]), self.beta[...], self.bits,
                            self.num_features * self.dim)


class ALPTEmbedding(Embedding):
  """Embeddings stored as alpha * b-bit integers (b = 8), written back with stochastic rounding; alpha is learnt
  from the updated rows before they are written back (a `PostUpdateParam`)."""

  def __init__(self, num_features: int, dim: int, bits: int = 8, *, rngs: nnx.Rngs):
    self.num_features, self.dim, self.bits = num_features, dim, bits
    w0 = EMBEDDING_INIT_STD * jax.random.normal(rngs.params(), (num_features, dim))
    self.alpha = PostUpdateParam(lsq.init_step(w0, bits))
    self.table = TableParam(self.constrain_rows(w0, rngs.params()))

  def constrain_rows(self, rows: jax.Array, rng: jax.Array) -> jax.Array:
    """alpha * clip(stochastic_round(rows / alpha), lo, hi): rows written back to the integer grid."""
    lo, hi = lsq.int_range(self.bits)
    step = lsq.effective_step(self.alpha[...])
    return step * jnp.clip(stochastic_round(rows / step, rng), lo, hi)

  def codes(self) -> jax.Array:
    """The stored int8 codes (exact with dense updates: the table lies on the grid of the current alpha)."""
    return lsq.quantize_codes(self.table[...], lsq.effective_step(self.alpha[...]), 0.0, self.bits).astype(jnp.int8)

  def embed_rows(self, rows: jax.Array, ids: jax.Array) -> jax.Array:
    """Q(rows) on the grid of the current alpha, with LSQ's gradients. In the step's forward pass the rows are on
    that grid already (the stored values; with a sparse optimizer, rows last written under an older alpha are
    re-rounded); in alpha's own pass they are the updated float rows, from which alpha learns."""
    del ids
    return lsq.lsq_quantize(rows, lsq.effective_step(self.alpha[...]), jnp.zeros((self.dim,)), self.bits,
                            self.num_features * self.dim)


class QREmbedding(nnx.Module):
  """Quotient-remainder embeddings: m = ceil(N / ratio) remainder rows times ceil(N / m) quotient rows."""

  def __init__(self, num_features: int, dim: int, ratio: int = 2, *, rngs: nnx.Rngs):
    self.num_features, self.dim = num_features, dim
    self.num_remainder = math.ceil(num_features / ratio)
    self.num_quotient = math.ceil(num_features / self.num_remainder)
    # The product of two N(0, s^2) entries has std s^2; init both at sqrt(0.003) so e_x ~ 0.003 scale,
    # matching the other tables.
    std = math.sqrt(EMBEDDING_INIT_STD)
    self.remainder = nnx.Param(std * jax.random.normal(rngs.params(), (self.num_remainder, dim)))
    self.quotient = nnx.Param(std * jax.random.normal(rngs.params(), (self.num_quotient, dim)))

  def __call__(self, ids: jax.Array) -> jax.Array:
    q, r = qr_indices(ids, self.num_remainder)
    return self.remainder[...][r] * self.quotient[...][q]

  def regularizer(self) -> jax.Array:
    return jnp.zeros(())

  def post_update(self, rng: jax.Array) -> None:
    del rng

  def stored_floats(self) -> int:
    return (self.num_remainder + self.num_quotient) * self.dim
