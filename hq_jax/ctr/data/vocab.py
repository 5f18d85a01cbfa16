"""Per-field vocabularies of tabular CTR files (Criteo, Avazu) and their encoding into global feature ids.

Preprocessing (the MPE spec, section Data: Li et al., arXiv:2409.20305; the order of kept values is ours):
  * Every raw value becomes an exact uint64 *key* (`pack_keys`): a token of at most 8 bytes is its bytes
    as a little-endian integer (the empty token is 0); a longer token gets a serial key with top byte 0xFF
    in the order of its first occurrence in the file (0xFF never occurs in UTF-8, so no packed token
    collides with it). Numeric fields bring their own keys (e.g. a discretised integer as int64 bits).
  * Rows are split by a seeded permutation (`split_rows`); each field's distinct keys get provisional codes
    (`pyarrow.compute.dictionary_encode`, one hash pass) and are counted on the training rows only.
  * A key seen fewer than `min_count` times in training (or never) maps to the field's out-of-vocabulary
    (OOV) id, local id 0; fields marked rare-exempt keep every key seen in training.
  * Kept keys get local ids 1.. in increasing key order, so the result does not depend on how the file
    was chunked; field f's local id l is global id `field_offsets[f] + l`.

Scratch space: pass 1 keeps each field's keys (8 bytes per row and field) in memory up to `SPILL_BYTES` in
all, and beyond that appends them to one file per field; pass 2 turns one field at a time into final ids
(in memory, or a scratch file beyond `SPILL_BYTES`) and frees its keys, so for a large file the peak disk
use is about that of the final (n, F) int32 matrix twice, and the peak memory a few arrays of n values.
"""

import dataclasses
import os
import time
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hq_jax.ctr.data.dataset import SPLIT_NAMES, split_rows
from hq_jax.errors import UserError

# Keys held in memory during parsing before they are spilled to scratch files (does not change the result).
SPILL_BYTES = 256 << 20

# Global feature ids are int32: the number of features of all fields together is at most this.
MAX_FEATURES = 2**31 - 1

# Top byte of the serial key of a token longer than 8 bytes.
_WIDE_TAG = np.uint64(0xFF << 56)

# _BYTE_MASKS[k] keeps the low k bytes of a little-endian uint64.
_BYTE_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(9)], np.uint64)


def pack_keys(tokens: pa.Array, wide: dict) -> np.ndarray:
  """(n,) uint64 exact keys of a binary array (see the module docstring).

  Args:
    tokens: a `pa.binary()` array without nulls, in file order.
    wide: this field's serial keys of long tokens so far ({token: key}); new long tokens are added in the
      order of their first occurrence.
  """
  n = len(tokens)
  _, offsets_buf, data_buf = tokens.buffers()
  offsets = np.frombuffer(offsets_buf, np.int32)[tokens.offset:tokens.offset + n + 1].astype(np.int64)
  data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
  end = int(offsets[-1]) if n else 0
  padded = np.zeros(end + 8, np.uint8)
  padded[:end] = data[:end]
  windows = np.ndarray(shape=(end + 1,), dtype="<u8", buffer=padded, strides=(1,))
  start, length = offsets[:-1], np.diff(offsets)
  keys = windows[start] & _BYTE_MASKS[np.minimum(length, 8)]
  long_rows = np.flatnonzero(length > 8)
  if long_rows.size:
    encoded = pc.dictionary_encode(tokens.take(pa.array(long_rows)))
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    _, first = np.unique(codes, return_index=True)
    entries = encoded.dictionary.to_pylist()
    for code in np.argsort(first, kind="stable"):  # distinct long tokens in order of first occurrence
      wide.setdefault(entries[code], int(_WIDE_TAG) | len(wide))
    keys[long_rows] = np.array([wide[t] for t in entries], np.uint64)[codes]
  return keys


@dataclasses.dataclass(frozen=True)
class Fields:
  """The fields of a tabular dataset, in id order."""

  names: tuple  # field names
  rare_exempt: tuple  # per field: True keeps every value seen in training (Criteo integers, Avazu hours)


