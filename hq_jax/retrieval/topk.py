"""Top-K over all items for a batch of users, training items excluded, blocked over items.

Memory stays bounded for any item count: items are scanned in blocks of `block_items`, and only a running
(B, K) result is carried between blocks. Inside a block the search is two-level, because on a CPU a full
`lax.top_k` over (B, block) keys costs far more than computing them:

1. keys of the block, with excluded and padding items set to -inf, reduced to the maximum of each group of
   32 consecutive items: (B, block / 32). For the Hamming kind XLA fuses XOR, popcount, masking and the
   maximum into one pass, so (B, block) keys are never written to memory; the other kinds score the
   block in tiles of about `Tunings.item_tile` items (`hq_jax.backend`: 1024 on CPU, so each tile's scores
   stay in cache until they are reduced; the whole block at once on a GPU).
2. `lax.top_k` over the group maxima picks K groups per user; the K best items of the block are among
   their items. (Proof: if item x's group G is not picked, K picked groups each beat G on (max desc, group
   index asc); each one's best item beats x on (key desc, row asc), so x is not in the top K.)
3. The K * 32 candidate items are rescored from their gathered rows, and `lax.top_k` over them, in
   ascending row order so ties go to the lower row, gives the block's top K; it is merged into the running
   top K (the running entries come first, having lower rows). Integer keys are rescored exactly; float
   keys are re-summed in dimension order, which can differ from the matmul's float32 sum by rounding, so
   for float embeddings the order is exact up to float32 rounding of the inner products (as any float32
   search is).

Keys (see `scoring`): one float32 word (exact integers below 2^24, or float embeddings' inner products),
one int32 word (mapped to float32 by the order-preserving `limbs.encode_int32` before `lax.top_k`), or W
float32 words compared lexicographically. For W > 1 every maximum and top-K above is lexicographic:
`lex.lex_max` (the first word's maximum, then the next word's maximum among the entries that tie on the
previous ones) and `lex.lex_top_k` (thresholds word by word, then one small sort), with the same tie rule.

Rows and ids. The search runs over the table's rows; a table may store its items in another order than
their ids (`ItemTable.ids`, the order that breaks integer-key ties exactly, see `scoring`). `search_prepared`
maps the excluded item ids to rows before the search and the result rows back to ids after it.

Exclusions are a per-block bitmask with one uint32 word per group (bit j = row 32 g + j is excluded),
scattered from the users' CSR rows.

Results: `items` (B, K) int32 item ids, -1 where a user has fewer than K eligible items; `scores` (B, K)
float32 ranking keys (see `scoring`; exact below 2^24, rounded above; the order of `items` is always the
exact one), -inf where the id is -1.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from hq_jax import backend
from hq_jax.errors import UserError
from hq_jax.retrieval import lex
from hq_jax.retrieval import limbs as limbs_lib
from hq_jax.retrieval import native
from hq_jax.retrieval import scoring

GROUP = 32  # items per group = bits of one exclusion mask word
TILE = backend.CPU.item_tile  # the CPU's items scored at a time (the backend's: `backend.tunings().item_tile`)
UNROLL_DIMS = 256  # candidate rescoring unrolls over this many dimensions at most, then loops in chunks
DIM_CHUNK = 64


def blocked(table: scoring.ItemTable, block: int) -> scoring.ItemTable:
  """Reshapes every per-item leaf to (num_blocks, block, ...) for `lax.scan`."""
  return jax.tree.map(lambda v: v.reshape((-1, block) + v.shape[1:]), table)


def _exclusion_mask(rows: jax.Array, cols: jax.Array, start: jax.Array, batch: int, block: int) -> jax.Array:
  """(B, block / 32) uint32 bitmask of the excluded rows of this block (rows >= batch are padding)."""
  local = cols - start  # cols are global rows, start the block's first row
  inside = (local >= 0) & (local < block) & (rows < batch)
  local = jnp.where(inside, local, 0)
  word = jnp.where(inside, local // GROUP, block // GROUP)  # out of range -> dropped
  bit = jnp.left_shift(jnp.uint32(1), (local % GROUP).astype(jnp.uint32))
  mask = jnp.zeros((batch, block // GROUP), jnp.uint32)
  return mask.at[rows, word].add(bit, mode="drop")  # CSR rows hold no duplicates: add == or


def _group_masked(keys, mask_words: jax.Array, valid: jax.Array):
  """Key words (B, G, 32) with excluded (mask bit set) or invalid (padding) rows set to the lowest key."""
  bits = jnp.right_shift(mask_words[..., None], jnp.arange(GROUP, dtype=jnp.uint32)) & 1
  keep = (bits == 0) & valid
  return tuple(jnp.where(keep, k, lex.lowest(k.dtype)) for k in keys)


def _gathered_dot(users: jax.Array, data: jax.Array, groups: jax.Array, acc_dtype) -> jax.Array:
  """(B, K, 32) inner products of each user with the rows of its chosen groups; data is (G, 32, D).

  Summed one dimension at a time, so XLA fuses the row gather, the products and the sum into one loop
  instead of writing the (B, K, 32, D) gathered rows (as large as a block's scores); beyond `UNROLL_DIMS`
  dimensions a `fori_loop` over chunks of `DIM_CHUNK` keeps the program small. Integer kinds accumulate in
  int32 (exact: each product is an exact integer below 2^24); float32 codes of integers whose sums stay
  below 2^24 are exact in any order.
  """

  def dims(acc, u, d, count):
    for j in range(count):
      term = u[:, j, None, None].astype(acc_dtype) * d[groups, :, j].astype(acc_dtype)
      acc = term if acc is None else acc + term
    return acc

  dim = users.shape[1]
  if dim <= UNROLL_DIMS:
    return dims(None, users, data, dim)
  full = dim // DIM_CHUNK

  def chunk(c, acc):
    u = jax.lax.dynamic_slice_in_dim(users, c * DIM_CHUNK, DIM_CHUNK, axis=1)
    d = jax.lax.dynamic_slice_in_dim(data, c * DIM_CHUNK, DIM_CHUNK, axis=2)
    return dims(acc, u, d, DIM_CHUNK)

  # The first chunk outside the loop: the carry then has the data's type (e.g. varying under `shard_map`).
  acc = dims(None, users[:, :DIM_CHUNK], data[:, :, :DIM_CHUNK], DIM_CHUNK)
  acc = jax.lax.fori_loop(1, full, chunk, acc)
  return dims(acc, users[:, full * DIM_CHUNK:], data[:, :, full * DIM_CHUNK:], dim - full * DIM_CHUNK)


def _candidate_keys(users: scoring.UserRows, block: scoring.ItemTable, groups: jax.Array):
  """(B, K, 32) key words of the rows of the chosen groups (B, K), recomputed from their gathered rows.

  Recomputing is cheap (K * 32 rows per user) and means the block's (B, block) scores never have to exist
  in memory. The per-item terms are gathered for the candidates only.
  """
  spec = block.spec
  ng = block.num_items // GROUP
  per_group = lambda v: None if v is None else v.reshape((ng, GROUP) + v.shape[1:])[groups]
  raws = []
  for layer, u, d in zip(spec.layers, users.data, block.data):
    data = d.reshape(ng, GROUP, -1)
    if layer.kind == "hamming":
      ham = jnp.sum(jax.lax.population_count(u[:, None, None, :] ^ data[groups]).astype(jnp.int32), axis=-1)
      raws.append(layer.dim - 2 * ham)
    else:
      raws.append(_gathered_dot(u, data, groups, jnp.int32 if layer.raw_is_int else jnp.float32))
  betas, shift = scoring.item_terms(spec, tuple(per_group(b) for b in block.beta), per_group(block.shift))
  return scoring.combine(spec, raws, scoring.user_terms(spec, users.alpha, 2), betas, shift)


def _group_maxima(users: scoring.UserRows, block: scoring.ItemTable, mask: jax.Array, valid: jax.Array,
                  item_tile: int):
  """(B, block / 32) key words: the (lexicographic) maximum of each group of 32 rows, excluded and padding
  rows left out, as float32.

  The block is scored tile by tile (`tile_size`), so on CPU each tile's (B, tile) scores stay in cache
  between the matmul that writes them and the masked maximum that reads them.
  """
  batch, n = users.num_rows, block.num_items
  spec = block.spec
  tile = tile_size(n, block.kind, item_tile)
  if n % tile:  # a table blocked under other tunings than these: score it whole (same result)
    tile = n
  tg = tile // GROUP
  alphas = scoring.user_terms(spec, users.alpha, 1)

  def one_tile(xs):
    t, words, ok = xs
    raws = [scoring.raw_scores(l, u, d) for l, u, d in zip(spec.layers, users.data, t.data)]
    betas, shift = scoring.item_terms(spec, t.beta, t.shift)
    keys = scoring.combine(spec, raws, alphas, betas, shift)
    keys = _group_masked(tuple(k.reshape(batch, tg, GROUP) for k in keys), words, ok)
    return tuple(lex.to_float(m) for m in lex.lex_max(keys))

  if tile == n:
    return one_tile((block, mask, valid))
  nt = n // tile
  out = jax.lax.map(one_tile, (blocked(block, tile), mask.reshape(batch, nt, tg).transpose(1, 0, 2),
                               valid.reshape(nt, tg, GROUP)))
  return tuple(o.transpose(1, 0, 2).reshape(batch, n // GROUP) for o in out)


def scan_search(users: scoring.UserRows, table: scoring.ItemTable, rows: jax.Array, cols: jax.Array,
                id_offset: jax.Array, *, k: int, num_items: int, init=None, item_tile: int | None = None):
  """Top-k of `users` over a blocked item table: the traceable core of `search_blocks`.

  Args:
    users: prepared user rows (`scoring.prepare_users`), B of them.
    table: item table, leaves shaped (num_blocks, block, ...), block a multiple of 32.
    rows, cols: excluded (user row in the batch, global table row) pairs; rows >= B are padding.
    id_offset: global row of the table's first row (traced; nonzero for a shard of the items).
    k: results per user.
    num_items: total real items (global rows >= num_items are padding).
    init: the initial (B, k) running result (default: empty); under `shard_map` it must be cast to
      vary over the mesh axis, like the carry it starts.
    item_tile: items scored at a time (`backend.Tunings.item_tile`; None: the current backend's). Callers
      under `jit` pass it as a static argument, so a compiled search keys on it.

  Returns:
    (key words, rows): a tuple of (B, k) float32 words and (B, k) int32 global rows (-1 where fewer than k
    eligible items).
  """
  batch = users.num_rows
  num_blocks, block = table.data[0].shape[:2]
  ng = block // GROUP
  kg = min(k, ng)
  item_tile = backend.tunings().item_tile if item_tile is None else item_tile

  def body(carry, xs):
    best_vals, best_ids = carry
    blk, j = xs
    start = id_offset + j * block  # global row of the block's first row
    mask = _exclusion_mask(rows, cols, start, batch, block)
    valid = (start + jnp.arange(block).reshape(ng, GROUP)) < num_items
    gmax = _group_maxima(users, blk, mask, valid, item_tile)  # (B, ng) words
    _, groups = lex.lex_top_k(gmax, kg)
    groups = jnp.sort(groups, axis=1)  # ascending rows, so top_k's index tie-break = row tie-break
    cand = _candidate_keys(users, blk, groups)
    cand = _group_masked(cand, jnp.take_along_axis(mask, groups, axis=1), valid[groups])
    cand = tuple(lex.to_float(c).reshape(batch, kg * GROUP) for c in cand)
    vals, pos = lex.lex_top_k(cand, min(k, kg * GROUP))
    ids = start + jnp.take_along_axis(groups, pos // GROUP, axis=1) * GROUP + pos % GROUP
    return lex.merge_topk(best_vals, best_ids, vals, ids.astype(jnp.int32), k), None

  init = init if init is not None else empty_result(batch, k, table.words)
  (vals, ids), _ = jax.lax.scan(body, init, (table, jnp.arange(num_blocks, dtype=jnp.int32)))
  return vals, jnp.where(jnp.isneginf(vals[0]), -1, ids)


def empty_result(batch: int, k: int, words: int = 1):
  return (tuple(jnp.full((batch, k), -jnp.inf, jnp.float32) for _ in range(words)),
          jnp.full((batch, k), -1, jnp.int32))


@functools.partial(jax.jit, static_argnames=("k", "num_items", "item_tile"))
def search_blocks(users: scoring.UserRows, table: scoring.ItemTable, rows: jax.Array, cols: jax.Array, *, k: int,
                  num_items: int, item_tile: int | None = None):
  """Jitted `scan_search` over a whole (unsharded) blocked item table."""
  return scan_search(users, table, rows, cols, jnp.int32(0), k=k, num_items=num_items, item_tile=item_tile)


def exclusion_pairs(indptr: np.ndarray, indices: np.ndarray, users: np.ndarray, batch: int,
                    min_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """Flat (row in batch, item) pairs of `users`' CSR rows, padded to a power of two with row = batch.

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


def tile_size(block: int, kind: str, item_tile: int | None = None) -> int:
  """Items scored at a time inside a block: about `item_tile` (default: the backend's,
  `backend.tunings().item_tile`; 0 = the whole block), a multiple of 32 that divides the block.

  Hamming blocks are one tile: XLA fuses their XOR, popcount and masked maximum into one pass that never
  writes the scores, and splitting that pass was measured 2x slower.
  """
  item_tile = backend.tunings().item_tile if item_tile is None else item_tile
  if kind == "hamming" or item_tile <= 0:
    return block
  tiles = -(-block // item_tile)
  return -(-block // (tiles * GROUP)) * GROUP


def block_size(num_items: int, block_items: int | None, kind: str, item_tile: int | None = None) -> int:
  """The block actually used: block_items (default: the backend's) rounded up to whole tiles, at most the
  (padded) item count."""
  block_items = backend.tunings().block_items if block_items is None else block_items
  block = min(block_items, -(-num_items // GROUP) * GROUP)
  block = -(-block // GROUP) * GROUP
  tile = tile_size(block, kind, item_tile)
  return -(-block // tile) * tile


def pad_table(table: scoring.ItemTable, block_items: int | None = None,
              item_tile: int | None = None) -> tuple[scoring.ItemTable, int]:
  """Pads the table to whole blocks (sizes: see `block_size`); returns it blocked and the block size used."""
  n = table.num_items
  block = block_size(n, block_items, table.kind, item_tile)
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
         users: np.ndarray, k: int, *, block_items: int | None = None, batch_users: int | None = None,
         method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
  """Top-k items for `users`, each user's excluded (training) items removed.

  Args:
    user_rep: (num_users, d) float array, QuantizedMatrix, LayeredQuantized or ProductCodes: all users.
    item_rep: (num_items, d) of the same kind, or ProductCodes under float users (the legal pairs:
      `hq_jax.quant.family`).
    exclude_indptr, exclude_indices: CSR over all users of the items to exclude (e.g. `data.train`).
    users: (B,) user ids to retrieve for.
    k: results per user (1 <= k <= num_items).
    block_items: items per scanned block (memory: about B * block_items / 8 bytes of mask per block);
      default: the backend's (`hq_jax.backend`). JAX search only.
    batch_users: users per jitted call (the last batch is padded, so one compilation serves all); default:
      the backend's. JAX search only.
    method: scoring method (see `scoring.ranking_scores`; 'auto' picks the backend's exact inner product).

  Which search runs is the backend's `retrieval_kernel` (`hq_jax.backend`): on CPU the compiled kernel
  (`hq_jax.retrieval.native`) when it is built, else (and on GPU / TPU, or for integer keys of 2^62 or
  more) the blocked JAX search below.

  Returns:
    (scores, items): numpy (B, k) float32 ranking keys and int32 item ids, best first, ties by lower id
    (exactly the order of the dequantized scores for scalar and layer-wise codes, whichever search; for
    float rows and product codes a float32 evaluation of the decoded rows' inner products: the kernel's
    lane sum, or the JAX search's matmul + rescoring, see `native` and `scoring`); id -1 (key -inf) where a
    user has fewer than k eligible items.
  """
  if backend.tunings().retrieval_kernel == "native" and native.available():
    ids, indptr, indices, _ = validated_args(user_rep, item_rep, exclude_indptr, exclude_indices, users, k)
    native_table = native.prepare_items(item_rep, user_rep, method)
    if native_table is not None:
      return native.search(native.prepare_users(user_rep, native_table), native_table, indptr, indices, ids, k)
  users, exclude_indptr, exclude_indices, num_items, prepared, table = prepare_search(
      user_rep, item_rep, exclude_indptr, exclude_indices, users, k, method)
  blocked_table, _ = pad_table(table, block_items)
  return search_prepared(prepared, blocked_table, num_items, exclude_indptr, exclude_indices, users, k,
                         batch_users=batch_users)


def validated_args(user_rep, item_rep, exclude_indptr, exclude_indices, users, k: int):
  """(users int64, exclude_indptr int64, exclude_indices int32, num_items), checked (`check_topk_args`)."""
  users = np.asarray(users, np.int64).reshape(-1)
  exclude_indptr = np.asarray(exclude_indptr, np.int64)
  exclude_indices = np.asarray(exclude_indices, np.int32)
  num_items = scoring.num_rows(item_rep)
  check_topk_args(scoring.num_rows(user_rep), num_items, users, k, exclude_indptr)
  return users, exclude_indptr, exclude_indices, num_items


def prepare_search(user_rep, item_rep, exclude_indptr, exclude_indices, users, k: int, method: str):
  """Validated host arrays plus the prepared user rows and item table shared by `topk` and `sharded_topk`.

  Returns:
    (users int64, exclude_indptr int64, exclude_indices int32, num_items, prepared users, item table).
  """
  users, exclude_indptr, exclude_indices, num_items = validated_args(user_rep, item_rep, exclude_indptr,
                                                                    exclude_indices, users, k)
  table = scoring.prepare_items(item_rep, user_rep, method)
  prepared = scoring.prepare_users(user_rep, table)
  return users, exclude_indptr, exclude_indices, num_items, prepared, table


def key_values(words, spec: scoring.KeySpec) -> np.ndarray:
  """(B, k) float32 values of the result's key words (exact below 2^24; -inf for removed; +-inf beyond
  float32's range, which wide keys, e.g. row scales spanning 2^+-70, can reach)."""
  words = [np.asarray(w) for w in words]
  if spec.tier == "i32":
    first = words[0]
    out = np.asarray(limbs_lib.decode_int32(jnp.asarray(first))).astype(np.float32)
    return np.where(np.isneginf(first), -np.inf, out).astype(np.float32)
  if len(words) == 1:
    return words[0].astype(np.float32)
  value = np.zeros(words[0].shape, np.float64)
  for w in words:
    value = value * float(1 << limbs_lib.WORD_BITS) + w.astype(np.float64)
  with np.errstate(over="ignore"):  # past float32's range: +-inf, as documented
    return np.where(np.isneginf(words[0]), -np.inf, value).astype(np.float32)


def search_prepared(prepared_users: scoring.UserRows, blocked_table: scoring.ItemTable, num_items: int,
                    exclude_indptr: np.ndarray, exclude_indices: np.ndarray, users: np.ndarray, k: int, *,
                    batch_users: int | None = None, search_fn=None) -> tuple[np.ndarray, np.ndarray]:
  """`topk` on already prepared users (all of them) and a blocked item table (reused by benchmarks).

  Excluded item ids are mapped to table rows first and the result rows back to item ids (`ItemTable.ids`).
  With the backend's `defer_host_copies` every batch is dispatched before any result is copied to the
  host, so the host builds batch b + 1's exclusions while the device searches batch b.
  """
  tunings = backend.tunings()
  batch_users = tunings.batch_users if batch_users is None else batch_users
  search_fn = search_fn or functools.partial(search_blocks, k=k, num_items=num_items, item_tile=tunings.item_tile)
  row_ids = None
  if blocked_table.ids is not None:
    row_ids = np.asarray(blocked_table.ids).reshape(-1)[:num_items]
    row_of = np.empty(num_items, np.int32)
    row_of[row_ids] = np.arange(num_items, dtype=np.int32)
    exclude_indices = row_of[np.asarray(exclude_indices, np.int64)]
  batch = min(batch_users, max(len(users), 1))
  out_vals, out_ids, pending = [], [], []

  def fetch(words, found, n):
    out_vals.append(key_values(words, blocked_table.spec)[:n])
    out_ids.append(np.asarray(found)[:n])

  for lo in range(0, len(users), batch):
    ids = users[lo:lo + batch]
    padded = np.concatenate([ids, np.zeros(batch - len(ids), np.int64)])
    rows, cols = exclusion_pairs(exclude_indptr, exclude_indices, ids, batch)
    words, found = search_fn(prepared_users[padded], blocked_table, jnp.asarray(rows), jnp.asarray(cols))
    if tunings.defer_host_copies:
      pending.append((words, found, len(ids)))
    else:
      fetch(words, found, len(ids))
  for result in pending:
    fetch(*result)
  if not out_vals:
    return np.zeros((0, k), np.float32), np.zeros((0, k), np.int32)
  scores, found = np.concatenate(out_vals), np.concatenate(out_ids)
  if row_ids is not None:
    found = np.where(found >= 0, row_ids[np.maximum(found, 0)], -1).astype(np.int32)
  return scores, found
