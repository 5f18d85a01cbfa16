"""The Criteo display-advertising format: label, 13 integer fields I1..I13, 26 categorical fields C1..C26.

Layouts: the Kaggle `train.txt` (tab-separated, no header) or a CSV with the header `label,I1..I13,C1..C26`
(the shared 10k sample), detected from the first line; `.gz` is accepted, and so is a leading UTF-8
byte-order mark. The raw TSV has no quoting convention (its values are hex hashes), so there a `"` is an
ordinary character and every line is one row; a CSV (or a TSV with the header) follows RFC 4180 quoting,
where a quoted value may hold the delimiter or a newline (`summary['quoted_newlines']` counts those).

Preprocessing follows the MPE spec (section Data), see `hq_jax.ctr.data.vocab`: categorical values rare in
the training split go to the field's OOV id; integer fields are discretised (`criteo_discretise`) and keep
every value seen in training; a missing integer (empty column) is a value of its own, and so is a negative
one (I2 holds -1, -2, ...). Rows are split 80/10/10 by a seeded permutation.

Bad input (wrong column count, a label other than 0 / 1, a non-numeric, nan or infinite integer, a quoted
value never closed) raises `UserError` naming `path:line` (the line where the bad record starts). Blank
lines are skipped and counted in `summary['blank_lines']`; every other line is part of a row.
"""

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hq_jax.ctr.data import cache, dataset, reader, vocab
from hq_jax.errors import UserError

CRITEO_INT_FIELDS = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CAT_FIELDS = tuple(f"C{i}" for i in range(1, 27))
CRITEO_HEADER = ("label",) + CRITEO_INT_FIELDS + CRITEO_CAT_FIELDS

# The key of a missing Criteo integer (an empty column): outside the range of any discretised value.
_MISSING_INT = np.iinfo(np.int64).min


def criteo_discretise(values: np.ndarray) -> np.ndarray:
  """Criteo integer-field discretisation: v > 2 -> floor(ln(v)^2), else int(v) (truncation toward 0).

  Compresses the heavy-tailed counts into a few dozen buckets (the scheme of the Criteo competition winners,
  used by the MPE authors); small and negative values keep their own bucket.

  Args:
    values: float array of any shape.

  Returns:
    int64 array of the same shape.
  """
  v = np.asarray(values, np.float64)
  out = np.trunc(v)
  big = v > 2
  out[big] = np.floor(np.log(v[big]) ** 2)
  return out.astype(np.int64)


def parse_labels(chunk: reader.Chunk, column: str) -> np.ndarray:
  """A label column -> (m,) int8 in {0, 1}.

  Raises:
    UserError: naming `path:line` and the token, for any token but '0' or '1'.
  """
  inverse, distinct = reader.distinct_tokens(chunk, column)
  tokens = distinct.to_pylist()
  bad = [i for i, t in enumerate(tokens) if t not in (b"0", b"1")]
  if bad:
    chunk.fail(int(np.flatnonzero(np.isin(inverse, bad))[0]), column, "label must be 0 or 1")
  return np.array([t == b"1" for t in tokens], np.int8)[inverse]


def _to_float(token: bytes) -> float:
  try:
    return float(token)
  except ValueError:
    return np.nan


def integer_keys(chunk: reader.Chunk, column: str) -> np.ndarray:
  """An integer column -> (m,) uint64 keys: the discretised value's int64 bits.

  Each distinct token is parsed once (pyarrow's exact float parser, or Python's `float()` where pyarrow
  refuses a token); an empty token is the value `_MISSING_INT`.

  Raises:
    UserError: naming `path:line` and the token, for anything non-numeric (or nan / inf).
  """
  inverse, distinct = reader.distinct_tokens(chunk, column)
  empty = pc.equal(pc.binary_length(distinct), 0).to_numpy(zero_copy_only=False)
  values = np.zeros(len(distinct), np.float64)
  filled = pa.array(np.flatnonzero(~empty))
  try:
    values[~empty] = pc.cast(distinct.take(filled), pa.float64()).to_numpy(zero_copy_only=False)
  except pa.ArrowInvalid:
    values[~empty] = [_to_float(t) for t in distinct.take(filled).to_pylist()]
  bad = ~empty & ~np.isfinite(values)
  if bad.any():
    chunk.fail(int(np.flatnonzero(bad[inverse])[0]), column, f"integer field {column} must be a number")
  keys = criteo_discretise(values)
  keys[empty] = _MISSING_INT
  return keys.view(np.uint64)[inverse]