def encode_field(keys: np.ndarray, train_rows: np.ndarray, need: int) -> tuple[np.ndarray, np.ndarray, dict]:
  """One field's local ids from its raw keys.

  One hash pass (`pyarrow.compute.dictionary_encode`) gives every distinct key a provisional code; codes
  are counted on the training rows, and the kept ones are renumbered 1.. in key order.

  Args:
    keys: (n,) uint64 raw keys of every row, in file order.
    train_rows: int64 indices of the training rows.
    need: training occurrences a key needs to be kept (>= 1).

  Returns:
    local ids (n,) int32 (0 = OOV, kept keys 1.. in key order), training counts per local id (int64; the
    OOV id counts the rare training occurrences), and the field's statistics for the summary.
  """
  encoded = pc.dictionary_encode(pa.array(keys, pa.uint64()))
  codes = encoded.indices.to_numpy(zero_copy_only=False)
  distinct = encoded.dictionary.to_numpy(zero_copy_only=False)
  train_counts = np.bincount(codes[train_rows], minlength=distinct.size).astype(np.int64)
  seen, keep = train_counts > 0, train_counts >= need
  kept = np.flatnonzero(keep)
  kept = kept[np.argsort(distinct[kept], kind="stable")]
  local_of_code = np.zeros(distinct.size, np.int32)
  local_of_code[kept] = np.arange(1, kept.size + 1, dtype=np.int32)
  rare = seen & ~keep
  counts = np.concatenate([[train_counts[rare].sum()], train_counts[kept]]).astype(np.int64)
  stats = {"features": int(kept.size) + 1, "train_distinct_values": int(seen.sum()),
           "rare_values_to_oov": int(rare.sum()), "rare_train_occurrences": int(counts[0]),
           "all_split_distinct_values": int(distinct.size)}
  return local_of_code[codes], counts, stats


class _KeyColumns:
  """Each field's (n,) uint64 keys in file order: held in memory up to `SPILL_BYTES` in all, beyond that
  appended to one scratch file per field (so a 45.8M-row file never needs its keys in memory at once)."""

  def __init__(self, folder: str, num_fields: int):
    self.paths = [os.path.join(folder, f"keys{f}.bin") for f in range(num_fields)]
    self.parts = [[] for _ in range(num_fields)]
    self.held, self.budget, self.spilled = 0, SPILL_BYTES, False

  def append(self, keys: list):
    for part, k in zip(self.parts, keys):
      part.append(np.asarray(k, np.uint64))
      self.held += k.nbytes
    if self.held > self.budget:
      self.close()

  def close(self):
    """Writes what is held to the scratch files, once anything had to be spilled."""
    if self.held > self.budget or self.spilled:
      for path, part in zip(self.paths, self.parts):
        with open(path, "ab") as f:
          for k in part:
            f.write(k.tobytes())
        part.clear()
      self.held, self.spilled = 0, True

  def pop(self, f: int) -> np.ndarray:
    """Field f's keys; frees them here."""
    if self.spilled:
      keys = np.fromfile(self.paths[f], np.uint64)
      os.remove(self.paths[f])
      return keys
    keys = np.concatenate(self.parts[f]) if self.parts[f] else np.zeros(0, np.uint64)
    self.parts[f] = []
    return keys


