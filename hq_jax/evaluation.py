"""Full-ranking top-K evaluation, the LightGCN protocol (HQ-GNN spec, section "Evaluation").

For every user with at least one test item, all items are scored, the user's training items are excluded,
and the top max(K) items are taken. Then, per user u with test set T_u and hit indicator h_r at rank r
(0-based) of the ranked list:

  Recall@K = sum_{r<K} h_r / |T_u|
  NDCG@K   = DCG@K / IDCG@K,  DCG@K = sum_{r<K} h_r / log2(r + 2),  IDCG@K = sum_{r<min(|T_u|, K)} 1 / log2(r + 2)

both averaged over the users with |T_u| >= 1. These are the formulas of the LightGCN reference code
(`utils.RecallPrecision_ATk`, `utils.NDCGatK_r`); they live in `recall_ndcg_at_k` and nowhere else.

Ranking is `hq_jax.retrieval`'s blocked top-K (`retrieval.topk.prepare_search` / `search_prepared`), the
same code that serves retrieval, so evaluation and retrieval cannot disagree: training items excluded,
ties broken by the lower item id, float embeddings scored by <e_u, e_i> and a `QuantizedMatrix` (or
layer-wise `LayeredQuantized`) pair ranked from its integer codes with exact integer keys whose order equals
the dequantized one (the spec: "rank with the quantized representation"; `hq_jax.retrieval.scoring`).
Product codes (`ProductCodes` on both sides, or float users with `ProductCodes` items) are ranked from their
decoded rows by the float path, exactly as the decoded float32 pair (`hq_jax.retrieval.scoring` says what
that order is). Which pairs are legal and how each ranks is `hq_jax.quant.family`'s.
Hits are looked up on the host from the test CSR; a training item is never a hit, even when a (malformed)
split lists it in both train and test: it still counts in |T_u|, as in the reference code, where it is
ranked last.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hq_jax import backend, export
from hq_jax.data.interactions import CSR, InteractionData
from hq_jax.errors import UserError
from hq_jax.quant import family as family_lib
from hq_jax.quant.pq import ProductCodes
from hq_jax.quant.quantizer import LayeredQuantized, QuantizedMatrix
from hq_jax.retrieval.topk import topk as ranked_topk

DEFAULT_KS = (20, 50)
DEFAULT_BATCH_SIZE = backend.CPU.batch_users  # the CPU's users per call; None picks the backend's (hq_jax.backend)

Representation = jax.Array | np.ndarray | QuantizedMatrix | LayeredQuantized | ProductCodes


# ----------------------------------------------------------------------------------------------------------
# Metrics on ranked lists (pure, jittable) and hit lookup
# ----------------------------------------------------------------------------------------------------------


def rank_discounts(k: int) -> jax.Array:
  """1 / log2(r + 2) for ranks r = 0..k-1: the DCG weight of a hit at each rank."""
  return 1.0 / jnp.log2(jnp.arange(k, dtype=jnp.float32) + 2.0)


def metrics_from_hits(hits: jax.Array, num_test: jax.Array, ks: Sequence[int]) -> dict[str, jax.Array]:
  """Per-user Recall@K and NDCG@K from hit indicators of ranked lists.

  Args:
    hits: (B, Kmax) 0/1, hits[u, r] = 1 when the item at rank r of user u's list is a test item.
    num_test: (B,) |T_u|, the recall denominator and the IDCG length.
    ks: cutoffs, each <= Kmax.

  Returns:
    {"recall@K": (B,), "ndcg@K": (B,)} float32 for every K; users with |T_u| = 0 get 0 for both.
  """
  hits = jnp.asarray(hits, jnp.float32)
  num_test = jnp.asarray(num_test).astype(jnp.float32)
  discounts = rank_discounts(hits.shape[-1])
  has_test = num_test > 0
  out = {}
  for k in ks:
    num_hits = jnp.sum(hits[:, :k], axis=1)
    dcg = hits[:, :k] @ discounts[:k]
    # The ideal list's hits, summed by the same product: a perfect list scores exactly 1, not 1 + 1 ulp.
    ideal = (jnp.arange(k) < jnp.minimum(num_test, k)[:, None]).astype(jnp.float32)
    idcg = ideal @ discounts[:k]
    out[f"recall@{k}"] = jnp.where(has_test, num_hits / jnp.maximum(num_test, 1.0), 0.0)
    out[f"ndcg@{k}"] = jnp.where(has_test, dcg / jnp.where(has_test, idcg, 1.0), 0.0)
  return out


def recall_ndcg_at_k(topk_items: jax.Array, test_mask: jax.Array, ks: Sequence[int],
                     num_test: jax.Array | None = None) -> dict[str, jax.Array]:
  """Per-user Recall@K and NDCG@K of ranked item lists against a dense test mask.

  Args:
    topk_items: (B, Kmax) int item ids, best first, Kmax >= max(ks).
    test_mask: (B, I) bool, True where the item is one of the user's test items (and may count as a hit).
    ks: cutoffs (static under jit).
    num_test: (B,) |T_u|. Default: `test_mask.sum(-1)`. Pass it when `test_mask` has had items removed that
      must still count in |T_u| (test items that are also training items, excluded from the ranking).

  Returns:
    `metrics_from_hits` of the lists' hits.
  """
  ks = tuple(int(k) for k in ks)
  kmax = max(ks)
  if topk_items.shape[-1] < kmax:
    raise ValueError(f"topk_items has {topk_items.shape[-1]} columns, fewer than max(ks)={kmax}")
  hits = jnp.take_along_axis(test_mask, topk_items[:, :kmax], axis=1)
  if num_test is None:
    num_test = jnp.sum(test_mask, axis=-1)
  return metrics_from_hits(hits, num_test, ks)


def csr_contains(csr: CSR, users: np.ndarray, items: np.ndarray) -> np.ndarray:
  """(B, K) bool: whether items[b, j] is in row users[b] of `csr` (ids < 0 are never in it)."""
  num_cols = np.int64(max(int(csr.indices.max(initial=-1)) + 1, int(items.max(initial=-1)) + 1, 1))
  keys = np.sort(csr.rows().astype(np.int64) * num_cols + csr.indices)
  query = users.astype(np.int64)[:, None] * num_cols + items
  pos = np.minimum(np.searchsorted(keys, query), max(len(keys) - 1, 0))
  return (items >= 0) & (keys[pos] == query) if len(keys) else np.zeros(items.shape, bool)


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
    UserError: rows that do not match the dataset's users/items, differing dims, a pair of families that
      is not legal (`hq_jax.quant.family.check_pair`), or non-finite float values or codebooks (which would
      make the ranking meaningless).
  """
  pair = family_lib.check_pair(user_rep, item_rep)
  shapes = {}
  for what, fam, rep, rows in (("user", pair.user, user_rep, data.num_users),
                               ("item", pair.item, item_rep, data.num_items)):
    shape = fam.shape(rep)
    if len(shape) != 2:
      raise UserError(f"{what} representation must be 2-D (num_{what}s, dim), got shape {shape}")
    if shape[0] != rows:
      raise UserError(f"{what} representation has {shape[0]} rows but dataset {data.name!r} has "
                      f"{rows} {what}s")
    shapes[what] = shape
  if shapes["user"][1] != shapes["item"][1]:
    raise UserError(f"user dim {shapes['user'][1]} differs from item dim {shapes['item'][1]}")
  pair.user.check_values(user_rep, "user")
  pair.item.check_values(item_rep, "item")


