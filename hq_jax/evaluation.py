"""Full-ranking top-K evaluation, the LightGCN protocol (HQ-GNN spec, section "Evaluation").

For every user with at least one test item, all items are scored, the user's training items are excluded,
and the top max(K) items are taken. Then, per user u with test set T_u and hit indicator h_r at rank r
(0-based) of the ranked list:

  Recall@K = sum_{r<K} h_r / |T_u|
  NDCG@K   = DCG@K / IDCG@K,  DCG@K = sum_{r<K} h_r / log2(r + 2),  IDCG@K = sum_{r<min(|T_u|, K)} 1 / log2(r + 2)

both averaged over the users with |T_u| >= 1. These are the formulas of the LightGCN reference code
(`utils.RecallPrecision_ATk`, `utils.NDCGatK_r`); they live in `recall_ndcg_at_k` and nowhere else.

Scoring runs in fixed-shape user batches (the last one padded) so that one jitted function is compiled per
dataset and reused across evaluations, e.g. every few epochs of training. Per batch the host sends only
flat (row, item) lists of the batch's train and test pairs; the dense (B, I) masks are scattered on device.
A training item is never a hit, even when a (malformed) split lists it in both train and test: it still
counts in |T_u|, as in the reference code, where it is ranked last.

Float embeddings are scored by <e_u, e_i>. A `QuantizedMatrix` pair is scored from its integer codes by
`hq_jax.retrieval.ranking_scores` (imported only then), as the spec asks ("rank with the quantized
representation"). Ties are broken by the lower item id (`lax.top_k`'s documented order; tested).
"""

import functools
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hq_jax.data.interactions import CSR, InteractionData
from hq_jax.errors import UserError
from hq_jax.quant.quantizer import QuantizedMatrix

DEFAULT_KS = (20, 50)
DEFAULT_BATCH_SIZE = 1024

# Keys of an exported-embeddings .npz (see `load_embeddings`).
FLOAT_KEYS = ("user_embeddings", "item_embeddings")
QUANTIZED_KEYS = ("bits", "user_codes", "item_codes", "user_scale", "user_offset", "item_scale",
                  "item_offset")

Representation = jax.Array | np.ndarray | QuantizedMatrix


# ----------------------------------------------------------------------------------------------------------
# Metrics on ranked lists (pure, jittable)
# ----------------------------------------------------------------------------------------------------------


def rank_discounts(k: int) -> jax.Array:
  """1 / log2(r + 2) for ranks r = 0..k-1: the DCG weight of a hit at each rank."""
  return 1.0 / jnp.log2(jnp.arange(k, dtype=jnp.float32) + 2.0)


def recall_ndcg_at_k(topk_items: jax.Array, test_mask: jax.Array, ks: Sequence[int],
                     num_test: jax.Array | None = None) -> dict[str, jax.Array]:
  """Per-user Recall@K and NDCG@K of ranked item lists.

  Args:
    topk_items: (B, Kmax) int item ids, best first, Kmax >= max(ks).
    test_mask: (B, I) bool, True where the item is one of the user's test items (and may count as a hit).
    ks: cutoffs (static under jit).
    num_test: (B,) |T_u|, the recall denominator and the IDCG length. Default: `test_mask.sum(-1)`. Pass it
      when `test_mask` has had items removed that must still count in |T_u| (test items that are also
      training items, excluded from the ranking).

  Returns:
    {"recall@K": (B,), "ndcg@K": (B,)} float32 for every K; users with |T_u| = 0 get 0 for both.
  """
  ks = tuple(int(k) for k in ks)
  kmax = max(ks)
  if topk_items.shape[-1] < kmax:
    raise ValueError(f"topk_items has {topk_items.shape[-1]} columns, fewer than max(ks)={kmax}")
  hits = jnp.take_along_axis(test_mask, topk_items[:, :kmax], axis=1).astype(jnp.float32)
  if num_test is None:
    num_test = jnp.sum(test_mask, axis=-1)
  num_test = jnp.asarray(num_test).astype(jnp.float32)
  discounts = rank_discounts(kmax)
  has_test = num_test > 0
  out = {}
  for k in ks:
    num_hits = jnp.sum(hits[:, :k], axis=1)
    dcg = hits[:, :k] @ discounts[:k]
    ideal_len = jnp.minimum(num_test, k)
    idcg = jnp.sum(jnp.where(jnp.arange(k) < ideal_len[:, None], discounts[:k], 0.0), axis=1)
    out[f"recall@{k}"] = jnp.where(has_test, num_hits / jnp.maximum(num_test, 1.0), 0.0)
    out[f"ndcg@{k}"] = jnp.where(has_test, dcg / jnp.where(has_test, idcg, 1.0), 0.0)
  return out


