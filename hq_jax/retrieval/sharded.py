"""Retrieval with the items sharded over a device mesh.

Items are split into equal contiguous shards along the mesh axis "items" (padded to whole blocks per
shard); every device runs the blocked top-K of `scan_search` on its shard under `jax.shard_map`, and
the per-shard (B, K) results are merged into the global top K (lexicographically for keys of several
words, `lex.lex_top_k`). The merge lists shards in row order, so on equal keys the lower row wins, as in
the single-device search; the result is identical to it (rows are mapped to item ids by `search_prepared`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from hq_jax import backend
from hq_jax.retrieval import scoring
from hq_jax.retrieval.lex import lex_top_k
# `hq_jax.retrieval.topk` the attribute is the function (re-exported); import from the module by path.
from hq_jax.retrieval.topk import block_size, blocked, empty_result, prepare_search, scan_search, search_prepared

AXIS = "items"


def item_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh over the first `num_devices` devices (default: all), axis "items"."""
  n = num_devices or jax.device_count()
  return jax.make_mesh((n,), (AXIS,), devices=jax.devices()[:n])


def shard_table(table: scoring.ItemTable, mesh: jax.sharding.Mesh, block_items: int | None = None):
  """Pads and blocks the table so each shard holds whole blocks; places it sharded over the mesh.

  Returns the blocked table (leaves (num_shards * blocks_per_shard, block, ...)) and the items per shard.
  """
  n = mesh.shape[AXIS]
  per_shard = -(-table.num_items // n)
  block = block_size(per_shard, block_items, table.kind)
  blocks_per_shard = -(-per_shard // block)
  shard_items = blocks_per_shard * block
  return jax.device_put(blocked(table.pad_to(n * shard_items), block), NamedSharding(mesh, P(AXIS))), shard_items


@functools.partial(jax.jit, static_argnames=("mesh", "k", "num_items", "shard_items", "item_tile"))
def sharded_search(users, table, rows, cols, *, mesh, k: int, num_items: int, shard_items: int,
                   item_tile: int | None = None):
  """Top-k of `users` over a table placed by `shard_table`: per-shard search, then a global merge."""

  def local(users, table, rows, cols):
    offset = jax.lax.axis_index(AXIS).astype(jnp.int32) * shard_items
    init = jax.lax.pcast(empty_result(users.num_rows, k, table.words), (AXIS,), to="varying")
    vals, ids = scan_search(users, table, rows, cols, offset, k=k, num_items=num_items, init=init,
                            item_tile=item_tile)
    return tuple(v[None] for v in vals), ids[None]

  words = table.words
  vals, ids = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(AXIS), P(), P()),
                            out_specs=((P(AXIS),) * words, P(AXIS)))(users, table, rows, cols)
  # (shards, B, k) -> (B, shards * k), shard 0 first: ties go to the lower row.
  batch = users.num_rows
  replicated = NamedSharding(mesh, P())
  flat = lambda v: jnp.transpose(jax.sharding.reshard(v, replicated), (1, 0, 2)).reshape(batch, -1)
  top, pos = lex_top_k(tuple(flat(v) for v in vals), k)
  out = jnp.take_along_axis(flat(ids), pos, axis=1)
  return top, jnp.where(jnp.isneginf(top[0]), -1, out)


def sharded_topk(user_rep, item_rep, exclude_indptr, exclude_indices, users, k: int, *,
                 mesh: jax.sharding.Mesh | None = None, block_items: int | None = None,
                 batch_users: int | None = None, method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
  """`topk` with the items sharded over `mesh` (default: all devices); same arguments and result (sizes
  left None are the backend's, `hq_jax.backend`)."""
  mesh = mesh or item_mesh()
  users, exclude_indptr, exclude_indices, num_items, prepared, table = prepare_search(
      user_rep, item_rep, exclude_indptr, exclude_indices, users, k, method)
  placed, shard_items = shard_table(table, mesh, block_items)
  fn = functools.partial(sharded_search, mesh=mesh, k=k, num_items=num_items, shard_items=shard_items,
                         item_tile=backend.tunings().item_tile)
  return search_prepared(prepared, placed, num_items, exclude_indptr, exclude_indices, users, k,
                         batch_users=batch_users, search_fn=fn)
