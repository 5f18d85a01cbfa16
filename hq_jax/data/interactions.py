"""User-item interaction data in the LightGCN text format.

Format (as in the LightGCN / NGCF reference code): `train.txt` and `test.txt`, one line per user,
`user item item ...`, whitespace separated, 0-based integer ids. A user line may list no items.

The loader validates strictly: a token that is not a non-negative integer, or an empty file, stops with one
`UserError` naming the file and line. A leading UTF-8 byte-order mark is dropped. Duplicate (user, item)
pairs inside a split are dropped and counted.

Ids are table rows (the embedding table has one row per id 0..largest), so ids must be dense. Before
anything of the id space's size is allocated, `check_dense_ids` refuses an id space (largest id + 1) that is
larger than both `DENSE_ID_FLOOR` and `DENSE_ID_FACTOR` times the number of distinct ids the files hold
(e.g. one raw database id of 2e9 among 1.9k users), naming the file, the line, the id and the limit; ids
must also fit int32. The CTR libFM loader applies the same rule to feature ids.
Users with no training items, and test items never seen in training, are kept and reported in `summary`.
Interactions are returned in CSR form: `indptr` (num_users + 1,) and `indices` (nnz,), each user's items
sorted ascending.
"""

import dataclasses
import importlib.resources
import os
from collections.abc import Callable

import numpy as np

from hq_jax.errors import UserError

# The embedded default dataset, shipped as package data (see hq_jax/data/lastfm/README.md).
LASTFM_DIR = "lastfm"

# Ids are stored as int32: the largest id allowed.
MAX_ID = 2**31 - 1
# The dense-id rule (`check_dense_ids`): an id space up to DENSE_ID_FLOOR ids is always accepted (a table
# of 4.2M rows of 64 float32 is 1 GiB), a larger one only if at most DENSE_ID_FACTOR times the number of
# distinct ids seen (at least 1 in 16 rows used). Beyond that the ids are raw or hashed ids, not table rows.
DENSE_ID_FLOOR = 1 << 22
DENSE_ID_FACTOR = 16


def dense_id_limit(distinct: int) -> int:
  """The largest id space (largest id + 1) accepted for files holding `distinct` distinct ids."""
  return min(MAX_ID + 1, max(DENSE_ID_FLOOR, DENSE_ID_FACTOR * int(distinct)))


def check_dense_ids(ids: np.ndarray, what: str, where: Callable[[int], str], hint: str) -> int:
  """Returns the id space (largest id + 1) of non-negative `ids`, or raises if it is not dense enough.

  Args:
    ids: every id of one kind (any integer dtype, any shape), already checked to be >= 0.
    what: the kind of id, for the message ('user', 'item', 'feature').
    where: the largest id -> 'path:line' of a line holding it (only called on the error path).
    hint: the end of the message: what the user can do.

  Raises:
    UserError: `path:line: <what> id N implies a table of N + 1 rows, ...` naming the id, the distinct ids
      and the limit (see `DENSE_ID_FLOOR`, `DENSE_ID_FACTOR`).
  """
  if ids.size == 0:
    return 0
  size = int(ids.max()) + 1
  if size <= DENSE_ID_FLOOR:
    return size
  distinct = int(np.unique(ids).size)
  limit = dense_id_limit(distinct)
  if size > limit:
    raise UserError(f"{where(size - 1)}: {what} id {size - 1} implies a table of {size:,} rows for {distinct:,} "
                    f"distinct {what} ids (limit {limit:,}: the larger of {DENSE_ID_FLOOR:,} and "
                    f"{DENSE_ID_FACTOR} x the distinct ids); ids are table rows and must be dense: {hint}")
  return size


@dataclasses.dataclass(frozen=True)
class CSR:
  """A sparse user -> items relation; row u's items are `indices[indptr[u]:indptr[u + 1]]` (sorted)."""

  indptr: np.ndarray  # (num_users + 1,) int64
  indices: np.ndarray  # (nnz,) int32

  @property
  def nnz(self) -> int:
    return int(self.indices.shape[0])

  @property
  def num_rows(self) -> int:
    return int(self.indptr.shape[0] - 1)

  def row(self, u: int) -> np.ndarray:
    return self.indices[self.indptr[u] : self.indptr[u + 1]]

  def row_lengths(self) -> np.ndarray:
    return np.diff(self.indptr)

  def rows(self) -> np.ndarray:
    """The user id of every stored pair, aligned with `indices`."""
    return np.repeat(np.arange(self.num_rows, dtype=np.int32), self.row_lengths())


