"""CTR data: Criteo, Avazu and libFM (Frappe) loaders, preprocessing and an on-disk cache.

Every loader returns a `CTRDataset`: one (n, F) int32 matrix of *global* feature ids (field f's ids lie in
`[field_offsets[f], field_offsets[f + 1])`), float32 labels in {0, 1}, the train/valid/test row indices and
each feature's occurrence count in the **training split only** (MPE's frequency groups are built from these
counts, and counting valid/test rows would leak them into training).

Preprocessing (the MPE spec, section Data):
  * Categorical values seen fewer than `min_count` times in the training split, and values never seen in
    training, map to one out-of-vocabulary (OOV) id per field; the OOV id is local id 0 of every field.
  * Criteo integer fields are discretised (`criteo_discretise`) and exempt from the rare rule; a missing
    value is a value of its own, and so is a negative one (I2 holds -1, -2, ...).
  * Rows are split 80/10/10 by a seeded permutation, or the given files are the splits (libFM).
  * Kept values of a field get local ids 1.. in the order of their raw key, so the result does not depend
    on how the file was chunked while parsing.

Rows are stored train first, then valid, then test, so each split is a contiguous slice of the (possibly
memory-mapped) id matrix and `split()` costs nothing even for Criteo's 45.8M rows.

Cache: parsing a large file once is slow, so the result is written as `.npy` files plus `meta.json` into a
folder keyed by a hash of the source files (path, size, mtime) and the preprocessing parameters, under
`cache_dir` (default `$HQ_JAX_CACHE`, else `~/.cache/hq_jax/ctr`). The folder is built under a temporary
name and renamed into place, so an interrupted run never leaves a half-written cache; a second load maps
the arrays with `mmap_mode='r'` and reports `summary['from_cache'] = True`.

Bad input (wrong column count, a non-numeric label or integer, a libFM row without exactly one id per field)
raises `UserError` naming `path:line`. Blank lines are skipped and counted in `summary['blank_lines']`.
"""

import csv
import dataclasses
import datetime
import glob
import gzip
import hashlib
import importlib.resources
import io
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from hq_jax.errors import UserError

# Bump when the cached layout or the preprocessing changes, so that old caches are not reused.
CACHE_VERSION = 1

# Bytes read per parsing chunk: large enough that per-chunk overhead vanishes, small enough that the
# chunk's token arrays stay in cache (on a 500k-row Criteo-format file, 2-8 MB chunks parsed 1.5-2x
# faster than 64 MB ones; see results/ctr_data.md).
DEFAULT_CHUNK_BYTES = 4 << 20

CRITEO_INT_FIELDS = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CAT_FIELDS = tuple(f"C{i}" for i in range(1, 27))
CRITEO_HEADER = ("label",) + CRITEO_INT_FIELDS + CRITEO_CAT_FIELDS

# Frappe's 10 one-hot fields (user, item, daytime, weekday, isweekend, homework, cost, weather, country,
# city) and their id ranges, from ../shared/data/README.md.
FRAPPE_FIELDS = ("user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather",
                 "country", "city")
FRAPPE_FIELD_OFFSETS = (0, 957, 5039, 5046, 5053, 5055, 5058, 5060, 5069, 5149, 5382)

# Avazu: the columns that are not categorical features, and the three fields derived from `hour`.
AVAZU_ID, AVAZU_LABEL, AVAZU_HOUR = "id", "click", "hour"
AVAZU_HOUR_FIELDS = ("hour_of_day", "weekday", "is_weekend")

# The key of a missing Criteo integer (an empty column): outside the range of any discretised value.
_MISSING_INT = np.iinfo(np.int64).min

SPLIT_NAMES = ("train", "valid", "test")


@dataclasses.dataclass(frozen=True)
class CTRDataset:
  """A CTR dataset over one global feature-id space of `num_features` ids in `num_fields` fields."""

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
    """(ids, labels) of one split; a slice (no copy) when the split's rows are contiguous."""
    if name not in self.splits:
      raise UserError(f"unknown split {name!r}; expected one of {sorted(self.splits)}")
    rows = self.splits[name]
    if rows.size and rows[-1] - rows[0] + 1 == rows.size and np.all(np.diff(rows) == 1):
      lo, hi = int(rows[0]), int(rows[-1]) + 1
      return self.ids[lo:hi], self.labels[lo:hi]
    return self.ids[rows], self.labels[rows]


# ---------------------------------------------------------------------------------------------------------
# Small pure functions (each formula in one place).


def criteo_discretise(values: np.ndarray) -> np.ndarray:
  """Criteo integer-field discretisation: v > 2 -> floor(ln(v)^2), else int(v) (truncation toward 0).

  Compresses the heavy-tailed counts into a few dozen buckets (the scheme of the Criteo competition winners,
  used by the MPE authors); small and negative values keep their own bucket.
  """
  v = np.asarray(values, np.float64)
  out = np.trunc(v)
  big = v > 2
  out[big] = np.floor(np.log(v[big]) ** 2)
  return out.astype(np.int64)


