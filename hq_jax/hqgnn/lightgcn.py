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
  """Holds E0, the only parameters of LightGCN; users are rows 0..U-1, items rows U..U+I-1."""

  def __init__(self, num_users: int, num_items: int, dim: int, *, init_std: float, rngs: nnx.Rngs):
    self.num_users = num_users
    self.num_items = num_items
    self.embedding = nnx.Param(init_std * jax.random.normal(rngs.params(), (num_users + num_items, dim)))

  def split_nodes(self, nodes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(U + I, d) node matrix -> (users (U, d), items (I, d))."""
    return nodes[: self.num_users], nodes[self.num_users :]


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
