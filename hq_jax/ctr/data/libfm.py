"""libFM files of one-hot rows (`label idx:1 idx:1 ...`): the three files are the train / valid / test splits.

Every row holds a label (1 = positive; -1 or 0 = negative) and exactly one feature id per field; field f
owns the global ids `[field_offsets[f], field_offsets[f + 1])`, and ids are kept as they are in the file
(no OOV remapping: a feature never seen in training keeps its id and has count 0). Counts come from the
training file only.

The field layout is either given (Frappe's 10 fields, `FRAPPE_FIELD_OFFSETS`, from ../shared/data/README.md;
or any `field_offsets`), or inferred from the training file (ours, for files such as iPinYou's):
  * the field count F is the number of `idx:val` pairs of the first row; every row must have F pairs;
  * with each row's ids sorted, the k-th smallest id belongs to field k, so field k starts at the smallest
    k-th id of any training row (field 0 at 0) and the last field ends after the largest id of any of the
    three files. The k-th ids of all training rows must not overlap the (k+1)-th ones; otherwise the
    layout is ambiguous and must be given explicitly. An id seen only in valid / test belongs to the field
    whose range contains it.

Ids are table rows, so they must be dense: an id above 2^31 - 1 (int32) stops the load, and so does an id
space (largest id + 1, or the given layout's size) larger than both 4,194,304 and 16 times the number of
distinct ids in the three files (`hq_jax.data.interactions.check_dense_ids`; e.g. hashed ids near 2e9 or
2^32 among 1,000 distinct ones). Both are checked before anything of the id space's size is allocated, and
the message names the line of the offending id, the id and the limit.

Remapping (`remap_ids=True`, spec item 'remap_ids'; ours): the distinct ids of the three files, sorted, get
the ids 0..D-1 (a monotone renumbering, so every field keeps its ids together and the layout is inferred as
above, over D ids); then any id up to 2^63 - 1 is accepted, the table has one row per distinct id, and the
cache holds `raw_ids.npy` ((D,) int64: the file id of each row). Not with a given layout.

Bad input raises `UserError` naming `path:line`: a row without a label and F pairs, a non-number, a value
other than 1, a label other than 1 / -1 / 0, an id out of range (the message gives the id and the valid
range: of all ids, or of the field whose id it should be), a field missing or repeated, an id too large
(above). Blank lines are skipped and counted in `summary['blank_lines']`; a leading UTF-8 byte-order mark
is dropped.
"""

import dataclasses
import glob
import os
import time
from collections.abc import Sequence

import numpy as np

from hq_jax.ctr.data import cache, dataset, reader
from hq_jax.data import interactions
from hq_jax.errors import UserError

_MAX_ID = interactions.MAX_ID  # ids are stored as int32

# Frappe's 10 one-hot fields (user, item, daytime, weekday, isweekend, homework, cost, weather, country,
# city) and their id ranges, from ../shared/data/README.md.
FRAPPE_FIELDS = ("user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather",
                 "country", "city")
FRAPPE_FIELD_OFFSETS = (0, 957, 5039, 5046, 5053, 5055, 5058, 5060, 5069, 5149, 5382)


@dataclasses.dataclass(frozen=True)
class _LibfmFile:
  """One parsed libFM file: the ids of each row sorted increasingly."""

  path: str
  ids: np.ndarray  # (n, F) int64, each row sorted
  labels: np.ndarray  # (n,) float32 in {0, 1}
  line_no: np.ndarray  # (n,) int64 line number of each row
  lines: list  # (n,) the rows' bytes, for error messages
  blank: int

  def error(self, i: int, message: str):
    row = self.lines[i][:120].decode("utf-8", "replace")
    raise UserError(f"{self.path}:{self.line_no[i]}: {message}: {row!r}")