def avazu_hour_fields(hour: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Avazu `hour` (YYMMDDHH, 20YY) -> (hour of day 0-23, weekday 0=Monday..6, is_weekend 0/1).

  Raises ValueError for an impossible date or hour (the caller turns it into a `UserError` with a line).
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


def split_rows(num_rows: int, fractions: Sequence[float], seed: int) -> tuple[np.ndarray, ...]:
  """A seeded random split of row indices into len(fractions) sorted int64 arrays.

  Sizes are round(fraction * n) for every part but the first, which takes the rest (so 9,999 rows split
  80/10/10 into 7,999 / 1,000 / 1,000). Returned rows are sorted so that reading them from a memory-mapped
  file is sequential.
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
  """Yields (ids int32 (b, F), labels float32 (b,)) batches; shuffled when `rng` is given.

  Rows of a shuffled batch are read in increasing index order (a batch is a set, so order inside it does
  not matter for training) which keeps reads from a memory-mapped matrix close to sequential.
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


# ---------------------------------------------------------------------------------------------------------
# Cache.


def default_cache_dir() -> str:
  """`$HQ_JAX_CACHE` if set, else `~/.cache/hq_jax/ctr`."""
  return os.environ.get("HQ_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hq_jax", "ctr")


def _fingerprint(path: str) -> list:
  if not os.path.isfile(path):
    raise UserError(f"{path}: file not found")
  st = os.stat(path)
  return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def _cache_key(name: str, sources: Sequence[str], params: dict) -> str:
  material = json.dumps({"version": CACHE_VERSION, "name": name,
                         "sources": [_fingerprint(p) for p in sources], "params": params},
                        sort_keys=True, default=str)
  return hashlib.sha256(material.encode()).hexdigest()[:16]


def _load_cache(folder: str, from_cache: bool) -> tuple[CTRDataset, dict]:
  """Maps a finished cache folder; returns the dataset and any extra arrays stored beside it."""
  with open(os.path.join(folder, "meta.json")) as f:
    meta = json.load(f)
  arrays = {name: np.load(os.path.join(folder, name + ".npy"), mmap_mode="r")
            for name in meta["arrays"]}
  splits = {k: np.arange(lo, hi, dtype=np.int64) for k, (lo, hi) in meta["splits"].items()}
  summary = dict(meta["summary"], cache_path=folder, from_cache=from_cache)
  ds = CTRDataset(name=meta["name"], ids=arrays.pop("ids"), labels=arrays.pop("labels"),
                  field_offsets=np.array(arrays.pop("field_offsets")), counts=np.array(arrays.pop("counts")),
                  splits=splits, summary=summary)
  return ds, arrays


def cached_build(name: str, sources: Sequence[str], params: dict, cache_dir: str | None,
                 build: Callable[[str], dict]) -> tuple[CTRDataset, dict]:
  """Returns the cached dataset for (sources, params), building it with `build(tmp_folder)` if absent.

  `build` writes `ids.npy`, `labels.npy`, `field_offsets.npy`, `counts.npy` (and any extra `.npy` arrays)
  into the folder it is given, rows ordered train | valid | test, and returns
  `{'splits': {'train': n_train, 'valid': n_valid, 'test': n_test}, 'summary': {...}}`.
  The folder is renamed into place only when complete.
  """
  cache_dir = cache_dir or default_cache_dir()
  try:
    os.makedirs(cache_dir, exist_ok=True)
  except OSError as e:
    raise UserError(f"{cache_dir}: cannot create the CTR cache folder ({e.strerror}); set HQ_JAX_CACHE "
                    "or pass cache_dir") from None
  folder = os.path.join(cache_dir, f"{name}-{_cache_key(name, sources, params)}")
  if os.path.isfile(os.path.join(folder, "meta.json")):
    return _load_cache(folder, from_cache=True)
  tmp = tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=cache_dir)
  try:
    t0, c0 = time.perf_counter(), time.process_time()
    out = build(tmp)
    sizes = [int(out["splits"][k]) for k in SPLIT_NAMES]
    bounds = np.cumsum([0] + sizes).tolist()
    arrays = sorted(f[:-4] for f in os.listdir(tmp) if f.endswith(".npy"))
    summary = dict(out["summary"], build_seconds=round(time.perf_counter() - t0, 3),
                   build_cpu_seconds=round(time.process_time() - c0, 3),
                   sources=[os.path.abspath(p) for p in sources], params=params)
    meta = {"version": CACHE_VERSION, "name": name, "arrays": arrays, "summary": summary,
            "splits": {k: [bounds[i], bounds[i + 1]] for i, k in enumerate(SPLIT_NAMES)}}
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump(meta, f, indent=1, default=_json_default)
    try:
      os.rename(tmp, folder)
    except OSError:  # another process finished the same cache first: use theirs
      if not os.path.isfile(os.path.join(folder, "meta.json")):
        raise
  finally:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return _load_cache(folder, from_cache=False)


def _json_default(x):
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  return str(x)


# ---------------------------------------------------------------------------------------------------------
# Chunked text reading.


