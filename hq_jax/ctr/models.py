"""CTR backbones of the MPE spec (DNN, DCN, DeepFM, IPNN) over one embedding table, in Flax NNX.

A model is `CTRModel(embedding, backbone)`: the embedding module maps (b, F) global feature ids to (b, F, D)
vectors (full precision here; quantized variants live in `lsq.py`, `mpe.py` and `baselines.py`), and the
backbone maps those vectors to one logit per sample. The interaction formulas (FM second-order term, cross
layer, pairwise inner products) are small pure functions so that they can be tested against NumPy; the
modules only hold parameters.
"""

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

EMBEDDING_INIT_STD = 0.003  # The spec's W ~ N(0, 0.003^2).


class QuantParam(nnx.Param):
  """A quantizer parameter (step sizes, offset, precision logits): learnt, but exempt from the L2 coupling."""


class PostUpdateParam(QuantParam):
  """A quantizer parameter learnt after the step's update of the other parameters, from the loss of the updated
  weights quantized with it, before they are written back: ALPT's step size, which Li et al. 2022 (arXiv
  2212.05735) learn alternately with the weights, in this order in Hetu's ALPT implementation. The trainer
  leaves it out of the step's gradient and gives it a second one, and its own optimizer state
  (`train.make_train_step`). Learnt from the step's own forward pass, on weights kept on its grid, it would
  have a true gradient of 0 (round(w / alpha) - w / alpha is 0 but for rounding), which Adam turns into
  learning-rate-sized steps of rounding noise."""


def fm_second_order(e: jax.Array) -> jax.Array:
  """FM pairwise term 0.5 * sum_d[(sum_f e_fd)^2 - sum_f e_fd^2] of (b, F, D) embeddings -> (b,)."""
  return 0.5 * jnp.sum(jnp.square(jnp.sum(e, axis=1)) - jnp.sum(jnp.square(e), axis=1), axis=-1)


