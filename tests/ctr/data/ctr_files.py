"""Helpers of the hq_jax.ctr.data tests: small CTR files and plain-Python reference preprocessing.

Imported by the test modules of this folder as `from ctr.data import ctr_files` (`tests` is on the path).
"""

import hashlib
import math

import numpy as np

from hq_jax.ctr import data

AVAZU_HEADER = ("id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,"
                "app_category,device_id,device_ip,device_model,device_type,device_conn_type,C14,C15,C16,"
                "C17,C18,C19,C20,C21")


def discretise_reference(v: float) -> int:
  return int(math.floor(math.log(v) ** 2)) if v > 2 else int(v)


def criteo_rows(num_rows: int, seed: int = 0) -> list:
  """Random Criteo-like rows as lists of 40 strings, with repeats, rare values, negatives and blanks."""
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(num_rows):
    row = [str(int(rng.random() < 0.3))]
    for i in range(13):
      r = rng.random()
      row.append("" if r < 0.1 else str(int(rng.integers(-2, 3))) if r < 0.5 else
                 str(int(rng.zipf(1.5))) if i != 4 else f"{rng.integers(0, 10**8)}.0")  # up to 10 chars
    for j in range(26):
      r = rng.random()
      row.append("" if r < 0.05 else f"{int(rng.zipf(1.3 + 0.05 * j)) % 4096:08x}")
    rows.append(row)
  return rows


def write_criteo(path, rows, delim=",", header=True):
  with open(path, "w") as f:
    if header:
      f.write(",".join(data.CRITEO_HEADER) + "\n")
    for r in rows:
      f.write(delim.join(r) + "\n")
  return str(path)


def original_order(ds, n, seed=0, split=(0.8, 0.1, 0.1)):
  """Stored rows are train | valid | test; this maps them back to file order (the split is public)."""
  parts = data.split_rows(n, split, seed)
  order = np.concatenate(parts)
  ids = np.empty_like(np.asarray(ds.ids))
  ids[order] = ds.ids
  labels = np.empty_like(np.asarray(ds.labels))
  labels[order] = ds.labels
  return ids, labels, parts


def check_against_reference(ds, rows, parts, ids, exempt, min_count=2):
  """Checks ids / offsets / counts against a plain-Python preprocessing of `rows` (file order)."""
  train = set(parts[0].tolist())
  num_fields = len(rows[0]) - 1
  assert ds.num_fields == num_fields
  for f in range(num_fields):
    raw = [r[f + 1] for r in rows]
    if f < 13 and exempt:  # Criteo integer field: discretise, '' stays its own value
      raw = ["" if v == "" else discretise_reference(float(v)) for v in raw]
    train_count = {}
    for i, v in enumerate(raw):
      if i in train:
        train_count[v] = train_count.get(v, 0) + 1
    need = 1 if (exempt and f < 13) else min_count
    kept = {v for v, c in train_count.items() if c >= need}
    lo, hi = int(ds.field_offsets[f]), int(ds.field_offsets[f + 1])
    assert hi - lo == len(kept) + 1, f"field {f}"
    seen = {}
    for i, v in enumerate(raw):
      got = int(ids[i, f])
      assert lo <= got < hi
      if v in kept:
        assert got != lo, f"field {f} value {v!r} should be kept"
        assert seen.setdefault(v, got) == got
      else:
        assert got == lo, f"field {f} value {v!r} (train count {train_count.get(v, 0)}) should be OOV"
    assert len(set(seen.values())) == len(seen)  # kept values get distinct ids
    oov_train = sum(c for v, c in train_count.items() if v not in kept)
    assert ds.counts[lo] == oov_train
    for v, got in seen.items():
      assert ds.counts[got] == train_count[v]


def avazu_rows(n, seed=0):
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(n):
    hour = f"1410{int(rng.integers(21, 31)):02d}{int(rng.integers(0, 24)):02d}"
    cats = [f"{int(rng.zipf(1.4)) % 50:x}" if j % 3 else str(int(rng.integers(0, 5))) for j in range(21)]
    cats[8] = f"{int(rng.zipf(1.2)):08x}{'z' * int(rng.integers(0, 6))}"  # device_id: some over 8 bytes
    rows.append([str(10**19 + i), str(int(rng.random() < 0.2)), hour] + cats)
  return rows


def write_avazu(path, rows):
  with open(path, "w") as f:
    f.write(AVAZU_HEADER + "\n" + "".join(",".join(r) + "\n" for r in rows))
  return str(path)


def write_libfm(path, lines):
  path.write_text("".join(l + "\n" for l in lines))
  return str(path)


def digest(ds) -> dict:
  """sha256 prefixes of a dataset's arrays: golden values recorded from the loader before its rewrite."""
  out = {}
  for name in ("ids", "labels", "counts", "field_offsets"):
    out[name] = hashlib.sha256(np.ascontiguousarray(getattr(ds, name)).tobytes()).hexdigest()[:16]
  for name in data.SPLIT_NAMES:
    out["split_" + name] = hashlib.sha256(np.asarray(ds.splits[name], np.int64).tobytes()).hexdigest()[:16]
  return out
