"""LightGCN: the embedding table (a thin NNX module) and the BPR objective (pure functions).

Spec, section Encoder: one table E0 of shape (U + I, d), init N(0, 0.1^2); final embeddings are the mean of
the propagated layers (see `graph.lightgcn_propagate`); score(u, i) = <E_u, E_i>; loss = mean BPR softplus
plus L2 on the layer-0 rows of the batch, `decay * 0.5 * (|e0_u|^2 + |e0_p|^2 + |e0_n|^2)` summed over the
batch and divided by the batch size.
"""

import jax
import jax.numpy as jnp
from flax import nnx


class LightGCN(nnx.Module):
  """Holds E0, the only parameters of LightGCN; users are rows 0..U-1, items rows U..U+I-1.

  With `num_rows` > U + I the table has zero rows appended (the padding rule of `hq_jax.parallel`, so that
  rows divide over a device mesh); no edge, triple or metric touches them. The first U + I rows are the same
  random draw as without padding.
  """

  def __init__(self, num_users: int, num_items: int, dim: int, *, init_std: float, rngs: nnx.Rngs,
               num_rows: int | None = None):
    self.num_users = num_users
    self.num_items = num_items
    e0 = init_std * jax.random.normal(rngs.params(), (num_users + num_items, dim))
    pad = (num_rows or num_users + num_items) - (num_users + num_items)
    if pad < 0:
      raise ValueError(f"num_rows={num_rows} < U + I = {num_users + num_items}")
    self.embedding = nnx.Param(jnp.pad(e0, ((0, pad), (0, 0))) if pad else e0)

  def split_nodes(self, nodes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(..., N, d) node rows -> (users (..., U, d), items (..., I, d)); padding rows dropped."""
    u, i = self.num_users, self.num_items
    return nodes[..., :u, :], nodes[..., u:u + i, :]


def bpr_loss(users: jax.Array, pos: jax.Array, neg: jax.Array, weights: jax.Array | None = None) -> jax.Array:
  """Mean over the batch of softplus(-(<u, p> - <u, n>)); rows with weight 0 (padding) do not count."""
  margin = jnp.sum(users * (pos - neg), axis=-1)
  per_example = jax.nn.softplus(-margin)
  return _weighted_mean(per_example, weights)


def l2_regularizer(e0_users: jax.Array, e0_pos: jax.Array, e0_neg: jax.Array,
                   weights: jax.Array | None = None) -> jax.Array:
  """0.5 * (|e0_u|^2 + |e0_p|^2 + |e0_n|^2) summed over the batch / batch size (times decay by the caller)."""
  per_example = 0.5 * (jnp.sum(e0_users**2, -1) + jnp.sum(e0_pos**2, -1) + jnp.sum(e0_neg**2, -1))
  return _weighted_mean(per_example, weights)


def _weighted_mean(values: jax.Array, weights: jax.Array | None) -> jax.Array:
  if weights is None:
    return jnp.mean(values)
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)