def topk_items(user_rep: Representation, item_rep: Representation, data: InteractionData,
               users: Sequence[int] | np.ndarray, k: int, *,
               batch_size: int | None = None) -> np.ndarray:
  """The top-k items of `users` by score, with each user's training items excluded.

  Same ranking as `evaluate` (ties -> lower item id).

  Returns:
    (len(users), k) int32 item ids, best first; -1 where a user has fewer than k non-training items.
  """
  (k,) = check_ks((k,), data.num_items)
  check_representations(user_rep, item_rep, data)
  users = np.asarray(users, np.int64).reshape(-1)
  if users.size and (users.min() < 0 or users.max() >= data.num_users):
    raise UserError(f"users: ids must be in [0, {data.num_users}), got {users.min()}..{users.max()}")
  batch_size = backend.tunings().batch_users if batch_size is None else batch_size
  if batch_size <= 0:
    raise UserError(f"batch_size must be positive, got {batch_size}")
  _, items = ranked_topk(user_rep, item_rep, data.train.indptr, data.train.indices, users, k,
                         batch_users=batch_size)
  return items.astype(np.int32)


def evaluate(user_rep: Representation, item_rep: Representation, data: InteractionData, *,
             ks: Sequence[int] = DEFAULT_KS, batch_size: int | None = None) -> dict:
  """Recall@K and NDCG@K of the LightGCN full-ranking protocol.

  Args:
    user_rep: (num_users, d) float embeddings, or a `QuantizedMatrix`, `LayeredQuantized` or `ProductCodes`
      (then item_rep must be of the same kind; scalar and layer-wise codes are ranked from their integer
      codes, product codes from their decoded rows).
    item_rep: (num_items, d), same kind as user_rep, or `ProductCodes` under float users.
    data: the interactions; train pairs are excluded from ranking, test pairs are the targets.
    ks: cutoffs; each must be <= num_items.
    batch_size: users ranked per jitted call (None: the backend's, `hq_jax.backend`).

  Returns:
    {"recall@K": float, "ndcg@K": float for each K, "num_eval_users": int}.
  """
  ks = check_ks(ks, data.num_items)
  users = data.test_users()
  if users.size == 0:
    raise UserError(f"dataset {data.name!r} has no user with a test item: nothing to evaluate")
  items = topk_items(user_rep, item_rep, data, users, max(ks), batch_size=batch_size)
  hits = csr_contains(data.test, users, items)
  per_user = metrics_from_hits(hits, data.test.row_lengths()[users], ks)
  result = {name: float(np.sum(np.asarray(value, np.float64))) / users.size for name, value in per_user.items()}
  return {**result, "num_eval_users": int(users.size)}


# ----------------------------------------------------------------------------------------------------------
# Exported embeddings
# ----------------------------------------------------------------------------------------------------------


def load_embeddings(path: str) -> tuple[Representation, Representation]:
  """Reads an export.npz: `hq_jax.export.load_export` (the one reader; this name stays for its callers).

  Shapes are checked against a dataset later, by `check_representations`.

  Raises:
    UserError: a missing, unreadable or invalid file (the message names the file and the key).
  """
  return export.load_export(path)