def _parse_libfm(path: str, num_fields: int | None, max_id: int = _MAX_ID) -> _LibfmFile:
  """Parses one file; `num_fields` None takes the field count from the first row; ids above `max_id` stop."""
  data = reader.read_all(path)
  lines = data.split(b"\n")
  if lines and lines[-1] == b"":
    lines.pop()
  line_no = np.arange(1, len(lines) + 1, dtype=np.int64)
  stripped = [l.strip() for l in lines]
  blank = 0
  if b"" in stripped:
    keep = np.array([bool(l) for l in stripped])
    blank = int((~keep).sum())
    lines = [l for l, k in zip(lines, keep) if k]
    line_no = line_no[keep]
  n = len(lines)
  if n == 0:
    raise UserError(f"{path}: no data rows")
  if num_fields is None:
    num_fields = len(lines[0].split()) - 1
    if num_fields < 1:
      raise UserError(f"{path}:{line_no[0]}: expected a label and idx:value pairs: "
                      f"{lines[0][:120].decode('utf-8', 'replace')!r}")
  parsed = _LibfmFile(path, np.zeros((0, num_fields), np.int64), np.zeros(0, np.float32), line_no, lines,
                      blank)
  body = b"\n".join(lines)
  tokens = body.replace(b":", b" ").split()
  if len(tokens) != n * (2 * num_fields + 1) or body.count(b":") != n * num_fields:
    for i, l in enumerate(lines):
      parts = l.split()
      if len(parts) != num_fields + 1 or any(p.count(b":") != 1 for p in parts[1:]):
        parsed.error(i, f"expected a label and {num_fields} idx:value pairs")
    raise AssertionError("libFM row count mismatch not located")
  table = np.array(tokens, dtype=bytes).reshape(n, 2 * num_fields + 1)
  try:
    label = table[:, 0].astype(np.float64)
    idx = table[:, 1::2].astype(np.int64)
    val = table[:, 2::2].astype(np.float64)
  except (ValueError, OverflowError):  # OverflowError: an id beyond int64
    for i, l in enumerate(lines):
      parts = l.replace(b":", b" ").split()
      try:
        float(parts[0]), [float(p) for p in parts[2::2]]
        ids = [int(p) for p in parts[1::2]]
      except ValueError:
        parsed.error(i, "label, feature index or value is not a number")
      if max(ids) > max_id:
        _too_large(parsed, i, max(ids), max_id)
    raise
  big = np.flatnonzero(idx.max(axis=1) > max_id)
  if big.size:
    _too_large(parsed, int(big[0]), int(idx[big[0]].max()), max_id)
  bad = np.flatnonzero(~np.isin(label, (-1.0, 0.0, 1.0)))
  if bad.size:
    parsed.error(bad[0], "label must be 1 or -1 (or 0)")
  bad = np.flatnonzero(np.any(val != 1.0, axis=1))
  if bad.size:
    parsed.error(bad[0], "only one-hot rows (every value 1) are supported")
  idx.sort(axis=1)
  return dataclasses.replace(parsed, ids=idx, labels=(label > 0).astype(np.float32))


def _too_large(parsed: _LibfmFile, i: int, feature_id: int, max_id: int):
  if max_id == _MAX_ID:
    parsed.error(i, f"feature id {feature_id} too large (ids are int32 table rows: at most {_MAX_ID:,}); remap "
                    "hashed or sparse ids to 0..N-1 (spec item remap_ids)")
  parsed.error(i, f"feature id {feature_id} too large to remap (at most {max_id:,})")


def _check_dense(parsed: Sequence[_LibfmFile], size: int, layout: str):
  """Refuses an id space of `size` ids far larger than the distinct ids of the files (before any
  allocation of that size; see the module docstring)."""
  if size <= interactions.DENSE_ID_FLOOR:
    return
  ids = np.concatenate([p.ids.ravel() for p in parsed])
  if layout == "given":
    distinct = int(np.unique(ids).size)
    limit = interactions.dense_id_limit(distinct)
    if size <= limit:
      return
    raise UserError(f"the given libFM layout (field offsets ending at {size:,}) implies a table of {size:,} "
                    f"rows for {distinct:,} distinct feature ids in {parsed[0].path} and the other two files; "
                    f"the limit is {limit:,} rows (the larger of {interactions.DENSE_ID_FLOOR:,} and "
                    f"{interactions.DENSE_ID_FACTOR} x the distinct ids)")

  def where(largest: int) -> str:
    p = next(p for p in parsed if p.ids.size and p.ids.max() == largest)
    return f"{p.path}:{p.line_no[int(np.argwhere(p.ids == largest)[0, 0])]}"

  interactions.check_dense_ids(ids, "feature", where, "remap hashed or sparse ids to 0..N-1, each field's ids "
                               "together (spec item remap_ids)")