def _open_binary(path: str):
  if not os.path.isfile(path):
    raise UserError(f"{path}: file not found")
  return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _read_line_chunks(path: str, chunk_bytes: int) -> Iterator[tuple[int, bytes]]:
  """Yields (number of the chunk's first line, bytes of whole lines ending in b'\\n'), CRs removed."""
  with _open_binary(path) as f:
    rest, lineno = b"", 1
    while True:
      try:
        block = f.read(chunk_bytes)
      except (OSError, EOFError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
      if not block:
        break
      block = rest + block
      cut = block.rfind(b"\n")
      if cut < 0:
        rest = block
        continue
      data, rest = block[:cut + 1], block[cut + 1:]
      data = data.replace(b"\r", b"")
      yield lineno, data
      lineno += data.count(b"\n")
    if rest:
      yield lineno, rest.replace(b"\r", b"") + b"\n"


@dataclasses.dataclass
class _Table:
  """One chunk of a delimited file, tokenised without creating a Python object per token.

  Token (row r, column c) is `buf[start[c, r] : start[c, r] + length[c, r]]`.
  """

  buf: np.ndarray  # (bytes,) uint8 chunk: a view whose base has zero padding after it
  start: np.ndarray  # (C, n) int64 token start offsets into buf (column-major: columns are read whole)
  length: np.ndarray  # (C, n) int64 token lengths
  lines: np.ndarray  # (n,) int64 line number of every row
  blank: int  # blank lines skipped in this chunk

  @property
  def num_rows(self) -> int:
    return int(self.lines.shape[0])

  def token(self, r: int, c: int) -> bytes:
    s = int(self.start[c, r])
    return self.buf[s:s + int(self.length[c, r])].tobytes()

  def words(self, c: int, num_words: int) -> np.ndarray:
    """Column c's first 8 * num_words bytes as (n, num_words) little-endian uint64, zero-padded.

    Reads 8 bytes at a time through an overlapping stride-1 uint64 view of the buffer, so packing a
    token costs a few vector operations instead of one per byte.
    """
    if num_words > _MAX_WORDS:
      raise ValueError(f"at most {_MAX_WORDS} words per token")
    # buf is followed by 8 * (_MAX_WORDS + 1) zero bytes (see _tokenise), so every window is in bounds.
    windows = np.ndarray(shape=(self.buf.size,), dtype="<u8", buffer=self.buf.base, strides=(1,))
    out = np.empty((self.num_rows, num_words), np.uint64)
    start, length = self.start[c], self.length[c]
    for i in range(num_words):
      out[:, i] = windows[start + 8 * i] & _BYTE_MASKS[np.clip(length - 8 * i, 0, 8)]
    return out

  def gather(self, c: int, width: int) -> np.ndarray:
    """Column c's tokens as a zero-padded (n, width) uint8 matrix (longer tokens are cut)."""
    return self.words(c, -(-width // 8)).view(np.uint8)[:, :width]


# The longest prefix of a token that `_Table.words` reads, in 8-byte words.
_MAX_WORDS = 3

# _BYTE_MASKS[k] keeps the low k bytes of a little-endian uint64.
_BYTE_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(9)], np.uint64)

# Joins the fields of quoted CSV rows after the csv module has parsed them; never occurs in text.
_UNIT_SEP = b"\x1f"


def _split_table(path: str, first_line: int, data: bytes, delim: bytes, num_cols: int) -> _Table:
  """Tokenises whole lines (`data` ends in b'\\n') into `num_cols` columns with a few numpy passes.

  Blank lines are dropped (and counted); a line with another number of columns is a `UserError`.
  Quoted CSV (rare for CTR logs) goes through the csv module first, then the same path.
  """
  if b'"' not in data:
    table = _tokenise(path, first_line, data, delim, num_cols, None, 0)
    if table is not None:
      return table
  # Slow path, only for chunks with blank lines or quotes: filter line by line, then tokenise again.
  lines = data.split(b"\n")[:-1]
  line_no = np.arange(first_line, first_line + len(lines), dtype=np.int64)
  keep = np.array([bool(l) for l in lines], bool)
  lines = [l for l in lines if l]
  line_no = line_no[keep]
  if b'"' in data:
    rows = list(csv.reader(io.StringIO(b"\n".join(lines).decode("utf-8", "replace")),
                           delimiter=delim.decode()))
    for r, ln in zip(rows, line_no):
      if len(r) != num_cols:
        raise UserError(f"{path}:{ln}: expected {num_cols} columns, found {len(r)}")
    lines = [_UNIT_SEP.join(t.encode() for t in r) for r in rows]
    delim = _UNIT_SEP
  data = b"".join(l + b"\n" for l in lines)
  return _tokenise(path, first_line, data, delim, num_cols, line_no, int((~keep).sum()))


def _tokenise(path: str, first_line: int, data: bytes, delim: bytes, num_cols: int,
              line_no: np.ndarray | None, blank: int) -> _Table | None:
  """The vectorised tokeniser; returns None if it meets a blank line (when `line_no` is None)."""
  padded = np.zeros(len(data) + 8 * (_MAX_WORDS + 1), np.uint8)
  padded[:len(data)] = np.frombuffer(data, np.uint8)
  buf = padded[:len(data)]
  newline = buf == 10
  ends = np.flatnonzero((buf == delim[0]) | newline)  # every token ends at a delimiter or newline
  eol = np.flatnonzero(newline[ends])
  if not eol.size:
    empty = np.zeros((num_cols, 0), np.int64)
    return _Table(buf, empty, empty, np.zeros(0, np.int64), blank)
  per_line = np.diff(eol, prepend=-1)
  bad = np.flatnonzero(per_line != num_cols)
  if bad.size and line_no is None:
    return None  # maybe blank lines: let the caller filter them and number lines itself
  if line_no is None:
    line_no = np.arange(first_line, first_line + eol.size, dtype=np.int64)
  if bad.size:
    raise UserError(f"{path}:{line_no[bad[0]]}: expected {num_cols} columns, found {per_line[bad[0]]}")
  starts = np.empty_like(ends)
  starts[0] = 0
  starts[1:] = ends[:-1] + 1
  starts = starts.reshape(eol.size, num_cols).T
  return _Table(buf, np.ascontiguousarray(starts), ends.reshape(eol.size, num_cols).T - starts, line_no,
                blank)


def _raise_at(path: str, table: _Table, rows: np.ndarray, col: int, what: str):
  r = int(rows[0])
  tok = table.token(r, col).decode("utf-8", "replace")
  raise UserError(f"{path}:{table.lines[r]}: {what}, got {tok!r}")


def _parse_labels(path: str, table: _Table, col: int) -> np.ndarray:
  """A 0/1 label column -> int8; anything else is an error naming the line."""
  first = table.buf[np.minimum(table.start[col], table.buf.size - 1)]
  ok = (table.length[col] == 1) & ((first == ord("0")) | (first == ord("1")))
  if not ok.all():
    _raise_at(path, table, np.flatnonzero(~ok), col, "label must be 0 or 1")
  return (first == ord("1")).astype(np.int8)


def _to_float(token: bytes) -> float:
  try:
    return float(token)
  except ValueError:
    return math.nan


def _criteo_int_keys(path: str, table: _Table, col: int, what: str) -> tuple[np.ndarray, np.ndarray]:
  """An integer column -> (keys, inverse): row r's key is keys[inverse[r]], a discretised value as uint64.

  Numeric columns repeat few distinct tokens, so each distinct token (packed into a uint64) is parsed once
  by Python's `float()` (exact), discretised with `criteo_discretise`, and shared through `inverse`; the
  vocabulary then only looks at the distinct keys. An empty token is the value `_MISSING_INT`; anything
  non-numeric (or nan / inf) is an error naming the line.
  """
  length = table.length[col]
  wide = length > 8  # rare: more than 8 characters cannot be packed into one uint64
  tokens = table.words(col, 1)[:, 0]
  if wide.any():
    tokens = tokens.copy()
    tokens[wide] = 0  # parsed one by one below
  uniq, inv = np.unique(tokens, return_inverse=True)
  inv = inv.reshape(-1)
  values = np.array([_to_float(t) if t else 0.0 for t in uniq.view("S8")], np.float64)
  rows = np.flatnonzero(wide)
  if rows.size:
    values = np.concatenate([values, [_to_float(table.token(r, col)) for r in rows]])
    inv[rows] = uniq.size + np.arange(rows.size)
    uniq = np.concatenate([uniq, np.ones(rows.size, np.uint64)])  # any non-zero: not a missing value
  bad = (uniq != 0) & ~np.isfinite(values)
  if bad.any():
    _raise_at(path, table, np.flatnonzero(bad[inv]), col, f"{what} must be a number")
  keys = criteo_discretise(np.where(bad, 0.0, values))
  keys[uniq == 0] = _MISSING_INT
  return keys.view(np.uint64), inv


class _KeyPacker:
  """Turns the tokens of one categorical column into exact uint64 keys.

  Tokens of at most 8 bytes are packed into the 8 bytes of a uint64 (exact; the empty token is key 0).
  Longer tokens get serial keys with top byte 0xFF, which no packed UTF-8 text can produce (0xFF never
  occurs in UTF-8), so keys stay exact for any text file.
  """

  def __init__(self):
    self._wide: dict[bytes, int] = {}

  def __call__(self, table: _Table, col: int) -> np.ndarray:
    keys = table.words(col, 1)[:, 0]
    for r in np.flatnonzero(table.length[col] > 8):
      keys[r] = self._wide.setdefault(table.token(r, col), (0xFF << 56) | len(self._wide))
    return keys


class _Vocab:
  """Dense provisional ids for the raw uint64 keys of one field, grown chunk by chunk.

  Known keys are kept as a few sorted runs whose sizes shrink geometrically (merged like a binary
  counter), so adding a chunk's new keys never rewrites the whole vocabulary: total work stays
  O(V log V) for V distinct values even over thousands of chunks (Criteo's largest field has ~10M).
  """

  def __init__(self):
    self.runs: list[tuple[np.ndarray, np.ndarray]] = []  # (sorted keys, their ids), largest first
    self.keys_by_id: list[np.ndarray] = []
    self.size = 0

  def encode(self, keys: np.ndarray) -> np.ndarray:
    u, inv = np.unique(keys, return_inverse=True)
    ids = np.full(u.size, -1, np.int64)
    todo = np.arange(u.size)
    for run_keys, run_ids in self.runs:
      if not todo.size:
        break
      pos = np.minimum(np.searchsorted(run_keys, u[todo]), run_keys.size - 1)
      hit = run_keys[pos] == u[todo]
      ids[todo[hit]] = run_ids[pos[hit]]
      todo = todo[~hit]
    if todo.size:  # new keys: u is sorted, so they already form a sorted run
      new_ids = np.arange(self.size, self.size + todo.size)
      ids[todo] = new_ids
      self.keys_by_id.append(u[todo])
      self.size += todo.size
      self.runs.append((u[todo], new_ids))
      while len(self.runs) > 1 and self.runs[-2][0].size <= 2 * self.runs[-1][0].size:
        (k1, i1), (k2, i2) = self.runs.pop(), self.runs.pop()
        k, i = np.concatenate([k2, k1]), np.concatenate([i2, i1])
        order = np.argsort(k, kind="stable")
        self.runs.append((k[order], i[order]))
    return ids[inv.reshape(-1)].astype(np.int32)

  def all_keys(self) -> np.ndarray:
    """Keys in provisional-id order."""
    return np.concatenate(self.keys_by_id) if self.keys_by_id else np.empty(0, np.uint64)


# ---------------------------------------------------------------------------------------------------------
# Tabular (Criteo / Avazu) preprocessing shared by both formats.


@dataclasses.dataclass(frozen=True)
class _Fields:
  names: tuple  # field names, in id order
  rare_exempt: tuple  # per field: True keeps every value seen in training (Criteo integer fields)


def _build_tabular(tmp: str, source: str, fields: _Fields, chunks: Iterator[tuple[np.ndarray, list]], *,
                   min_count: int, seed: int, split: Sequence[float]) -> dict:
  """Streams (labels, per-field keys) chunks into the cache layout of `cached_build`.

  A field's keys are a (n,) uint64 array, or a (distinct keys, inverse) pair when the parser already
  found the distinct values (numeric fields).

  Pass 1 gives every raw value a provisional per-field id and appends the (n, F) provisional matrix to a
  scratch file. Then the rows are split, values are counted on the training rows only, rare and
  train-unseen values go to the field's OOV id (local 0), and the final ids are written split by split.
  """
  num_fields = len(fields.names)
  vocabs = [_Vocab() for _ in range(num_fields)]
  labels_parts = []
  n = 0
  t0, c0 = time.perf_counter(), time.process_time()
  scratch_path = os.path.join(tmp, "provisional.bin")
  with open(scratch_path, "wb") as scratch:
    for labels, keys in chunks:
      prov = np.empty((labels.shape[0], num_fields), np.int32)
      for f in range(num_fields):
        k = keys[f]
        prov[:, f] = vocabs[f].encode(k) if isinstance(k, np.ndarray) else vocabs[f].encode(k[0])[k[1]]
      scratch.write(prov.tobytes())
      labels_parts.append(labels)
      n += labels.shape[0]
  parse_seconds, parse_cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
  if n == 0:
    raise UserError(f"{source}: no data rows found")
  labels = np.concatenate(labels_parts).astype(np.float32)
  prov = np.memmap(scratch_path, dtype=np.int32, mode="r", shape=(n, num_fields))
  prov_sizes = np.array([v.size for v in vocabs], np.int64)
  prov_off = np.concatenate([[0], np.cumsum(prov_sizes)])

  parts = split_rows(n, split, seed)
  row_chunk = max(1, (16 << 20) // (4 * num_fields))  # ~16 MB of ids per step

  # Count provisional values on the training rows only.
  prov_counts = np.zeros(int(prov_off[-1]), np.int64)
  for lo in range(0, parts[0].size, row_chunk):
    block = np.asarray(prov[parts[0][lo:lo + row_chunk]], np.int64) + prov_off[:-1]
    prov_counts += np.bincount(block.ravel(), minlength=prov_counts.size)

  # Provisional -> final global id: OOV is local 0, kept values 1.. in raw-key order.
  lut = np.empty(prov_counts.size, np.int32)
  sizes, field_stats = [], []
  offset = 0
  for f in range(num_fields):
    c = prov_counts[prov_off[f]:prov_off[f + 1]]
    keep = c >= (1 if fields.rare_exempt[f] else max(min_count, 1))
    keys = vocabs[f].all_keys()
    kept = np.flatnonzero(keep)
    kept = kept[np.argsort(keys[kept], kind="stable")]
    local = np.zeros(c.size, np.int64)
    local[kept] = np.arange(1, kept.size + 1)
    lut[prov_off[f]:prov_off[f + 1]] = offset + local
    sizes.append(kept.size + 1)
    seen = c > 0
    field_stats.append({"name": fields.names[f], "features": kept.size + 1,
                        "train_distinct_values": int(seen.sum()),
                        "rare_values_to_oov": int((seen & ~keep).sum()),
                        "rare_train_occurrences": int(c[seen & ~keep].sum()),
                        "all_split_distinct_values": int(c.size)})
    offset += kept.size + 1
  field_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
  counts = np.bincount(lut, weights=prov_counts, minlength=int(field_offsets[-1])).astype(np.int64)

  ids = np.lib.format.open_memmap(os.path.join(tmp, "ids.npy"), mode="w+", dtype=np.int32,
                                  shape=(n, num_fields))
  out_labels = np.empty(n, np.float32)
  oov_ids = field_offsets[:-1]
  oov_rate = {}
  pos = 0
  for name, rows in zip(SPLIT_NAMES, parts):
    oov = 0
    for lo in range(0, rows.size, row_chunk):
      r = rows[lo:lo + row_chunk]
      block = lut[np.asarray(prov[r], np.int64) + prov_off[:-1]]
      ids[pos:pos + r.size] = block
      out_labels[pos:pos + r.size] = labels[r]
      oov += int((block == oov_ids).sum())
      pos += r.size
    oov_rate[name] = oov / max(1, rows.size * num_fields)
  ids.flush()
  del ids, prov
  os.remove(scratch_path)
  np.save(os.path.join(tmp, "labels.npy"), out_labels)
  np.save(os.path.join(tmp, "field_offsets.npy"), field_offsets)
  np.save(os.path.join(tmp, "counts.npy"), counts)
  summary = {
      "rows": {k: int(p.size) for k, p in zip(SPLIT_NAMES, parts)},
      "num_fields": num_fields, "num_features": int(field_offsets[-1]),
      "ctr": {k: float(out_labels[s:e].mean()) if e > s else None
              for k, s, e in zip(SPLIT_NAMES, *_bounds(parts))},
      "oov_rate": oov_rate, "min_count": min_count, "seed": seed, "split": list(split),
      "parse_seconds": round(parse_seconds, 3), "parse_cpu_seconds": round(parse_cpu_seconds, 3),
      "parse_rows_per_second": round(n / max(parse_seconds, 1e-9)),
      "fields": field_stats,
  }
  return {"splits": {k: int(p.size) for k, p in zip(SPLIT_NAMES, parts)}, "summary": summary}


def _bounds(parts):
  b = np.cumsum([0] + [p.size for p in parts])
  return b[:-1].tolist(), b[1:].tolist()


# ---------------------------------------------------------------------------------------------------------
# Criteo.


def _criteo_layout(path: str) -> tuple[bytes, bool]:
  """Detects (delimiter, has_header) from the first line."""
  with _open_binary(path) as f:
    first = f.readline().rstrip(b"\r\n")
  if not first:
    raise UserError(f"{path}:1: empty file or blank first line; expected a Criteo header or data row")
  delim = b"\t" if b"\t" in first else b","
  has_header = first.split(delim)[0].strip(b'"') == b"label"
  if has_header:
    header = tuple(t.strip(b'"').decode("utf-8", "replace") for t in first.split(delim))
    if header != CRITEO_HEADER:
      raise UserError(f"{path}:1: expected the Criteo header label,I1..I13,C1..C26, got "
                      f"{','.join(header)[:200]!r}")
  return delim, has_header


def _criteo_chunks(path: str, chunk_bytes: int, stats: dict) -> Iterator[tuple[np.ndarray, list]]:
  delim, has_header = _criteo_layout(path)
  stats.update(format="criteo-" + ("csv-with-header" if has_header else
                                   "tsv" if delim == b"\t" else "csv"), blank_lines=0)
  packers = [_KeyPacker() for _ in CRITEO_CAT_FIELDS]
  num_cols = len(CRITEO_HEADER)
  for first_line, data in _read_line_chunks(path, chunk_bytes):
    if has_header and first_line == 1:
      data = data[data.index(b"\n") + 1:]
      first_line = 2
    table = _split_table(path, first_line, data, delim, num_cols)
    stats["blank_lines"] += table.blank
    if not table.num_rows:
      continue
    labels = _parse_labels(path, table, 0)
    keys = []
    for c in range(1, 1 + len(CRITEO_INT_FIELDS)):
      keys.append(_criteo_int_keys(path, table, c, f"integer field {CRITEO_HEADER[c]}"))
    for j, packer in enumerate(packers):
      keys.append(packer(table, 1 + len(CRITEO_INT_FIELDS) + j))
    yield labels, keys


def load_criteo(path: str, *, cache_dir: str | None = None, min_count: int = 2, seed: int = 0,
                split: Sequence[float] = (0.8, 0.1, 0.1), name: str = "criteo",
                chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> CTRDataset:
  """Loads a Criteo display-advertising file (header CSV or the raw 40-column TSV; `.gz` accepted).

  Args:
    path: the file; the layout (CSV with header `label,I1..I13,C1..C26`, or headerless TSV/CSV) is
      detected from its first line.
    cache_dir: where the preprocessed arrays are cached (see the module docstring).
    min_count: categorical values seen fewer times than this in the training split map to the field's OOV.
    seed: seed of the random 80/10/10 row split.
    split: (train, valid, test) fractions.
    name: the dataset's name (and cache folder prefix).
    chunk_bytes: bytes parsed per step; does not change the result.
  """
  fields = _Fields(CRITEO_INT_FIELDS + CRITEO_CAT_FIELDS,
                   (True,) * len(CRITEO_INT_FIELDS) + (False,) * len(CRITEO_CAT_FIELDS))
  params = {"format": "criteo", "min_count": min_count, "seed": seed, "split": list(split)}

  def build(tmp):
    stats = {}
    out = _build_tabular(tmp, path, fields, _criteo_chunks(path, chunk_bytes, stats), min_count=min_count,
                         seed=seed, split=split)
    out["summary"].update(stats)
    return out

  ds, _ = cached_build(name, [path], params, cache_dir, build)
  return ds


# ---------------------------------------------------------------------------------------------------------
# Avazu.


def _avazu_chunks(path: str, chunk_bytes: int, stats: dict, header_out: list
                  ) -> Iterator[tuple[np.ndarray, list]]:
  with _open_binary(path) as f:
    first = f.readline().rstrip(b"\r\n")
  header = [t.strip(b'"').decode("utf-8", "replace") for t in first.split(b",")]
  missing = [c for c in (AVAZU_ID, AVAZU_LABEL, AVAZU_HOUR) if c not in header]
  if missing:
    raise UserError(f"{path}:1: expected an Avazu header with columns id,click,hour,...; missing "
                    f"{','.join(missing)} (the unlabeled Kaggle test file cannot be used)")
  col = {h: i for i, h in enumerate(header)}
  cat_cols = [i for i, h in enumerate(header) if h not in (AVAZU_ID, AVAZU_LABEL, AVAZU_HOUR)]
  header_out.extend(header[i] for i in cat_cols)
  stats.update(format="avazu-csv", blank_lines=0)
  packers = [_KeyPacker() for _ in cat_cols]
  for first_line, data in _read_line_chunks(path, chunk_bytes):
    if first_line == 1:
      data = data[data.index(b"\n") + 1:]
      first_line = 2
    table = _split_table(path, first_line, data, b",", len(header))
    stats["blank_lines"] += table.blank
    if not table.num_rows:
      continue
    labels = _parse_labels(path, table, col[AVAZU_LABEL])
    hour_col = col[AVAZU_HOUR]
    digits = table.gather(hour_col, 8).astype(np.int64) - ord("0")
    ok = (table.length[hour_col] == 8) & np.all((digits >= 0) & (digits <= 9), axis=1)
    if not ok.all():
      _raise_at(path, table, np.flatnonzero(~ok), hour_col, "hour must be YYMMDDHH (8 digits)")
    hours = digits @ (10 ** np.arange(7, -1, -1))
    try:
      derived = avazu_hour_fields(hours)
    except ValueError:
      bad = [r for r in range(table.num_rows) if not _valid_avazu_hour(hours[r])]
      _raise_at(path, table, np.array(bad), hour_col, "hour must be a valid YYMMDDHH date and hour")
    keys = [d.astype(np.int64).view(np.uint64) for d in derived]
    keys += [packer(table, c) for packer, c in zip(packers, cat_cols)]
    yield labels, keys


def _valid_avazu_hour(hour: int) -> bool:
  try:
    avazu_hour_fields(np.array([hour]))
    return True
  except ValueError:
    return False


def load_avazu(path: str, *, cache_dir: str | None = None, min_count: int = 2, seed: int = 0,
               split: Sequence[float] = (0.8, 0.1, 0.1), name: str = "avazu",
               chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> CTRDataset:
  """Loads the Avazu CTR training file (CSV with header `id,click,hour,C1,banner_pos,...`; `.gz` accepted).

  `id` is dropped, `click` is the label and `hour` (YYMMDDHH) becomes three fields (hour of day, weekday,
  is_weekend; these are exempt from the rare rule), followed by the remaining categorical columns in file
  order: 24 fields for the real file. Arguments as for `load_criteo`.
  """
  header: list = []
  with _open_binary(path) as f:
    first = f.readline().rstrip(b"\r\n").decode("utf-8", "replace")
  cats = [h.strip('"') for h in first.split(",") if h.strip('"') not in (AVAZU_ID, AVAZU_LABEL, AVAZU_HOUR)]
  fields = _Fields(AVAZU_HOUR_FIELDS + tuple(cats), (True,) * 3 + (False,) * len(cats))
  params = {"format": "avazu", "min_count": min_count, "seed": seed, "split": list(split)}

  def build(tmp):
    stats = {}
    out = _build_tabular(tmp, path, fields, _avazu_chunks(path, chunk_bytes, stats, header),
                         min_count=min_count, seed=seed, split=split)
    out["summary"].update(stats)
    return out

  ds, _ = cached_build(name, [path], params, cache_dir, build)
  return ds


# ---------------------------------------------------------------------------------------------------------
# libFM (Frappe).


def _parse_libfm(path: str, field_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
  """One libFM file of one-hot rows -> (ids (n, F) int32 sorted by field, labels float32, blank lines)."""
  num_fields = field_offsets.size - 1
  with _open_binary(path) as f:
    data = f.read().replace(b"\r", b"")
  lines = data.split(b"\n")
  if lines and lines[-1] == b"":
    lines.pop()
  line_no = np.arange(1, len(lines) + 1, dtype=np.int64)
  blank = 0
  stripped = [l.strip() for l in lines]
  if b"" in stripped:
    keep = np.array([bool(l) for l in stripped])
    blank = int((~keep).sum())
    lines = [l for l, k in zip(lines, keep) if k]
    line_no = line_no[keep]
  n = len(lines)
  if n == 0:
    raise UserError(f"{path}: no data rows")

  def row_error(i, msg):
    raise UserError(f"{path}:{line_no[i]}: {msg}: {lines[i][:120].decode('utf-8', 'replace')!r}")

  body = b"\n".join(lines)
  tokens = body.replace(b":", b" ").split()
  if len(tokens) != n * (2 * num_fields + 1) or body.count(b":") != n * num_fields:
    for i, l in enumerate(lines):
      parts = l.split()
      if len(parts) != num_fields + 1 or any(p.count(b":") != 1 for p in parts[1:]):
        row_error(i, f"expected a label and {num_fields} idx:value pairs")
    raise AssertionError("libFM row count mismatch not located")
  table = np.array(tokens, dtype=bytes).reshape(n, 2 * num_fields + 1)
  try:
    label = table[:, 0].astype(np.float64)
    idx = table[:, 1::2].astype(np.int64)
    val = table[:, 2::2].astype(np.float64)
  except ValueError:
    for i, l in enumerate(lines):
      parts = l.replace(b":", b" ").split()
      try:
        float(parts[0]), [int(p) for p in parts[1::2]], [float(p) for p in parts[2::2]]
      except ValueError:
        row_error(i, "label, feature index or value is not a number")
    raise
  bad = np.flatnonzero(~np.isin(label, (-1.0, 0.0, 1.0)))
  if bad.size:
    row_error(bad[0], "label must be 1 or -1 (or 0)")
  bad = np.flatnonzero(np.any(val != 1.0, axis=1))
  if bad.size:
    row_error(bad[0], "only one-hot rows (every value 1) are supported")
  idx.sort(axis=1)
  field = np.searchsorted(field_offsets, idx, side="right") - 1
  ok = (idx >= 0) & (idx < field_offsets[-1]) & (field == np.arange(num_fields))
  bad = np.flatnonzero(~ok.all(axis=1))
  if bad.size:
    i = bad[0]
    got = np.bincount(np.clip(field[i], 0, num_fields - 1), minlength=num_fields)
    row_error(i, f"expected exactly one feature id per field (ids 0..{field_offsets[-1] - 1}); "
                 f"fields missing {np.flatnonzero(got == 0).tolist()}, "
                 f"repeated {np.flatnonzero(got > 1).tolist()}")
  return idx.astype(np.int32), (label > 0).astype(np.float32), blank


def load_libfm(train_path: str, valid_path: str, test_path: str, *, cache_dir: str | None = None,
               name: str = "frappe", field_offsets: Sequence[int] | None = None) -> CTRDataset:
  """Loads one-hot libFM files (`label idx:1 idx:1 ...`) whose three files are the splits.

  Args:
    train_path, valid_path, test_path: the split files; counts come from the training file only.
    cache_dir: cache folder (see the module docstring).
    name: dataset name.
    field_offsets: (F + 1) id-range boundaries of the fields; each row must hold exactly one id per field
      (a missing or repeated field is an error naming the line). Default: Frappe's 10 fields.
  """
  offsets = np.asarray(FRAPPE_FIELD_OFFSETS if field_offsets is None else field_offsets, np.int64)
  if offsets.ndim != 1 or offsets.size < 2 or offsets[0] != 0 or np.any(np.diff(offsets) <= 0):
    raise UserError(f"field_offsets must start at 0 and increase strictly, got {offsets.tolist()}")
  paths = [train_path, valid_path, test_path]
  params = {"format": "libfm", "field_offsets": offsets.tolist()}

  def build(tmp):
    t0 = time.perf_counter()
    parsed = [_parse_libfm(p, offsets) for p in paths]
    parse_seconds = time.perf_counter() - t0
    ids = np.concatenate([p[0] for p in parsed])
    labels = np.concatenate([p[1] for p in parsed])
    n_train = parsed[0][0].shape[0]
    counts = np.bincount(ids[:n_train].ravel(), minlength=int(offsets[-1])).astype(np.int64)
    np.save(os.path.join(tmp, "ids.npy"), ids)
    np.save(os.path.join(tmp, "labels.npy"), labels)
    np.save(os.path.join(tmp, "field_offsets.npy"), offsets)
    np.save(os.path.join(tmp, "counts.npy"), counts)
    rows = {k: int(p[0].shape[0]) for k, p in zip(SPLIT_NAMES, parsed)}
    bounds = np.cumsum([0] + list(rows.values()))
    unseen = {k: int((counts[ids[bounds[i]:bounds[i + 1]]] == 0).sum())
              for i, k in enumerate(SPLIT_NAMES[1:], start=1)}
    summary = {"rows": rows, "num_fields": int(offsets.size - 1), "num_features": int(offsets[-1]),
               "ctr": {k: float(p[1].mean()) for k, p in zip(SPLIT_NAMES, parsed)},
               "features_unseen_in_train": int((counts == 0).sum()),
               "entries_with_train_unseen_feature": unseen,
               "blank_lines": sum(p[2] for p in parsed), "format": "libfm",
               "parse_seconds": round(parse_seconds, 3)}
    if field_offsets is None:
      summary["field_names"] = list(FRAPPE_FIELDS)
    return {"splits": rows, "summary": summary}

  ds, _ = cached_build(name, paths, params, cache_dir, build)
  return ds


# ---------------------------------------------------------------------------------------------------------
# Embedded sample and the spec dispatcher.


def embedded_criteo_sample_path() -> str:
  """Path of the shipped 9,999-row Criteo sample (see hq_jax/ctr/datasets/README.md)."""
  return str(importlib.resources.files("hq_jax.ctr") / "datasets" / "criteo_10k.csv.gz")


def embedded_criteo_sample(cache_dir: str | None = None, *, seed: int = 0) -> CTRDataset:
  """The default CTR dataset: the first 9,999 rows of the Criteo Kaggle training set, shipped gzipped."""
  return load_criteo(embedded_criteo_sample_path(), cache_dir=cache_dir, seed=seed, name="criteo-sample")


def frappe_paths(directory: str) -> tuple[str, str, str]:
  """The (train, validation, test) files of a Frappe folder: frappe.train*.libfm and the two originals."""
  if not os.path.isdir(directory):
    raise UserError(f"{directory}: not a folder (expected the Frappe libFM files)")
  train = sorted(glob.glob(os.path.join(directory, "frappe.train*.libfm")))
  if len(train) != 1:
    raise UserError(f"{directory}: expected exactly one frappe.train*.libfm file, found {len(train)}")
  return (train[0], os.path.join(directory, "frappe.validation.libfm"),
          os.path.join(directory, "frappe.test.libfm"))


CTR_SPEC_HELP = ("'criteo-sample', 'criteo:PATH', 'avazu:PATH', 'frappe:DIR' or "
                 "'synthetic:rows=N,cardinalities=C1/C2/...,zipf_a=A,seed=S,...'")


def load_ctr(spec: str, *, cache_dir: str | None = None, seed: int = 0) -> CTRDataset:
  """Loads a dataset named by a command-line spec (see `CTR_SPEC_HELP`).

  Args:
    spec: 'criteo-sample' (the embedded 9,999 rows), 'criteo:PATH', 'avazu:PATH', 'frappe:DIR' (files
      frappe.train*.libfm, frappe.validation.libfm, frappe.test.libfm) or 'synthetic:KEY=VAL,...' (see
      `hq_jax.ctr.synthetic.synthetic_from_spec`).
    cache_dir: cache folder for parsed files (None: `default_cache_dir()`); synthetic data is generated
      in memory when None.
    seed: seed of the random 80/10/10 split (Criteo, Avazu), and the synthetic seed unless the spec gives
      one; Frappe's splits are its files, so it ignores the seed.
  """
  kind, _, arg = spec.partition(":")
  if kind == "criteo-sample" and not arg:
    return embedded_criteo_sample(cache_dir, seed=seed)
  if kind == "criteo" and arg:
    return load_criteo(arg, cache_dir=cache_dir, seed=seed)
  if kind == "avazu" and arg:
    return load_avazu(arg, cache_dir=cache_dir, seed=seed)
  if kind == "frappe" and arg:
    return load_libfm(*frappe_paths(arg), cache_dir=cache_dir, name="frappe")
  if kind == "synthetic":
    from hq_jax.ctr import synthetic  # pylint: disable=g-import-not-at-top  (synthetic imports this module)
    return synthetic.synthetic_from_spec(arg, cache_dir=cache_dir, seed=seed)[0]
  raise UserError(f"unknown CTR dataset spec {spec!r}; expected {CTR_SPEC_HELP}")
