"""The Avazu CTR format: a CSV with header `id,click,hour,C1,banner_pos,...` (`.gz` accepted).

`id` is dropped, `click` is the label and `hour` (YYMMDDHH) becomes three fields (hour of day, weekday,
is_weekend; these keep every value seen in training), followed by the remaining categorical columns in file
order: 24 fields for the real file. Categorical values rare in the training split go to the field's OOV
id (`hq_jax.ctr.data.vocab`, the MPE spec's preprocessing); rows are split 80/10/10 by a seeded permutation.

Quoted values follow RFC 4180 (as in `criteo`), a leading UTF-8 byte-order mark is dropped. Bad input (wrong
column count, a label other than 0 / 1, an hour that is not a valid YYMMDDHH, a quoted value never closed)
raises `UserError` naming `path:line`. Blank lines are skipped and counted in `summary['blank_lines']`.
"""

import datetime
from collections.abc import Iterator, Sequence

import numpy as np

from hq_jax.ctr.data import cache, criteo, dataset, reader, vocab
from hq_jax.errors import UserError

# Avazu: the columns that are not categorical features, and the three fields derived from `hour`.
AVAZU_ID, AVAZU_LABEL, AVAZU_HOUR = "id", "click", "hour"
AVAZU_HOUR_FIELDS = ("hour_of_day", "weekday", "is_weekend")


def avazu_hour_fields(hour: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Avazu `hour` (YYMMDDHH, 20YY) -> (hour of day 0-23, weekday 0=Monday..6, is_weekend 0/1), int64.

  Raises:
    ValueError: an impossible date or hour (the loader turns it into a `UserError` with a line).
  """
  hour = np.asarray(hour, np.int64)
  hh = hour % 100
  if np.any((hh < 0) | (hh > 23)):
    raise ValueError("hour of day outside 0..23")
  days = hour // 100
  uniq, inv = np.unique(days, return_inverse=True)  # few distinct dates: a Python loop over them is cheap
  wd = np.array([datetime.date(2000 + int(d) // 10000, int(d) // 100 % 100, int(d) % 100).weekday()
                 for d in uniq], np.int64)
  weekday = wd[inv].reshape(hour.shape)
  return hh, weekday, (weekday >= 5).astype(np.int64)


def _valid_avazu_hour(hour: int) -> bool:
  try:
    avazu_hour_fields(np.array([hour]))
    return True
  except ValueError:
    return False


def _hour_keys(chunk: reader.Chunk) -> list:
  """The `hour` column -> three (m,) uint64 key arrays (hour of day, weekday, is_weekend)."""
  inverse, distinct = reader.distinct_tokens(chunk, AVAZU_HOUR)
  tokens = distinct.to_pylist()
  bad = [i for i, t in enumerate(tokens) if len(t) != 8 or not t.isdigit()]
  if bad:
    chunk.fail(int(np.flatnonzero(np.isin(inverse, bad))[0]), AVAZU_HOUR, "hour must be YYMMDDHH (8 digits)")
  hours = np.array([int(t) for t in tokens], np.int64)
  bad = [i for i, h in enumerate(hours) if not _valid_avazu_hour(int(h))]
  if bad:
    chunk.fail(int(np.flatnonzero(np.isin(inverse, bad))[0]), AVAZU_HOUR,
               "hour must be a valid YYMMDDHH date and hour")
  return [derived.view(np.uint64)[inverse] for derived in avazu_hour_fields(hours)]


def _avazu_header(path: str) -> tuple[list, list]:
  """(every column name, the categorical ones) from the header line."""
  header = [t.strip(b'"').decode("utf-8", "replace") for t in reader.first_line(path).split(b",")]
  missing = [c for c in (AVAZU_ID, AVAZU_LABEL, AVAZU_HOUR) if c not in header]
  if missing:
    raise UserError(f"{path}:1: expected an Avazu header with columns id,click,hour,...; missing "
                    f"{','.join(missing)} (the unlabeled Kaggle test file cannot be used)")
  return header, [h for h in header if h not in (AVAZU_ID, AVAZU_LABEL, AVAZU_HOUR)]


def _avazu_chunks(path: str, chunk_bytes: int, stats: dict) -> Iterator[tuple[np.ndarray, list]]:
  header, cats = _avazu_header(path)
  if len(set(header)) != len(header):
    raise UserError(f"{path}:1: repeated column names in the Avazu header")
  stats.update(format="avazu-csv", blank_lines=0, quoted_newlines=0)
  wide = [{} for _ in cats]
  for chunk in reader.read_csv_chunks(path, delimiter=",", column_names=header,
                                      include_columns=[AVAZU_LABEL, AVAZU_HOUR] + cats, skip_first_line=True,
                                      chunk_bytes=chunk_bytes):
    stats["blank_lines"] += chunk.blank
    stats["quoted_newlines"] += chunk.quoted_newlines
    if not chunk.num_rows:
      continue
    labels = criteo.parse_labels(chunk, AVAZU_LABEL)
    keys = _hour_keys(chunk) + [criteo.categorical_keys(chunk, c, w) for c, w in zip(cats, wide)]
    yield labels, keys


def load_avazu(path: str, *, cache_dir: str | None = None, min_count: int = 2, seed: int = 0,
               split: Sequence[float] = (0.8, 0.1, 0.1), name: str = "avazu",
               chunk_bytes: int = reader.DEFAULT_CHUNK_BYTES) -> dataset.CTRDataset:
  """Loads the Avazu CTR training file (see the module docstring); arguments as for `load_criteo`.

  Returns:
    A `CTRDataset` of 3 + (columns - 3) fields (24 for the real file), rows train | valid | test.

  Raises:
    UserError: bad input naming `path:line`, a header without id / click / hour, a missing file, no data
      rows, or a split without both labels (`dataset.check_both_classes`).
  """
  _, cats = _avazu_header(path)
  fields = vocab.Fields(AVAZU_HOUR_FIELDS + tuple(cats), (True,) * 3 + (False,) * len(cats))
  params = {"format": "avazu", "min_count": min_count, "seed": seed, "split": list(split)}

  def build(tmp):
    stats = dataset.random_split_sources(path, seed, split)
    out = vocab.build_tabular(tmp, path, fields, _avazu_chunks(path, chunk_bytes, stats),
                              min_count=min_count, seed=seed, split=split)
    out["summary"].update(stats)
    return out

  ds, _ = cache.cached_build(name, [path], params, cache_dir, build)
  return dataset.check_both_classes(ds)