def _check_layout(parsed: _LibfmFile, offsets: np.ndarray, field_names: Sequence[str] | None):
  """Every row must hold one id per field of `offsets`; raises `UserError` on the first row that does not."""
  num_fields, num_ids = offsets.size - 1, int(offsets[-1])
  idx = parsed.ids
  field = np.searchsorted(offsets, idx, side="right") - 1  # -1 below the first field, F past the last
  wrong = field != np.arange(num_fields)
  if not wrong.any():
    return
  i, k = np.argwhere(wrong)[0]  # the first bad row, and its first id outside the expected field
  outside = np.flatnonzero((idx[i] < 0) | (idx[i] >= num_ids))
  if outside.size:
    parsed.error(i, f"feature id {idx[i, outside[0]]} out of range 0..{num_ids - 1}; expected exactly one "
                    "feature id per field")
  got = np.bincount(field[i], minlength=num_fields)
  name = f" ({field_names[k]})" if field_names else ""
  missing, repeated = np.flatnonzero(got == 0).tolist(), np.flatnonzero(got > 1).tolist()
  parsed.error(i, f"feature id {idx[i, k]} out of range for field {k}{name} (ids {offsets[k]}.."
                  f"{offsets[k + 1] - 1}); expected exactly one feature id per field "
                  f"(ids 0..{num_ids - 1}); fields missing {missing}, repeated {repeated}")


def infer_field_offsets(train: _LibfmFile, num_ids: int) -> np.ndarray:
  """(F + 1,) int64 field offsets from the training file's sorted rows (see the module docstring)."""
  lo, hi = train.ids.min(axis=0), train.ids.max(axis=0)
  overlap = np.flatnonzero(hi[:-1] >= lo[1:])
  if overlap.size:
    k = int(overlap[0])
    raise UserError(f"{train.path}: cannot infer the libFM field layout: the ids at sorted position {k} "
                    f"({lo[k]}..{hi[k]}) overlap those at position {k + 1} ({lo[k + 1]}..{hi[k + 1]}); give "
                    "the layout explicitly (spec libfm:TRAIN,VALID,TEST,offsets=0/O1/.../N)")
  return np.concatenate([[0], lo[1:], [num_ids]]).astype(np.int64)