def cross_layer(x0: jax.Array, x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """DCN cross layer x_{l+1} = x0 * (w . x_l) + b + x_l on (batch, d) inputs, w and b of shape (d,)."""
  return x0 * (x @ w)[:, None] + b + x


def pairwise_inner_products(e: jax.Array) -> jax.Array:
  """All <e_i, e_j> for field pairs i < j of (b, F, D) embeddings -> (b, F (F - 1) / 2), row-major order."""
  num_fields = e.shape[1]
  i, j = np.triu_indices(num_fields, k=1)
  gram = jnp.einsum("bfd,bgd->bfg", e, e)
  return gram[:, i, j]


class TableParam(nnx.Param):
  """An embedding table W (N, D): the parameter the sparse table optimizers (`sparse.py`) update by rows."""


class Embedding(nnx.Module):
  """Full-precision table W (N, D), W ~ N(0, 0.003^2); the base of every table whose output for ids depends
  on W only through the rows W[ids]. Subclasses override what differs: `embed_rows` (e.g. a quantizer),
  `regularizer` and `constrain_rows`. The sparse train step gathers the rows itself and calls `embed_rows`,
  so that autodiff sees only the batch's rows, never the whole table."""

  def __init__(self, num_features: int, dim: int, *, rngs: nnx.Rngs):
    self.num_features, self.dim = num_features, dim
    self.table = TableParam(EMBEDDING_INIT_STD * jax.random.normal(rngs.params(), (num_features, dim)))

  def __call__(self, ids: jax.Array) -> jax.Array:
    """(b, F) int ids -> (b, F, D) float32 embeddings."""
    return self.embed_rows(self.table[...][ids], ids)

  def embed_rows(self, rows: jax.Array, ids: jax.Array) -> jax.Array:
    """The embeddings (..., D) of `ids` (...) from their gathered rows (..., D)."""
    del ids
    return rows

  def regularizer(self) -> jax.Array:
    """The method's extra loss term (none for full precision)."""
    return jnp.zeros(())

  def constrain_rows(self, rows: jax.Array, rng: jax.Array) -> jax.Array:
    """Rows after an optimizer step, put back where the method keeps them (ALPT: its integer grid)."""
    del rng
    return rows

  def post_update(self, rng: jax.Array) -> None:
    """Hook run after each dense optimizer update: `constrain_rows` on the whole table."""
    self.table[...] = self.constrain_rows(self.table[...], rng)


class MLP(nnx.Module):
  """Hidden layers Linear -> BatchNorm -> ReLU (dropout 0, as in the spec); returns the last hidden layer.

  The Linear layers have no bias: BatchNorm subtracts the batch mean, so a bias before it has a true gradient
  of exactly 0 and a computed one of rounding noise, which Adam (dividing by sqrt(v) + eps) turns into
  learning-rate-sized steps that differ with every summation order (mesh shape, dense vs sparse updates).
  Training would not see them, but eval mode, normalising by running means that trail them, would
  (../shared/cases/ctr-mesh-changes-auc). BatchNorm's own offset is the layer's bias.
  """

  def __init__(self, in_dim: int, hidden: Sequence[int], *, rngs: nnx.Rngs):
    dims = [in_dim, *hidden]
    self.linears = nnx.List([nnx.Linear(a, b, use_bias=False, rngs=rngs) for a, b in itertools.pairwise(dims)])
    self.norms = nnx.List([nnx.BatchNorm(b, momentum=0.9, rngs=rngs) for b in dims[1:]])
    self.out_dim = dims[-1]

  def __call__(self, x: jax.Array) -> jax.Array:
    for linear, norm in zip(self.linears, self.norms):
      x = jax.nn.relu(norm(linear(x)))
    return x


class DNN(nnx.Module):
  """Flattened embeddings -> MLP -> Linear(1) (the backbone the authors' runs use)."""

  def __init__(self, num_fields: int, dim: int, hidden: Sequence[int], *, rngs: nnx.Rngs):
    self.mlp = MLP(num_fields * dim, hidden, rngs=rngs)
    self.head = nnx.Linear(self.mlp.out_dim, 1, rngs=rngs)

  def __call__(self, e: jax.Array) -> jax.Array:
    return self.head(self.mlp(e.reshape(e.shape[0], -1)))[:, 0]


class DCN(nnx.Module):
  """The MLP in parallel with cross layers, then Linear(1) on the concatenation."""

  def __init__(self, num_fields: int, dim: int, hidden: Sequence[int], num_cross: int = 3, *,
               rngs: nnx.Rngs):
    d = num_fields * dim
    self.mlp = MLP(d, hidden, rngs=rngs)
    init = nnx.initializers.lecun_normal()
    self.cross_w = nnx.List([nnx.Param(init(rngs.params(), (d, 1))[:, 0]) for _ in range(num_cross)])
    self.cross_b = nnx.List([nnx.Param(jnp.zeros((d,))) for _ in range(num_cross)])
    self.head = nnx.Linear(self.mlp.out_dim + d, 1, rngs=rngs)

  def __call__(self, e: jax.Array) -> jax.Array:
    x0 = e.reshape(e.shape[0], -1)
    x = x0
    for w, b in zip(self.cross_w, self.cross_b):
      x = cross_layer(x0, x, w[...], b[...])
    return self.head(jnp.concatenate([self.mlp(x0), x], axis=-1))[:, 0]


class DeepFM(nnx.Module):
  """FM second-order term plus the MLP's logit (no first-order term, as in the spec)."""

  def __init__(self, num_fields: int, dim: int, hidden: Sequence[int], *, rngs: nnx.Rngs):
    self.mlp = MLP(num_fields * dim, hidden, rngs=rngs)
    self.head = nnx.Linear(self.mlp.out_dim, 1, rngs=rngs)

  def __call__(self, e: jax.Array) -> jax.Array:
    return fm_second_order(e) + self.head(self.mlp(e.reshape(e.shape[0], -1)))[:, 0]


class IPNN(nnx.Module):
  """Pairwise field inner products concatenated with the flattened embeddings -> MLP -> Linear(1)."""

  def __init__(self, num_fields: int, dim: int, hidden: Sequence[int], *, rngs: nnx.Rngs):
    num_pairs = num_fields * (num_fields - 1) // 2
    self.mlp = MLP(num_fields * dim + num_pairs, hidden, rngs=rngs)
    self.head = nnx.Linear(self.mlp.out_dim, 1, rngs=rngs)

  def __call__(self, e: jax.Array) -> jax.Array:
    x = jnp.concatenate([e.reshape(e.shape[0], -1), pairwise_inner_products(e)], axis=-1)
    return self.head(self.mlp(x))[:, 0]


BACKBONES = {"dnn": DNN, "dcn": DCN, "deepfm": DeepFM, "ipnn": IPNN}


class CTRModel(nnx.Module):
  """An embedding module (any of this package's tables) followed by a backbone; returns logits (b,)."""

  def __init__(self, embedding: nnx.Module, backbone: nnx.Module):
    self.embedding = embedding
    self.backbone = backbone

  def __call__(self, ids: jax.Array) -> jax.Array:
    return self.backbone(self.embedding(ids))


def make_backbone(name: str, num_fields: int, dim: int, hidden: Sequence[int], *,
                  rngs: nnx.Rngs) -> nnx.Module:
  """The backbone called `name` (one of `BACKBONES`)."""
  if name not in BACKBONES:
    raise ValueError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
  return BACKBONES[name](num_fields, dim, list(hidden), rngs=rngs)