# ----------------------------------------------------------------------------------------------------------
# Scoring and masked top-K on one batch of users (jitted)
# ----------------------------------------------------------------------------------------------------------


def float_scores(user_rows: jax.Array, item_rep: jax.Array) -> jax.Array:
  """<e_u, e_i> for a batch of users against all items, (B, I)."""
  return jnp.dot(user_rows, item_rep.T, precision=jax.lax.Precision.HIGHEST)


def _lowest(dtype) -> jax.Array:
  """A score below every real score: -inf for floats, the minimum for integers."""
  if jnp.issubdtype(dtype, jnp.floating):
    return jnp.array(-jnp.inf, dtype)
  return jnp.array(jnp.iinfo(dtype).min, dtype)


def _pairs_mask(rows: jax.Array, cols: jax.Array, shape: tuple[int, int]) -> jax.Array:
  """Dense (B, I) bool mask, True at (rows[j], cols[j]); rows >= B are padding and dropped."""
  return jnp.zeros(shape, bool).at[rows, cols].set(True, mode="drop")


def _masked_topk(user_rep, item_rep, users, train_rows, train_cols, *, k: int,
                 score_fn: Callable) -> tuple[jax.Array, jax.Array]:
  """Top-k item ids per user with training items excluded; also returns the (B, I) exclusion mask."""
  scores = score_fn(user_rep[users], item_rep)
  if jnp.issubdtype(scores.dtype, jnp.unsignedinteger):
    scores = scores.astype(jnp.int32)  # so that the exclusion value sits strictly below a score of 0
  if jnp.issubdtype(scores.dtype, jnp.floating):
    # top_k orders floats totally (+0.0 above -0.0); make equal scores tie so the lower id wins.
    scores = jnp.where(scores == 0, jnp.zeros((), scores.dtype), scores)
  excluded = _pairs_mask(train_rows, train_cols, scores.shape)
  scores = jnp.where(excluded, _lowest(scores.dtype), scores)
  _, items = jax.lax.top_k(scores, k)
  return items, excluded


@functools.partial(jax.jit, static_argnames=("k", "score_fn"))
def _topk_batch(user_rep, item_rep, users, train_rows, train_cols, *, k, score_fn):
  items, _ = _masked_topk(user_rep, item_rep, users, train_rows, train_cols, k=k, score_fn=score_fn)
  return items


@functools.partial(jax.jit, static_argnames=("ks", "score_fn"))
def _metric_sums_batch(user_rep, item_rep, users, valid, train_rows, train_cols, test_rows, test_cols,
                       num_test, *, ks, score_fn):
  """Sum over the valid users of one batch of every metric."""
  items, excluded = _masked_topk(user_rep, item_rep, users, train_rows, train_cols, k=max(ks),
                                 score_fn=score_fn)
  test_mask = _pairs_mask(test_rows, test_cols, excluded.shape) & ~excluded
  per_user = recall_ndcg_at_k(items, test_mask, ks, num_test=num_test)
  weight = valid.astype(jnp.float32)
  return {name: jnp.sum(value * weight) for name, value in per_user.items()}


# ----------------------------------------------------------------------------------------------------------
# Host-side batching
# ----------------------------------------------------------------------------------------------------------