def load_libfm(train_path: str, valid_path: str, test_path: str, *, cache_dir: str | None = None,
               name: str = "libfm", field_offsets: Sequence[int] | None = None,
               field_names: Sequence[str] | None = None, remap_ids: bool = False) -> dataset.CTRDataset:
  """Loads one-hot libFM files whose three files are the splits (see the module docstring).

  Args:
    train_path, valid_path, test_path: the split files; counts come from the training file only.
    cache_dir: cache folder (see `hq_jax.ctr.data.cache`).
    name: dataset name.
    field_offsets: (F + 1) id-range boundaries of the fields, starting at 0; None infers them from the
      training file.
    field_names: optional names of the F fields (for the summary and error messages).
    remap_ids: renumber the distinct ids 0..D-1 in increasing order (sparse or hashed ids; see the module
      docstring); needs an inferred layout.

  Returns:
    A `CTRDataset` with the files' ids (int32) and labels, rows train | valid | test.

  Raises:
    UserError: bad input naming `path:line`, a layout that cannot be inferred, a missing file, or a split
      without both labels (`dataset.check_both_classes`).
  """
  paths = [train_path, valid_path, test_path]
  offsets = None
  if field_offsets is not None:
    offsets = np.asarray(field_offsets, np.int64)
    if offsets.ndim != 1 or offsets.size < 2 or offsets[0] != 0 or np.any(np.diff(offsets) <= 0):
      raise UserError(f"field_offsets must start at 0 and increase strictly, got {offsets.tolist()}")
    if offsets[-1] > _MAX_ID + 1:
      raise UserError(f"field_offsets end at {int(offsets[-1]):,}: ids are int32, so at most {_MAX_ID + 1:,} "
                      "features")
    if field_names is not None and len(field_names) != offsets.size - 1:
      raise UserError(f"{len(field_names)} field names for {offsets.size - 1} fields")
  if remap_ids and offsets is not None:
    raise UserError("remap_ids renumbers the ids and infers the layout: it cannot be used with field_offsets")
  params = {"format": "libfm", "field_offsets": "infer" if offsets is None else offsets.tolist()}
  if remap_ids:
    params["remap_ids"] = True

  def build(tmp):
    t0 = time.perf_counter()
    max_id = np.iinfo(np.int64).max if remap_ids else _MAX_ID
    train = _parse_libfm(train_path, None if offsets is None else offsets.size - 1, max_id)
    parsed = [train] + [_parse_libfm(p, train.ids.shape[1], max_id) for p in paths[1:]]
    raw_ids = None
    if offsets is None:
      for p in parsed:
        if p.ids[:, 0].min() < 0:
          i = int(np.argmin(p.ids[:, 0]))
          p.error(i, f"feature id {p.ids[i, 0]} out of range: ids must be >= 0")
      if remap_ids:
        raw_ids = np.unique(np.concatenate([p.ids.ravel() for p in parsed]))
        parsed = [dataclasses.replace(p, ids=np.searchsorted(raw_ids, p.ids)) for p in parsed]
        train = parsed[0]
        np.save(os.path.join(tmp, "raw_ids.npy"), raw_ids)
      size = 1 + max(int(p.ids[:, -1].max()) for p in parsed)
      _check_dense(parsed, size, "inferred")
      layout = infer_field_offsets(train, size)
    else:
      layout = offsets
    for p in parsed:
      _check_layout(p, layout, field_names)
    if offsets is not None:
      _check_dense(parsed, int(layout[-1]), "given")
    parse_seconds = time.perf_counter() - t0
    ids = np.concatenate([p.ids for p in parsed])
    assert ids.min() >= 0 and ids.max() <= _MAX_ID  # checked above: the int32 cast is exact
    ids = ids.astype(np.int32)
    labels = np.concatenate([p.labels for p in parsed])
    n_train = train.ids.shape[0]
    counts = np.bincount(ids[:n_train].ravel(), minlength=int(layout[-1])).astype(np.int64)
    np.save(os.path.join(tmp, "ids.npy"), ids)
    np.save(os.path.join(tmp, "labels.npy"), labels)
    np.save(os.path.join(tmp, "field_offsets.npy"), layout)
    np.save(os.path.join(tmp, "counts.npy"), counts)
    rows = {k: int(p.ids.shape[0]) for k, p in zip(dataset.SPLIT_NAMES, parsed)}
    bounds = np.cumsum([0] + list(rows.values()))
    unseen = {k: int((counts[ids[bounds[i]:bounds[i + 1]]] == 0).sum())
              for i, k in enumerate(dataset.SPLIT_NAMES[1:], start=1)}
    summary = {"rows": rows, "num_fields": int(layout.size - 1), "num_features": int(layout[-1]),
               "ctr": {k: float(p.labels.mean()) for k, p in zip(dataset.SPLIT_NAMES, parsed)},
               "features_unseen_in_train": int((counts == 0).sum()),
               "entries_with_train_unseen_feature": unseen,
               "blank_lines": sum(p.blank for p in parsed), "format": "libfm",
               "layout": "inferred" if offsets is None else "given",
               "split_sources": {k: os.path.abspath(p) for k, p in zip(dataset.SPLIT_NAMES, paths)},
               "parse_seconds": round(parse_seconds, 3)}
    if field_names is not None:
      summary["field_names"] = list(field_names)
    if raw_ids is not None:
      summary["remapped_ids"] = {"distinct": int(raw_ids.size), "raw_min": int(raw_ids[0]),
                                 "raw_max": int(raw_ids[-1])}
    return {"splits": rows, "summary": summary}

  ds, _ = cache.cached_build(name, paths, params, cache_dir, build)
  return dataset.check_both_classes(ds)


def frappe_paths(directory: str) -> tuple[str, str, str]:
  """The (train, validation, test) files of a Frappe folder: frappe.train*.libfm and the two originals.

  Raises:
    UserError: `directory` is not a folder or holds no single frappe.train*.libfm.
  """
  if not os.path.isdir(directory):
    raise UserError(f"{directory}: not a folder (expected the Frappe libFM files)")
  train = sorted(glob.glob(os.path.join(directory, "frappe.train*.libfm")))
  if len(train) != 1:
    raise UserError(f"{directory}: expected exactly one frappe.train*.libfm file, found {len(train)}")
  return (train[0], os.path.join(directory, "frappe.validation.libfm"),
          os.path.join(directory, "frappe.test.libfm"))


def load_frappe(directory: str, *, cache_dir: str | None = None) -> dataset.CTRDataset:
  """Frappe (Baltrunas et al., arXiv:1505.03014) from its libFM folder, with its known 10-field layout.

  Returns:
    A `CTRDataset` of 10 fields and 5,382 features (202,027 / 57,722 / 28,860 rows for the shared files).

  Raises:
    UserError: as `load_libfm` and `frappe_paths`.
  """
  return load_libfm(*frappe_paths(directory), cache_dir=cache_dir, name="frappe",
                    field_offsets=FRAPPE_FIELD_OFFSETS, field_names=FRAPPE_FIELDS)