def categorical_keys(chunk: reader.Chunk, column: str, wide: dict) -> np.ndarray:
  """A categorical column -> (m,) uint64 exact keys (`vocab.pack_keys`)."""
  return vocab.pack_keys(chunk.table.column(column).combine_chunks(), wide)


def _criteo_layout(path: str) -> tuple[str, bool]:
  """Detects (delimiter, has_header) from the first line (a UTF-8 byte-order mark dropped)."""
  first = reader.first_line(path)
  if not first:
    raise UserError(f"{path}:1: empty file or blank first line; expected a Criteo header or data row")
  delim = b"\t" if b"\t" in first else b","
  has_header = first.split(delim)[0].strip(b'"') == b"label"
  if has_header:
    header = tuple(t.strip(b'"').decode("utf-8", "replace") for t in first.split(delim))
    if header != CRITEO_HEADER:
      raise UserError(f"{path}:1: expected the Criteo header label,I1..I13,C1..C26, got "
                      f"{','.join(header)[:200]!r}")
  return delim.decode(), has_header


def _criteo_chunks(path: str, chunk_bytes: int, stats: dict) -> Iterator[tuple[np.ndarray, list]]:
  delim, has_header = _criteo_layout(path)
  stats.update(format="criteo-" + ("csv-with-header" if has_header else "tsv" if delim == "\t" else "csv"),
               blank_lines=0, quoted_newlines=0)
  wide = [{} for _ in CRITEO_CAT_FIELDS]
  quoting = has_header or delim != "\t"  # the raw Kaggle TSV has no quoting: '"' is a character there
  for chunk in reader.read_csv_chunks(path, delimiter=delim, column_names=CRITEO_HEADER,
                                      skip_first_line=has_header, chunk_bytes=chunk_bytes, quoting=quoting):
    stats["blank_lines"] += chunk.blank
    stats["quoted_newlines"] += chunk.quoted_newlines
    if not chunk.num_rows:
      continue
    labels = parse_labels(chunk, "label")
    keys = [integer_keys(chunk, c) for c in CRITEO_INT_FIELDS]
    keys += [categorical_keys(chunk, c, w) for c, w in zip(CRITEO_CAT_FIELDS, wide)]
    yield labels, keys


def load_criteo(path: str, *, cache_dir: str | None = None, min_count: int = 2, seed: int = 0,
                split: Sequence[float] = (0.8, 0.1, 0.1), name: str = "criteo",
                chunk_bytes: int = reader.DEFAULT_CHUNK_BYTES) -> dataset.CTRDataset:
  """Loads a Criteo display-advertising file (header CSV or the raw 40-column TSV; `.gz` accepted).

  Args:
    path: the file; the layout (CSV with header `label,I1..I13,C1..C26`, or headerless TSV/CSV) is
      detected from its first line.
    cache_dir: where the preprocessed arrays are cached (see `hq_jax.ctr.data.cache`).
    min_count: categorical values seen fewer times than this in the training split map to the field's OOV.
    seed: seed of the random row split.
    split: (train, valid, test) fractions.
    name: the dataset's name (and cache folder prefix).
    chunk_bytes: bytes parsed per step; does not change the result.

  Returns:
    A `CTRDataset` of 39 fields (I1..I13, then C1..C26), rows train | valid | test.

  Raises:
    UserError: bad input naming `path:line` (see the module docstring), a missing file, no data rows, or
      a split without both labels (`dataset.check_both_classes`).
  """
  fields = vocab.Fields(CRITEO_INT_FIELDS + CRITEO_CAT_FIELDS,
                        (True,) * len(CRITEO_INT_FIELDS) + (False,) * len(CRITEO_CAT_FIELDS))
  params = {"format": "criteo", "min_count": min_count, "seed": seed, "split": list(split)}

  def build(tmp):
    stats = dataset.random_split_sources(path, seed, split)
    out = vocab.build_tabular(tmp, path, fields, _criteo_chunks(path, chunk_bytes, stats),
                              min_count=min_count, seed=seed, split=split)
    out["summary"].update(stats)
    return out

  ds, _ = cache.cached_build(name, [path], params, cache_dir, build)
  return dataset.check_both_classes(ds)
