"""The CTR dataset type, its train / valid / test splits, batching and the load-time label check (ours).

A `CTRDataset` is one (n, F) int32 matrix of *global* feature ids (field f's ids lie in
`[field_offsets[f], field_offsets[f + 1])`), float32 labels in {0, 1}, the train / valid / test row indices
and each feature's occurrence count in the **training split only** (MPE's frequency groups are built from
these counts, and counting valid / test rows would leak them into training).

Rows are stored train first, then valid, then test, so each split is a contiguous slice of the (possibly
memory-mapped) id matrix and `split()` costs nothing even for Criteo's 45.8M rows.
"""

import dataclasses
import os
from collections.abc import Iterator, Sequence

import numpy as np

from hq_jax.errors import UserError

SPLIT_NAMES = ("train", "valid", "test")


@dataclasses.dataclass(frozen=True)
class CTRDataset:
  """A CTR dataset over one global feature-id space of `num_features` ids in `num_fields` fields.

  `summary['split_sources']` (when present) maps each split to the file its rows came from, so that errors
  about a split can name the file; loaders of random splits give the one source file for all three.
  """

  name: str
  ids: np.ndarray  # (n, F) int32 global feature ids, may be a np.memmap
  labels: np.ndarray  # (n,) float32 in {0, 1}
  field_offsets: np.ndarray  # (F + 1,) int64; field f's ids are [field_offsets[f], field_offsets[f+1])
  counts: np.ndarray  # (N,) int64: occurrences of each feature id in the TRAIN split only
  splits: dict  # {'train', 'valid', 'test'} -> int64 row-index arrays into ids / labels
  summary: dict  # rows per split, fields, features, OOV / rare stats, skipped rows, cache path, ...

  @property
  def num_features(self) -> int:
    return int(self.field_offsets[-1])

  @property
  def num_fields(self) -> int:
    return int(self.field_offsets.shape[0] - 1)

  def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids (m, F) int32, labels (m,) float32) of one split; a slice (no copy) when its rows are contiguous.

    Raises:
      UserError: `name` is not one of `SPLIT_NAMES`.
    """
    if name not in self.splits:
      raise UserError(f"unknown split {name!r}; expected one of {sorted(self.splits)}")
    rows = self.splits[name]
    if rows.size and rows[-1] - rows[0] + 1 == rows.size and np.all(np.diff(rows) == 1):
      lo, hi = int(rows[0]), int(rows[-1]) + 1
      return self.ids[lo:hi], self.labels[lo:hi]
    return self.ids[rows], self.labels[rows]


def split_rows(num_rows: int, fractions: Sequence[float], seed: int) -> tuple[np.ndarray, ...]:
  """A seeded random split of row indices into len(fractions) sorted int64 arrays (ours).

  Sizes are round(fraction * n) for every part but the first, which takes the rest (so 9,999 rows split
  80/10/10 into 7,999 / 1,000 / 1,000). Returned rows are sorted so that reading them from a memory-mapped
  file is sequential.

  Raises:
    UserError: the fractions are not three non-negative numbers summing to 1.
  """
  fractions = tuple(float(x) for x in fractions)
  if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
    raise UserError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
  sizes = [int(round(f * num_rows)) for f in fractions[1:]]
  sizes.insert(0, num_rows - sum(sizes))
  perm = np.random.default_rng(seed).permutation(num_rows)
  bounds = np.cumsum([0] + sizes)
  return tuple(np.sort(perm[bounds[i]:bounds[i + 1]]).astype(np.int64) for i in range(len(sizes)))


def iterate_batches(ids: np.ndarray, labels: np.ndarray, batch_size: int, *,
                    rng: np.random.Generator | None, drop_last: bool = False
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Yields (ids int32 (b, F), labels float32 (b,)) batches; shuffled when `rng` is given (ours).

  Rows of a shuffled batch are read in increasing index order (a batch is a set, so order inside it does
  not matter for training) which keeps reads from a memory-mapped matrix close to sequential.

  Raises:
    UserError: `batch_size` is not positive.
  """
  n = int(ids.shape[0])
  if batch_size <= 0:
    raise UserError(f"batch_size must be positive, got {batch_size}")
  order = rng.permutation(n) if rng is not None else None
  stop = n - n % batch_size if drop_last else n
  for lo in range(0, stop, batch_size):
    hi = min(lo + batch_size, n)
    if order is None:
      yield np.asarray(ids[lo:hi], np.int32), np.asarray(labels[lo:hi], np.float32)
    else:
      rows = np.sort(order[lo:hi])
      yield np.asarray(ids[rows], np.int32), np.asarray(labels[rows], np.float32)


def label_counts(ds: CTRDataset) -> dict:
  """{split: (negatives, positives)} as ints: one pass over each split's labels (a slice, no copy)."""
  out = {}
  for name in SPLIT_NAMES:
    labels = np.asarray(ds.split(name)[1])
    positives = int(np.count_nonzero(labels))
    out[name] = (int(labels.size) - positives, positives)
  return out


def check_both_classes(ds: CTRDataset) -> CTRDataset:
  """Returns `ds` if every split holds both labels; AUC and a calibrated log loss need both (ours).

  Run by every loader at load time (also on a cache hit), so that a one-class validation or test file
  stops the run before any training instead of in the AUC after an epoch.

  Raises:
    UserError: one line naming the first split (train, valid, test) that is empty or has one class only,
      and its file (`summary['split_sources']`; for a random split, the source file and the split).
  """
  sources = ds.summary.get("split_sources") or {}
  rule = ds.summary.get("split_rule")
  for name, (negatives, positives) in label_counts(ds).items():
    if negatives and positives:
      continue
    where = f"{sources.get(name) or ds.name}: the {name} split" + (f" ({rule})" if rule else "")
    if not negatives + positives:
      raise UserError(f"{where} has no rows; every split needs both labels 0 and 1")
    raise UserError(f"{where} has one class only: {positives} positives and {negatives} negatives; every "
                    "split needs both labels 0 and 1 (AUC is undefined otherwise)")
  return ds


def random_split_sources(path: str, seed: int, split: Sequence[float]) -> dict:
  """The `summary` entries that let `check_both_classes` name the file and rule of a random split."""
  rule = f"rows drawn by seed {seed}, fractions {'/'.join(f'{float(x):g}' for x in split)}"
  return {"split_sources": {k: os.path.abspath(path) for k in SPLIT_NAMES}, "split_rule": rule}
