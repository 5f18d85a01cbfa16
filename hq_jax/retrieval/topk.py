"""Top-K over all items for a batch of users, training items excluded, blocked over items.

Memory stays bounded for any item count: items are scanned in blocks of `block_items`, and only a running
(B, K) result is carried between blocks. Inside a block the search is two-level, because on a CPU a full
`lax.top_k` over (B, block) keys costs far more than computing them:

1. keys of the block, with excluded and padding items set to -inf, reduced to the maximum of each group of
   32 consecutive items: (B, block / 32). For the Hamming kind XLA fuses XOR, popcount, masking and the
   maximum into one pass, so (B, block) keys are never written to memory; the matmul kinds score the
   block in tiles of about `TILE` items, so each tile's scores stay in cache until they are reduced.
2. `lax.top_k` over the group maxima picks K groups per user; the K best items of the block are among
   their items. (Proof: if item x's group G is not picked, K picked groups each beat G on (max desc, group
   index asc); each one's best item beats x on (key desc, id asc), so x is not in the top K.)
3. The K * 32 candidate items are rescored from their gathered rows, and `lax.top_k` over them, in
   ascending id order so ties go to the lower id, gives the block's top K; it is merged into the running
   top K (the running entries come first, having lower ids). Integer keys are rescored exactly; float
   keys are re-summed in dimension order, which can differ from the matmul's float32 sum by rounding, so
   for float embeddings the order is exact up to float32 rounding of the inner products (as any float32
   search is).

Exclusions are a per-block bitmask with one uint32 word per group (bit j = item 32 g + j is excluded),
scattered from the users' CSR rows.

Results: `items` (B, K) int32 item ids, -1 where a user has fewer than K eligible items; `scores` (B, K)
float32 ranking keys (see `scoring`), -inf where the id is -1.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from hq_jax.errors import UserError
from hq_jax.retrieval import scoring

GROUP = 32  # items per group = bits of one exclusion mask word
TILE = 1024  # items scored at a time (their (B, TILE) scores stay in cache)


def blocked(table: scoring.ItemTable, block: int) -> scoring.ItemTable:
  """Reshapes every per-item leaf to (num_blocks, block, ...) for `lax.scan`."""
  return jax.tree.map(lambda v: v.reshape((-1, block) + v.shape[1:]), table)


def _exclusion_mask(rows: jax.Array, cols: jax.Array, start: jax.Array, batch: int, block: int) -> jax.Array:
  """(B, block / 32) uint32 bitmask of the excluded items of this block (rows >= batch are padding)."""
  local = cols - start  # cols are global ids, start the block's global id
  inside = (local >= 0) & (local < block) & (rows < batch)
  local = jnp.where(inside, local, 0)
  word = jnp.where(inside, local // GROUP, block // GROUP)  # out of range -> dropped
  bit = jnp.left_shift(jnp.uint32(1), (local % GROUP).astype(jnp.uint32))
  mask = jnp.zeros((batch, block // GROUP), jnp.uint32)
  return mask.at[rows, word].add(bit, mode="drop")  # CSR rows hold no duplicates: add == or


def _lowest(dtype) -> jax.Array:
  """The "removed" key: -inf for float keys, the minimum int32 for integer keys."""
  if jnp.issubdtype(dtype, jnp.integer):
    return jnp.array(jnp.iinfo(dtype).min, dtype)
  return jnp.array(-jnp.inf, dtype)


def _to_float(keys: jax.Array) -> jax.Array:
  """Keys as float32 for `lax.top_k` (its integer path is ~30x slower on CPU); removed -> -inf.

  -0.0 becomes +0.0: `lax.top_k` orders floats totally (+0.0 above -0.0), and equal scores must tie.
  """
  if jnp.issubdtype(keys.dtype, jnp.integer):
    return jnp.where(keys == _lowest(keys.dtype), -jnp.inf, keys.astype(jnp.float32))
  return jnp.where(keys == 0, jnp.zeros((), keys.dtype), keys)


def _group_masked(keys: jax.Array, mask_words: jax.Array, valid: jax.Array) -> jax.Array:
  """keys (B, G, 32) with excluded (mask bit set) or invalid (padding) items set to the lowest key."""
  bits = jnp.right_shift(mask_words[..., None], jnp.arange(GROUP, dtype=jnp.uint32)) & 1
  return jnp.where((bits == 0) & valid, keys, _lowest(keys.dtype))


def _gathered_dot(users: jax.Array, data: jax.Array, groups: jax.Array) -> jax.Array:
  """(B, K, 32) inner products of each user with the items of its chosen groups; data is (G, 32, D).

  Summed one dimension at a time, so XLA fuses the row gather, the products and the sum into one loop
  instead of writing the (B, K, 32, D) gathered rows (as large as a block's scores). int8 codes accumulate
  in int32 (exact); float32 codes of integers are exact in any order.
  """
  acc_dtype = jnp.int32 if data.dtype == jnp.int8 else jnp.float32
  acc = None
  for j in range(users.shape[1]):
    term = users[:, j, None, None].astype(acc_dtype) * data[groups, :, j].astype(acc_dtype)
    acc = term if acc is None else acc + term
  return acc.astype(jnp.float32)


def _candidate_keys(users: jax.Array, block: scoring.ItemTable, groups: jax.Array) -> jax.Array:
  """(B, K, 32) keys of the items of the chosen groups (B, K), recomputed from their gathered rows.

  Recomputing is cheap (K * 32 items per user) and means the block's (B, block) scores never have to
  exist in memory. The per-item terms are applied to the candidates only.
  """
  ng = block.data.shape[0] // GROUP
  per_group = lambda v: None if v is None else v.reshape(ng, GROUP)[groups]
  data = block.data.reshape(ng, GROUP, -1)
  if block.kind == "hamming":
    ham = jnp.sum(jax.lax.population_count(users[:, None, None, :] ^ data[groups]).astype(jnp.int32), axis=-1)
    cand = block.dim - 2 * ham
  else:
    cand = _gathered_dot(users, data, groups)
  return scoring.apply_item_terms(cand, block, per_group(block.a), per_group(block.m), per_group(block.b))


def _group_maxima(users: jax.Array, block: scoring.ItemTable, mask: jax.Array, valid: jax.Array) -> jax.Array:
  """(B, block / 32) maximum key of each group of 32 items, excluded and padding items left out.

  The block is scored tile by tile (`tile_size`), so each tile's (B, tile) scores stay in cache between
  the matmul that writes them and the masked maximum that reads them.
  """
  batch, n = users.shape[0], block.data.shape[0]
  tile = tile_size(n, block.kind)
  tg = tile // GROUP

  def one_tile(xs):
    t, words, ok = xs
    raw = scoring.raw_scores(t.kind, t.dim, users, t.data).reshape(batch, tg, GROUP)
    keys = scoring.apply_item_terms(raw, t, *(None if v is None else v.reshape(tg, GROUP) for v in (t.a, t.m, t.b)))
    return jnp.max(_group_masked(keys, words, ok), axis=-1)

  if tile == n:
    return one_tile((block, mask, valid))
  nt = n // tile
  out = jax.lax.map(one_tile, (blocked(block, tile), mask.reshape(batch, nt, tg).transpose(1, 0, 2),
                               valid.reshape(nt, tg, GROUP)))
  return out.transpose(1, 0, 2).reshape(batch, n // GROUP)


def merge_topk(vals_a, ids_a, vals_b, ids_b, k: int):
  """Top k of the union of two candidate lists; on equal keys the entry listed first (in a, then b) wins.

  Callers list lower item ids first, so ties go to the lower id.
  """
  vals = jnp.concatenate([vals_a, vals_b], axis=1)
  ids = jnp.concatenate([ids_a, ids_b], axis=1)
  top, pos = jax.lax.top_k(vals, k)
  return top, jnp.take_along_axis(ids, pos, axis=1)


def scan_search(users: jax.Array, table: scoring.ItemTable, rows: jax.Array, cols: jax.Array,
                id_offset: jax.Array, *, k: int, num_items: int, init=None):
  """Top-k of `users` (B, D) over a blocked item table: the traceable core of `search_blocks`.

  Args:
    users: prepared user rows (`scoring.prepare_users`).
    table: item table, leaves shaped (num_blocks, block, ...), block a multiple of 32.
    rows, cols: excluded (user row in the batch, global item id) pairs; rows >= B are padding.
    id_offset: global id of the table's first item (traced; nonzero for a shard of the items).
    k: results per user.
    num_items: total real items (global ids >= num_items are padding).
    init: the initial (B, k) running result (default: empty); under `shard_map` it must be cast to
      vary over the mesh axis, like the carry it starts.

  Returns:
    (scores, items): (B, k) float32 and int32 (global ids, -1 where fewer than k eligible items).
  """
  batch = users.shape[0]
  num_blocks, block = table.data.shape[:2]
  ng = block // GROUP
  kg = min(k, ng)

  def body(carry, xs):
    best_vals, best_ids = carry
    blk, j = xs
    start = id_offset + j * block  # global id of the block's first item
    mask = _exclusion_mask(rows, cols, start, batch, block)
    valid = (start + jnp.arange(block).reshape(ng, GROUP)) < num_items
    gmax = _group_maxima(users, blk, mask, valid)  # (B, ng)
    _, groups = jax.lax.top_k(_to_float(gmax), kg)
    groups = jnp.sort(groups, axis=1)  # ascending ids, so top_k's index tie-break = id tie-break
    cand = _candidate_keys(users, blk, groups)
    cand = _group_masked(cand, jnp.take_along_axis(mask, groups, axis=1), valid[groups])
    vals, pos = jax.lax.top_k(_to_float(cand).reshape(batch, kg * GROUP), min(k, kg * GROUP))
    ids = start + jnp.take_along_axis(groups, pos // GROUP, axis=1) * GROUP + pos % GROUP
    return merge_topk(best_vals, best_ids, vals, ids.astype(jnp.int32), k), None

  init = init if init is not None else empty_result(batch, k)
  (vals, ids), _ = jax.lax.scan(body, init, (table, jnp.arange(num_blocks, dtype=jnp.int32)))
  return vals, jnp.where(jnp.isneginf(vals), -1, ids)


def empty_result(batch: int, k: int) -> tuple[jax.Array, jax.Array]:
  return jnp.full((batch, k), -jnp.inf, jnp.float32), jnp.full((batch, k), -1, jnp.int32)


@functools.partial(jax.jit, static_argnames=("k", "num_items"))
def search_blocks(users: jax.Array, table: scoring.ItemTable, rows: jax.Array, cols: jax.Array, *, k: int,
                  num_items: int):
  """Jitted `scan_search` over a whole (unsharded) blocked item table."""
  return scan_search(users, table, rows, cols, jnp.int32(0), k=k, num_items=num_items)


def exclusion_pairs(indptr: np.ndarray, indices: np.ndarray, users: np.ndarray, batch: int,
                    min_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """Flat (row in batch, item id) pairs of `users`' CSR rows, padded to a power of two with row = batch.

  The padding keeps the number of distinct shapes (and so compilations) logarithmic.
  """
  starts, stops = indptr[users], indptr[users + 1]
  lengths = (stops - starts).astype(np.int64)
  total = int(lengths.sum())
  size = max(min_size, 1 << max(total - 1, 0).bit_length())
  rows = np.full(size, batch, np.int32)
  cols = np.zeros(size, np.int32)
  rows[:total] = np.repeat(np.arange(len(users), dtype=np.int32), lengths)
  if total:
    cols[:total] = np.concatenate([indices[a:b] for a, b in zip(starts, stops)])
  return rows, cols


def tile_size(block: int, kind: str) -> int:
  """Items scored at a time inside a block: about TILE, a multiple of 32 that divides the block.

  Hamming blocks are one tile: XLA fuses their XOR, popcount and masked maximum into one pass that never
  writes the scores, and splitting that pass was measured 2x slower.
  """
  if kind == "hamming":
    return block
  tiles = -(-block // TILE)
  return -(-block // (tiles * GROUP)) * GROUP


def block_size(num_items: int, block_items: int, kind: str) -> int:
  """The block actually used: block_items rounded up to whole tiles, at most the (padded) item count."""
  block = min(block_items, -(-num_items // GROUP) * GROUP)
  block = -(-block // GROUP) * GROUP
  tile = tile_size(block, kind)
  return -(-block // tile) * tile


def pad_table(table: scoring.ItemTable, block_items: int) -> tuple[scoring.ItemTable, int]:
  """Pads the table to whole blocks; returns it blocked and the block size used."""
  n = table.num_items
  block = block_size(n, block_items, table.kind)
  padded = -(-n // block) * block
  return blocked(table.pad_to(padded), block), block


def check_topk_args(num_users: int, num_items: int, users: np.ndarray, k: int,
                    exclude_indptr: np.ndarray) -> None:
  if not 1 <= k <= num_items:
    raise UserError(f"k={k} must be between 1 and the number of items ({num_items})")
  if users.size and (users.min() < 0 or users.max() >= num_users):
    raise UserError(f"user ids must lie in [0, {num_users}); got {users.min()}..{users.max()}")
  if exclude_indptr.shape[0] != num_users + 1:
    raise UserError(f"exclusion CSR has {exclude_indptr.shape[0] - 1} rows but there are {num_users} users")


def topk(user_rep: scoring.Rep, item_rep: scoring.Rep, exclude_indptr: np.ndarray, exclude_indices: np.ndarray,
         users: np.ndarray, k: int, *, block_items: int = 65536, batch_users: int = 1024,
         method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
  """Top-k items for `users`, each user's excluded (training) items removed.

  Args:
    user_rep: (num_users, d) float array or QuantizedMatrix: all users.
    item_rep: (num_items, d) of the same kind.
    exclude_indptr, exclude_indices: CSR over all users of the items to exclude (e.g. `data.train`).
    users: (B,) user ids to retrieve for.
    k: results per user (1 <= k <= num_items).
    block_items: items per scanned block (memory: about B * block_items / 8 bytes of mask per block).
    batch_users: users per jitted call (the last batch is padded, so one compilation serves all).
    method: scoring method (see `scoring.ranking_scores`).

  Returns:
    (scores, items): numpy (B, k) float32 ranking keys and int32 item ids, best first, ties by lower id;
    id -1 (key -inf) where a user has fewer than k eligible items.
  """
  users, exclude_indptr, exclude_indices, num_items, prepared, table = prepare_search(
      user_rep, item_rep, exclude_indptr, exclude_indices, users, k, method)
  blocked, _ = pad_table(table, block_items)
  return search_prepared(prepared, blocked, num_items, exclude_indptr, exclude_indices, users, k,
                         batch_users=batch_users)


def prepare_search(user_rep, item_rep, exclude_indptr, exclude_indices, users, k: int, method: str):
  """Validated host arrays plus the prepared user rows and item table shared by `topk` and `sharded_topk`.

  Returns:
    (users int64, exclude_indptr int64, exclude_indices int32, num_items, prepared users, item table).
  """
  users = np.asarray(users, np.int64).reshape(-1)
  exclude_indptr = np.asarray(exclude_indptr, np.int64)
  exclude_indices = np.asarray(exclude_indices, np.int32)
  num_users = int(np.shape(scoring._array(user_rep))[0])
  num_items = int(np.shape(scoring._array(item_rep))[0])
  check_topk_args(num_users, num_items, users, k, exclude_indptr)
  method = scoring.default_method(scoring.rep_bits(user_rep)) if method == "auto" else method
  table = scoring.prepare_items(item_rep, user_rep, method)
  prepared = scoring.prepare_users(user_rep, method)
  return users, exclude_indptr, exclude_indices, num_items, prepared, table


def search_prepared(prepared_users: jax.Array, blocked: scoring.ItemTable, num_items: int,
                    exclude_indptr: np.ndarray, exclude_indices: np.ndarray, users: np.ndarray, k: int, *,
                    batch_users: int = 1024, search_fn=None) -> tuple[np.ndarray, np.ndarray]:
  """`topk` on already prepared users (all of them) and a blocked item table (reused by benchmarks)."""
  search_fn = search_fn or functools.partial(search_blocks, k=k, num_items=num_items)
  batch = min(batch_users, max(len(users), 1))
  out_vals, out_ids = [], []
  for lo in range(0, len(users), batch):
    ids = users[lo:lo + batch]
    padded = np.concatenate([ids, np.zeros(batch - len(ids), np.int64)])
    rows, cols = exclusion_pairs(exclude_indptr, exclude_indices, ids, batch)
    vals, items = search_fn(prepared_users[padded], blocked, jnp.asarray(rows), jnp.asarray(cols))
    out_vals.append(np.asarray(vals)[:len(ids)])
    out_ids.append(np.asarray(items)[:len(ids)])
  if not out_vals:
    return np.zeros((0, k), np.float32), np.zeros((0, k), np.int32)
  return np.concatenate(out_vals), np.concatenate(out_ids)