@dataclasses.dataclass(frozen=True)
class InteractionData:
  """Train and test interactions over one id space of `num_users` users and `num_items` items."""

  name: str
  num_users: int
  num_items: int
  train: CSR
  test: CSR
  summary: dict

  def test_users(self) -> np.ndarray:
    """Users with at least one test item: the users that evaluation averages over."""
    return np.flatnonzero(self.test.row_lengths() > 0).astype(np.int32)


def _parse_file(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads one LightGCN text file into aligned (users, items) int64 arrays, validating every token."""
  if not os.path.isfile(path):
    raise UserError(f"{path}: file not found")
  users, items = [], []
  nonempty = False
  with open(path, "r", encoding="utf-8-sig", errors="strict") as f:  # -sig: drops a byte-order mark
    try:
      for lineno, line in enumerate(f, start=1):
        tokens = line.split()
        if not tokens:
          continue
        nonempty = True
        try:
          ids = np.array([int(t) for t in tokens], dtype=np.int64)
        except ValueError:
          bad = next(t for t in tokens if not _is_int(t))
          raise UserError(f"{path}:{lineno}: malformed token {bad!r} (expected a non-negative integer id)")
        except OverflowError:
          bad = next(t for t in tokens if abs(int(t)) >= 2**63)
          raise UserError(f"{path}:{lineno}: id {bad} too large (must fit in int32: at most {MAX_ID})") from None
        if (ids < 0).any():
          bad = int(ids[ids < 0][0])
          raise UserError(f"{path}:{lineno}: negative id {bad}")
        if ids.max() > MAX_ID:
          raise UserError(f"{path}:{lineno}: id {int(ids.max())} too large (must fit in int32: at most {MAX_ID})")
        users.append(np.full(len(ids) - 1, ids[0], dtype=np.int64))
        items.append(ids[1:])
    except UnicodeDecodeError as e:
      raise UserError(f"{path}: not a text file ({e.reason} at byte {e.start})") from None
  if not nonempty:
    raise UserError(f"{path}: empty file (expected lines of 'user item item ...')")
  return np.concatenate(users), np.concatenate(items)


def _line_of_id(paths, wanted: int, user: bool) -> str:
  """'path:line' of the first line holding user (first token) or item id `wanted` (an error path)."""
  for path in paths:
    with open(path, encoding="utf-8-sig") as f:
      for lineno, line in enumerate(f, start=1):
        tokens = line.split()
        if tokens and (int(tokens[0]) == wanted if user else wanted in map(int, tokens[1:])):
          return f"{path}:{lineno}"
  return str(paths[0])


def _is_int(token: str) -> bool:
  try:
    int(token)
    return True
  except ValueError:
    return False


def to_csr(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int) -> tuple[CSR, int]:
  """Builds a CSR from (user, item) pairs, dropping duplicates; returns it and the number dropped."""
  keys = np.unique(users.astype(np.int64) * num_items + items.astype(np.int64))
  dropped = len(users) - len(keys)
  rows = (keys // num_items).astype(np.int64)
  indices = (keys % num_items).astype(np.int32)
  indptr = np.zeros(num_users + 1, dtype=np.int64)
  np.cumsum(np.bincount(rows, minlength=num_users), out=indptr[1:])
  return CSR(indptr=indptr, indices=indices), dropped


def load_lightgcn_dir(data_dir: str, name: str | None = None,
                      num_users: int | None = None, num_items: int | None = None) -> InteractionData:
  """Loads `train.txt` and `test.txt` from `data_dir`.

  Args:
    data_dir: folder holding the two files.
    name: dataset name for reports (default: the folder's name).
    num_users, num_items: id-space sizes; default 1 + the largest id seen in either file. Passing them
      checks that every id is in range.

  Returns:
    The interactions and a summary (counts, dropped duplicates, cold users, unseen test items).
  """
  if not os.path.isdir(data_dir):
    raise UserError(f"{data_dir}: data directory not found")
  train_path = os.path.join(data_dir, "train.txt")
  test_path = os.path.join(data_dir, "test.txt")
  tr_u, tr_i = _parse_file(train_path)
  te_u, te_i = _parse_file(test_path)
  hint = "remap them to 0..N-1"
  seen_users = check_dense_ids(np.concatenate([tr_u, te_u]), "user",
                               lambda u: _line_of_id((train_path, test_path), u, user=True), hint)
  seen_items = check_dense_ids(np.concatenate([tr_i, te_i]), "item",
                               lambda i: _line_of_id((train_path, test_path), i, user=False), hint)
  for what, given, seen in (("user", num_users, seen_users), ("item", num_items, seen_items)):
    if given is not None and seen > given:
      raise UserError(f"{data_dir}: {what} id {seen - 1} out of range (num_{what}s={given})")
  num_users = num_users or seen_users
  num_items = num_items or seen_items
  if tr_i.size == 0:
    raise UserError(f"{train_path}: no training interactions")

  train, train_dups = to_csr(tr_u, tr_i, num_users, num_items)
  test, test_dups = to_csr(te_u, te_i, num_users, num_items)
  train_items_seen = np.zeros(num_items, dtype=bool)
  train_items_seen[train.indices] = True
  test_unseen = int((~train_items_seen[test.indices]).sum())
  test_users = test.row_lengths() > 0
  summary = {
      "name": name or os.path.basename(os.path.normpath(data_dir)),
      "num_users": num_users,
      "num_items": num_items,
      "train_interactions": train.nnz,
      "test_interactions": test.nnz,
      "train_duplicates_dropped": int(train_dups),
      "test_duplicates_dropped": int(test_dups),
      "users_without_train_items": int((train.row_lengths() == 0).sum()),
      "test_users": int(test_users.sum()),
      "test_users_without_train_items": int((test_users & (train.row_lengths() == 0)).sum()),
      "test_items_unseen_in_train": test_unseen,
      "items_without_train_interactions": int((~train_items_seen).sum()),
      "density": train.nnz / (num_users * num_items),
  }
  return InteractionData(name=summary["name"], num_users=num_users, num_items=num_items,
                         train=train, test=test, summary=summary)


def embedded_dataset_dir(name: str = LASTFM_DIR) -> str:
  """Path of a dataset shipped inside the package (default: LastFM)."""
  return str(importlib.resources.files("hq_jax.data") / name)


def validation_split(data: InteractionData, fraction: float = 0.1, seed: int = 0) -> InteractionData:
  """Carves a validation split out of the training interactions, for choosing settings (ours).

  Of each user's n training items, k = max(1, round(fraction * n)) drawn uniformly without replacement
  (users with fewer than 2 training items keep them all) become that user's evaluation items; the rest stay
  for training. The draw is a function of `seed` only, so every run with the same seed sees the same split.
  The test split is not used at all.

  Returns:
    InteractionData with `train` = the remaining training pairs and `test` = the held-out pairs; the name
    gets the suffix `-valid`.

  Raises:
    ValueError: when `fraction` is not in (0, 1).
  """
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
  rng = np.random.default_rng([seed, 0x7a11d])
  lengths = data.train.row_lengths()
  held = np.where(lengths >= 2, np.maximum(1, np.round(fraction * lengths)), 0).astype(np.int64)
  # Rank the items of each row by a random key; the `held[u]` lowest ranks are held out.
  keys = rng.random(data.train.nnz)
  rows = data.train.rows()
  order = np.lexsort((keys, rows))
  rank = np.empty(data.train.nnz, np.int64)
  rank[order] = np.arange(data.train.nnz) - data.train.indptr[rows[order]]
  out = rank < held[rows]
  users, items = rows.astype(np.int64), data.train.indices.astype(np.int64)
  train, _ = to_csr(users[~out], items[~out], data.num_users, data.num_items)
  valid, _ = to_csr(users[out], items[out], data.num_users, data.num_items)
  summary = dict(data.summary, name=f"{data.name}-valid", split="valid", valid_fraction=fraction,
                 valid_seed=seed, train_interactions=train.nnz, test_interactions=valid.nnz,
                 test_users=int((valid.row_lengths() > 0).sum()))
  return dataclasses.replace(data, name=summary["name"], train=train, test=valid, summary=summary)


def load_dataset(data_dir: str | None) -> InteractionData:
  """Loads `data_dir`, or the embedded LastFM dataset when `data_dir` is empty or "lastfm"."""
  if not data_dir or data_dir == "lastfm":
    return load_lightgcn_dir(embedded_dataset_dir(), name="lastfm")
  return load_lightgcn_dir(data_dir)