def build_tabular(tmp: str, source: str, fields: Fields, chunks: Iterator[tuple[np.ndarray, list]], *,
                  min_count: int, seed: int, split: Sequence[float]) -> dict:
  """Streams (labels, per-field keys) chunks into the cache layout of `cached_build`.

  Args:
    tmp: the folder to write `ids.npy`, `labels.npy`, `field_offsets.npy`, `counts.npy` into.
    source: the source file, for error messages.
    fields: names and rare-exemption of the F fields.
    chunks: yields (labels int8 (m,), [F arrays of (m,) uint64 keys]) for consecutive rows of the file.
    min_count, seed, split: see the module docstring.

  Returns:
    `{'splits': {split: rows}, 'summary': {...}}` as `cached_build` expects.

  Raises:
    UserError: the chunks hold no rows.
  """
  num_fields = len(fields.names)
  t0, c0 = time.perf_counter(), time.process_time()
  columns = _KeyColumns(tmp, num_fields)
  labels_parts = []
  for labels, keys in chunks:
    columns.append(keys)
    labels_parts.append(labels)
  columns.close()
  parse_seconds, parse_cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
  n = sum(int(l.shape[0]) for l in labels_parts)
  if n == 0:
    raise UserError(f"{source}: no data rows found")
  labels = np.concatenate(labels_parts).astype(np.float32)
  parts = split_rows(n, split, seed)
  which = np.empty(n, np.int8)
  for i, rows in enumerate(parts):
    which[rows] = i

  # Field by field: keys -> final global ids, into a (F, n) matrix in file order (a scratch file if large).
  final_path = os.path.join(tmp, "final.bin")
  final = (np.empty((num_fields, n), np.int32) if 4 * num_fields * n <= SPILL_BYTES else
           np.memmap(final_path, dtype=np.int32, mode="w+", shape=(num_fields, n)))
  sizes, counts, field_stats = [], [], []
  oov = np.zeros(len(SPLIT_NAMES), np.int64)
  offset = 0
  for f in range(num_fields):
    keys = columns.pop(f)
    need = 1 if fields.rare_exempt[f] else max(min_count, 1)
    local, train_counts, stats = encode_field(keys, parts[0], need)
    del keys
    if offset + train_counts.size > MAX_FEATURES:
      raise UserError(f"{source}: field {fields.names[f]} would end at feature id "
                      f"{offset + train_counts.size - 1}, beyond the int32 id space (at most "
                      f"{MAX_FEATURES:,} features); raise min_count")
    final[f] = local + np.int32(offset)
    oov += np.bincount(which[local == 0], minlength=len(SPLIT_NAMES))
    sizes.append(train_counts.size)
    counts.append(train_counts)
    field_stats.append({"name": fields.names[f], **stats})
    offset += train_counts.size
  field_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

  # Rows in split order: train | valid | test.
  ids = np.lib.format.open_memmap(os.path.join(tmp, "ids.npy"), mode="w+", dtype=np.int32,
                                  shape=(n, num_fields))
  row_chunk = max(1, (16 << 20) // (4 * num_fields))  # ~16 MB of ids per step
  pos = 0
  for rows in parts:
    for lo in range(0, rows.size, row_chunk):
      r = rows[lo:lo + row_chunk]
      ids[pos:pos + r.size] = final[:, r].T
      pos += r.size
  ids.flush()
  del ids, final
  if os.path.exists(final_path):
    os.remove(final_path)
  out_labels = labels[np.concatenate(parts)]
  np.save(os.path.join(tmp, "labels.npy"), out_labels)
  np.save(os.path.join(tmp, "field_offsets.npy"), field_offsets)
  np.save(os.path.join(tmp, "counts.npy"), np.concatenate(counts))
  bounds = np.cumsum([0] + [p.size for p in parts])
  summary = {
      "rows": {k: int(p.size) for k, p in zip(SPLIT_NAMES, parts)},
      "num_fields": num_fields, "num_features": int(field_offsets[-1]),
      "ctr": {k: float(out_labels[bounds[i]:bounds[i + 1]].mean()) if parts[i].size else None
              for i, k in enumerate(SPLIT_NAMES)},
      "oov_rate": {k: int(oov[i]) / max(1, parts[i].size * num_fields) for i, k in enumerate(SPLIT_NAMES)},
      "min_count": min_count, "seed": seed, "split": list(split),
      "parse_seconds": round(parse_seconds, 3), "parse_cpu_seconds": round(parse_cpu_seconds, 3),
      "parse_rows_per_second": round(n / max(parse_seconds, 1e-9)),
      "fields": field_stats,
  }
  return {"splits": {k: int(p.size) for k, p in zip(SPLIT_NAMES, parts)}, "summary": summary}