def batch_pairs(csr: CSR, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The (row-in-batch, item) pairs of `users`' CSR rows, flattened: ((nnz,), (nnz,)) int32."""
  starts = csr.indptr[users]
  lengths = csr.indptr[users + 1] - starts
  total = int(lengths.sum())
  rows = np.repeat(np.arange(len(users), dtype=np.int32), lengths)
  offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
  cols = csr.indices[np.repeat(starts, lengths) + offsets]
  return rows, cols.astype(np.int32)


def _padded_batches(csrs: Sequence[CSR], users: np.ndarray, batch_size: int):
  """Splits `users` into batches of exactly `batch_size` (last one padded with user 0, valid=False).

  Yields (users (B,), valid (B,), [(rows (P,), cols (P,)) per csr]). Every csr's pair lists are padded to
  the largest batch's count, with row = B (dropped by the device scatter), so all batches share one shape.
  """
  n = len(users)
  num_batches = -(-n // batch_size)
  padded = np.zeros(num_batches * batch_size, np.int32)
  padded[:n] = users
  valid = np.arange(num_batches * batch_size) < n
  widths = []
  for csr in csrs:
    per_user = np.diff(csr.indptr)[padded] * valid
    per_batch = per_user.reshape(num_batches, batch_size).sum(axis=1)
    widths.append(max(int(per_batch.max()), 1))
  for b in range(num_batches):
    sl = slice(b * batch_size, (b + 1) * batch_size)
    batch_users, batch_valid = padded[sl], valid[sl]
    pair_lists = []
    for csr, width in zip(csrs, widths):
      rows, cols = batch_pairs(csr, batch_users[batch_valid])
      rows_p = np.full(width, batch_size, np.int32)
      cols_p = np.zeros(width, np.int32)
      rows_p[: len(rows)], cols_p[: len(cols)] = rows, cols
      pair_lists.append((rows_p, cols_p))
    yield batch_users, batch_valid, pair_lists


# ----------------------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------------------


def check_ks(ks: Sequence[int], num_items: int) -> tuple[int, ...]:
  """Validates the cutoffs: positive integers, none larger than the number of items."""
  ks = tuple(ks)
  if not ks:
    raise UserError("ks: at least one cutoff K is required")
  for k in ks:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
      raise UserError(f"ks: K={k!r} must be a positive integer")
    if k > num_items:
      raise UserError(f"ks: K={k} is larger than the number of items ({num_items})")
  return tuple(int(k) for k in ks)


def check_representations(user_rep: Representation, item_rep: Representation,
                          data: InteractionData) -> None:
  """Checks shapes and kinds against `data`.

  Raises:
    UserError: rows that do not match the dataset's users/items, differing dims, a float/quantized mix,
      or non-finite float values (which would make the ranking meaningless).
  """
  quantized = [isinstance(r, QuantizedMatrix) for r in (user_rep, item_rep)]
  if quantized[0] != quantized[1]:
    raise UserError("user and item representations must both be float arrays or both be QuantizedMatrix "
                    f"(got user {type(user_rep).__name__}, item {type(item_rep).__name__})")
  for what, rep, rows in (("user", user_rep, data.num_users), ("item", item_rep, data.num_items)):
    shape = tuple(rep.shape)
    if len(shape) != 2:
      raise UserError(f"{what} representation must be 2-D (num_{what}s, dim), got shape {shape}")
    if shape[0] != rows:
      raise UserError(f"{what} representation has {shape[0]} rows but dataset {data.name!r} has "
                      f"{rows} {what}s")
  if user_rep.shape[1] != item_rep.shape[1]:
    raise UserError(f"user dim {user_rep.shape[1]} differs from item dim {item_rep.shape[1]}")
  if quantized[0]:
    return
  for what, rep in (("user", user_rep), ("item", item_rep)):
    if not jnp.issubdtype(rep.dtype, jnp.floating):
      raise UserError(f"{what} embeddings must be floating point, got {rep.dtype}")
    if not np.isfinite(np.asarray(rep)).all():
      raise UserError(f"{what} embeddings contain non-finite values")


def _prepare(user_rep: Representation, item_rep: Representation) -> tuple[Any, Any, Callable]:
  """(user rows, item side, score_fn) with `score_fn(user_rows[batch], item_side) -> (B, I)` jittable.

  Float pairs score by <e_u, e_i>. Quantized pairs are ranked from their integer codes: the item side is
  `hq_jax.retrieval`'s prepared table (built once, on the host, with the exact per-item correction terms)
  and the user rows are the codes in the layout its integer kernels read.
  """
  if isinstance(user_rep, QuantizedMatrix):
    from hq_jax.retrieval import scoring  # pylint: disable=g-import-not-at-top
    method = scoring.default_method(user_rep.bits)
    table = scoring.prepare_items(item_rep, user_rep, method)
    return scoring.prepare_users(user_rep, method), table, scoring.table_keys
  return jnp.asarray(user_rep), jnp.asarray(item_rep), float_scores


def topk_items(user_rep: Representation, item_rep: Representation, data: InteractionData,
               users: Sequence[int] | np.ndarray, k: int, *,
               batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
  """The top-k items of `users` by score, with each user's training items excluded.

  Same ranking as `evaluate` (ties -> lower item id). If k exceeds a user's number of non-training
  items, the list ends with training items (lowest ids first).

  Returns:
    (len(users), k) int32 item ids, best first.
  """
  (k,) = check_ks((k,), data.num_items)
  check_representations(user_rep, item_rep, data)
  users = np.asarray(users, np.int64).reshape(-1)
  if users.size and (users.min() < 0 or users.max() >= data.num_users):
    raise UserError(f"users: ids must be in [0, {data.num_users}), got {users.min()}..{users.max()}")
  if users.size == 0:
    return np.zeros((0, k), np.int32)
  user_rep, item_rep, score_fn = _prepare(user_rep, item_rep)
  batch_size = max(1, min(batch_size, users.size))
  out = []
  for batch_users, valid, [(rows, cols)] in _padded_batches([data.train], users, batch_size):
    items = _topk_batch(user_rep, item_rep, batch_users, rows, cols, k=k, score_fn=score_fn)
    out.append(np.asarray(items)[valid])
  return np.concatenate(out).astype(np.int32)


def evaluate(user_rep: Representation, item_rep: Representation, data: InteractionData, *,
             ks: Sequence[int] = DEFAULT_KS, batch_size: int = DEFAULT_BATCH_SIZE) -> dict:
  """Recall@K and NDCG@K of the LightGCN full-ranking protocol.

  Args:
    user_rep: (num_users, d) float embeddings, or a `QuantizedMatrix` (then item_rep must be one too and
      items are ranked from the integer codes by `hq_jax.retrieval.ranking_scores`).
    item_rep: (num_items, d), same kind as user_rep.
    data: the interactions; train pairs are excluded from ranking, test pairs are the targets.
    ks: cutoffs; each must be <= num_items.
    batch_size: users scored at once (memory ~ batch_size * num_items * 6 bytes).

  Returns:
    {"recall@K": float, "ndcg@K": float for each K, "num_eval_users": int}.
  """
  ks = check_ks(ks, data.num_items)
  check_representations(user_rep, item_rep, data)
  if batch_size <= 0:
    raise UserError(f"batch_size must be positive, got {batch_size}")
  users = data.test_users()
  if users.size == 0:
    raise UserError(f"dataset {data.name!r} has no user with a test item: nothing to evaluate")
  user_rep, item_rep, score_fn = _prepare(user_rep, item_rep)
  num_test_all = data.test.row_lengths()
  batch_size = min(batch_size, users.size)
  sums, result = None, {}
  for batch_users, valid, [(tr_rows, tr_cols), (te_rows, te_cols)] in _padded_batches(
      [data.train, data.test], users, batch_size):
    num_test = np.where(valid, num_test_all[batch_users], 0).astype(np.int32)
    batch_sums = _metric_sums_batch(user_rep, item_rep, batch_users, valid, tr_rows, tr_cols, te_rows,
                                    te_cols, num_test, ks=ks, score_fn=score_fn)
    sums = batch_sums if sums is None else jax.tree.map(jnp.add, sums, batch_sums)
  for k in ks:
    for metric in ("recall", "ndcg"):
      result[f"{metric}@{k}"] = float(sums[f"{metric}@{k}"]) / users.size
  result["num_eval_users"] = int(users.size)
  return result


# ----------------------------------------------------------------------------------------------------------
# Exported embeddings
# ----------------------------------------------------------------------------------------------------------


def load_embeddings(path: str) -> tuple[Representation, Representation]:
  """Reads exported user and item representations from an .npz file.

  The file holds either float `user_embeddings` and `item_embeddings`, or a quantized export: `bits`,
  `user_codes`, `item_codes`, `user_scale`, `user_offset`, `item_scale`, `item_offset` (the fields of
  `QuantizedMatrix`). Shapes are checked against a dataset later, by `check_representations`.

  Raises:
    UserError: a missing or unreadable file, or missing keys (the message names the file).
  """
  if not os.path.isfile(path):
    raise UserError(f"{path}: file not found")
  try:
    with np.load(path, allow_pickle=False) as npz:
      arrays = {key: npz[key] for key in npz.files}
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: not a readable .npz file ({e})") from None
  if all(key in arrays for key in FLOAT_KEYS):
    return arrays["user_embeddings"], arrays["item_embeddings"]
  if "bits" in arrays or any(key.endswith("_codes") for key in arrays):
    missing = [key for key in QUANTIZED_KEYS if key not in arrays]
    if missing:
      raise UserError(f"{path}: quantized export is missing key(s) {', '.join(missing)}")
    bits = arrays["bits"]
    if bits.size != 1 or not np.issubdtype(bits.dtype, np.integer):
      raise UserError(f"{path}: 'bits' must be one integer, got {bits!r}")
    reps = []
    for who in ("user", "item"):
      reps.append(QuantizedMatrix(codes=arrays[f"{who}_codes"],
                                  scale=arrays[f"{who}_scale"].astype(np.float32),
                                  offset=arrays[f"{who}_offset"].astype(np.float32), bits=int(bits)))
    return reps[0], reps[1]
  missing = [key for key in FLOAT_KEYS if key not in arrays]
  raise UserError(f"{path}: missing key(s) {', '.join(missing)} (found: {', '.join(sorted(arrays)) or 'none'};"
                  f" expected {', '.join(FLOAT_KEYS)} or a quantized export {', '.join(QUANTIZED_KEYS)})")
