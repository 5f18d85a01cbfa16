"""Tests for hq_jax.ctr.data: formats, preprocessing against plain-Python references, errors, cache."""

import gzip
import json
import math
import os

import numpy as np
import pytest

from hq_jax.ctr import data
from hq_jax.errors import UserError

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data")


# ---------------------------------------------------------------------------------------------------------
# Pure functions.


def _discretise_reference(v: float) -> int:
  return int(math.floor(math.log(v) ** 2)) if v > 2 else int(v)


@pytest.mark.parametrize("name,value", [
    ("negative_two", -2.0), ("minus_one", -1.0), ("zero", 0.0), ("one", 1.0), ("one_and_half", 1.5),
    ("two", 2.0), ("just_above_two", 2.5), ("three", 3.0), ("ten", 10.0), ("e_squared_edge", 7.39),
    ("large", 1382.0), ("huge", 1e7), ("negative_fraction", -1.5),
])
def test_criteo_discretise_matches_float64_reference(name, value):
  del name
  assert data.criteo_discretise(np.array([value]))[0] == _discretise_reference(value)


def test_criteo_discretise_vectorised_over_range():
  v = np.concatenate([np.arange(-3, 200), np.geomspace(2.01, 1e8, 500)])
  np.testing.assert_array_equal(data.criteo_discretise(v), [_discretise_reference(x) for x in v])


@pytest.mark.parametrize("name,hour,expected", [
    ("tuesday_midnight", 14102100, (0, 1, 0)),  # 2014-10-21 was a Tuesday
    ("saturday_evening", 14102523, (23, 5, 1)),
    ("sunday_noon", 14102612, (12, 6, 1)),
    ("leap_day", 16022907, (7, 0, 0)),  # 2016-02-29 was a Monday
])
def test_avazu_hour_fields(name, hour, expected):
  del name
  got = data.avazu_hour_fields(np.array([hour]))
  assert tuple(int(g[0]) for g in got) == expected


def test_avazu_hour_fields_rejects_impossible_dates():
  with pytest.raises(ValueError):
    data.avazu_hour_fields(np.array([14023012]))  # 30 February
  with pytest.raises(ValueError):
    data.avazu_hour_fields(np.array([14102124]))  # hour 24


@pytest.mark.parametrize("n,expected", [(1000, (800, 100, 100)), (9999, (7999, 1000, 1000)), (7, (5, 1, 1))])
def test_split_rows_sizes_and_partition(n, expected):
  parts = data.split_rows(n, (0.8, 0.1, 0.1), seed=3)
  assert tuple(p.size for p in parts) == expected
  np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(n))
  for p in parts:
    assert np.all(np.diff(p) > 0)


def test_split_rows_deterministic_per_seed():
  a, b, c = (data.split_rows(500, (0.8, 0.1, 0.1), seed=s) for s in (1, 1, 2))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[1], c[1])


def test_split_rows_rejects_bad_fractions():
  with pytest.raises(UserError, match="sum"):
    data.split_rows(10, (0.8, 0.1, 0.2), seed=0)


def test_iterate_batches_covers_every_row_once():
  ids = np.arange(23 * 3, dtype=np.int32).reshape(23, 3)
  labels = (np.arange(23) % 2).astype(np.float32)
  batches = list(data.iterate_batches(ids, labels, 5, rng=np.random.default_rng(0)))
  assert [b[0].shape[0] for b in batches] == [5, 5, 5, 5, 3]
  got = np.concatenate([b[0] for b in batches])
  np.testing.assert_array_equal(np.sort(got[:, 0]), ids[:, 0])
  for bi, bl in batches:
    assert bi.dtype == np.int32 and bl.dtype == np.float32
    np.testing.assert_array_equal(bl, labels[bi[:, 0] // 3])  # labels stay aligned with their rows
  again = list(data.iterate_batches(ids, labels, 5, rng=np.random.default_rng(0)))
  np.testing.assert_array_equal(got, np.concatenate([b[0] for b in again]))
  assert not np.array_equal(got, ids)  # shuffled


def test_iterate_batches_in_order_and_drop_last():
  ids = np.arange(10, dtype=np.int32).reshape(10, 1)
  labels = np.zeros(10, np.float32)
  batches = list(data.iterate_batches(ids, labels, 4, rng=None, drop_last=True))
  assert len(batches) == 2
  np.testing.assert_array_equal(batches[1][0][:, 0], [4, 5, 6, 7])


# ---------------------------------------------------------------------------------------------------------
# Criteo.


def _criteo_rows(num_rows: int, seed: int = 0) -> list:
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


def _write(path, rows, delim=",", header=True):
  with open(path, "w") as f:
    if header:
      f.write(",".join(data.CRITEO_HEADER) + "\n")
    for r in rows:
      f.write(delim.join(r) + "\n")
  return str(path)


def _original_order(ds, n, seed=0, split=(0.8, 0.1, 0.1)):
  """Stored rows are train | valid | test; this maps them back to file order (the split is public)."""
  parts = data.split_rows(n, split, seed)
  order = np.concatenate(parts)
  ids = np.empty_like(np.asarray(ds.ids))
  ids[order] = ds.ids
  labels = np.empty_like(np.asarray(ds.labels))
  labels[order] = ds.labels
  return ids, labels, parts


def _check_against_reference(ds, rows, parts, ids, exempt, min_count=2):
  """Checks ids / offsets / counts against a plain-Python preprocessing of `rows` (file order)."""
  train = set(parts[0].tolist())
  num_fields = len(rows[0]) - 1
  assert ds.num_fields == num_fields
  for f in range(num_fields):
    raw = [r[f + 1] for r in rows]
    if f < 13 and exempt:  # Criteo integer field: discretise, '' stays its own value
      raw = ["" if v == "" else _discretise_reference(float(v)) for v in raw]
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


@pytest.mark.parametrize("layout", ["csv_header", "tsv", "csv_no_header"])
def test_criteo_matches_plain_python_reference(tmp_path, layout):
  rows = _criteo_rows(300)
  delim = "\t" if layout == "tsv" else ","
  path = _write(tmp_path / "c.txt", rows, delim=delim, header=layout == "csv_header")
  ds = data.load_criteo(path, cache_dir=str(tmp_path / "cache"))
  ids, labels, parts = _original_order(ds, len(rows))
  assert ds.ids.shape == (300, 39) and ds.ids.dtype == np.int32
  np.testing.assert_array_equal(labels, [float(r[0]) for r in rows])
  assert {k: v.size for k, v in ds.splits.items()} == {"train": 240, "valid": 30, "test": 30}
  _check_against_reference(ds, rows, parts, ids, exempt=True)
  assert ds.summary["rows"] == {"train": 240, "valid": 30, "test": 30}
  assert ds.counts.sum() == 240 * 39


def test_criteo_value_only_in_test_is_oov(tmp_path):
  rows = _criteo_rows(100, seed=1)
  parts = data.split_rows(100, (0.8, 0.1, 0.1), 0)
  t = int(parts[2][0])
  for i in range(100):  # C1 = 'common' everywhere but one test row, which has a value seen nowhere else
    rows[i][14] = "common"
  rows[t][14] = "testonly"
  for i in parts[1][:5]:  # I1 = 77 only in validation rows: integer fields are exempt but still OOV
    rows[int(i)][1] = "77"
  ds = data.load_criteo(_write(tmp_path / "c.csv", rows), cache_dir=str(tmp_path / "cache"))
  ids, _, _ = _original_order(ds, 100)
  c1 = 13
  assert ids[t, c1] == ds.field_offsets[c1]
  assert ds.field_offsets[c1 + 1] - ds.field_offsets[c1] == 2  # OOV + 'common'
  assert np.all(ids[np.arange(100) != t, c1] == ds.field_offsets[c1] + 1)
  assert np.all(ids[parts[1][:5], 0] == ds.field_offsets[0])


def test_criteo_layouts_and_chunking_give_identical_arrays(tmp_path):
  rows = _criteo_rows(200, seed=2)
  a = data.load_criteo(_write(tmp_path / "a.csv", rows), cache_dir=str(tmp_path / "c1"))
  tsv = tmp_path / "b.tsv"
  tsv.write_text("\n".join("\t".join(r) for r in rows))  # raw layout, no newline after the last row
  b = data.load_criteo(str(tsv), cache_dir=str(tmp_path / "c2"), chunk_bytes=333)
  gz = tmp_path / "c.csv.gz"
  with gzip.open(gz, "wt") as f:
    f.write(open(tmp_path / "a.csv").read())
  c = data.load_criteo(str(gz), cache_dir=str(tmp_path / "c3"), chunk_bytes=1000)
  for other in (b, c):
    np.testing.assert_array_equal(a.ids, other.ids)
    np.testing.assert_array_equal(a.labels, other.labels)
    np.testing.assert_array_equal(a.field_offsets, other.field_offsets)
    np.testing.assert_array_equal(a.counts, other.counts)


def test_criteo_quoted_csv_and_blank_lines(tmp_path):
  rows = _criteo_rows(60, seed=3)
  plain = data.load_criteo(_write(tmp_path / "plain.csv", rows), cache_dir=str(tmp_path / "c1"))
  path = tmp_path / "quoted.csv"
  with open(path, "w") as f:
    f.write(",".join(data.CRITEO_HEADER) + "\r\n\r\n")
    for i, r in enumerate(rows):
      f.write(",".join(f'"{v}"' if i % 7 == 0 else v for v in r) + "\r\n" + ("\n" if i % 11 == 0 else ""))
  quoted = data.load_criteo(str(path), cache_dir=str(tmp_path / "c2"), chunk_bytes=500)
  np.testing.assert_array_equal(plain.ids, quoted.ids)
  assert quoted.summary["blank_lines"] == 1 + len(range(0, 60, 11))


def _malformed(rows, line, kind):
  """Corrupts file line `line` (1-based, header is line 1) in one of several ways."""
  r = rows[line - 2]
  if kind == "too_few_columns":
    r.pop()
  elif kind == "too_many_columns":
    r.append("x")
  elif kind == "bad_label":
    r[0] = "yes"
  elif kind == "label_two":
    r[0] = "2"
  elif kind == "non_numeric_integer":
    r[3] = "12a"
  elif kind == "nan_integer":
    r[5] = "nan"
  return rows


@pytest.mark.parametrize("kind,message", [
    ("too_few_columns", "expected 40 columns, found 39"),
    ("too_many_columns", "expected 40 columns, found 41"),
    ("bad_label", "label must be 0 or 1"),
    ("label_two", "label must be 0 or 1"),
    ("non_numeric_integer", "integer field I3 must be a number"),
    ("nan_integer", "integer field I5 must be a number"),
])
@pytest.mark.parametrize("chunk_bytes", [300, 1 << 20])
def test_criteo_malformed_rows_name_file_and_line(tmp_path, kind, message, chunk_bytes):
  rows = _malformed(_criteo_rows(50, seed=4), 37, kind)
  path = _write(tmp_path / "bad.csv", rows)
  with pytest.raises(UserError) as e:
    data.load_criteo(path, cache_dir=str(tmp_path / "cache"), chunk_bytes=chunk_bytes)
  assert str(e.value).startswith(f"{path}:37: ")
  assert message in str(e.value)
  assert os.listdir(tmp_path / "cache") == []  # an interrupted build leaves no (half) cache behind


def test_criteo_line_numbers_count_blank_lines(tmp_path):
  rows = _criteo_rows(20, seed=5)
  rows[9][0] = "x"
  path = tmp_path / "blank.csv"
  with open(path, "w") as f:
    f.write(",".join(data.CRITEO_HEADER) + "\n\n\n")
    f.write("".join(",".join(r) + "\n" for r in rows))
  with pytest.raises(UserError, match=rf"^{path}:13: label"):
    data.load_criteo(str(path), cache_dir=str(tmp_path / "cache"))


def test_criteo_bad_header_and_missing_file(tmp_path):
  path = tmp_path / "h.csv"
  path.write_text("label,I1,I2\n0,1,2\n")
  with pytest.raises(UserError, match=rf"^{path}:1: expected the Criteo header"):
    data.load_criteo(str(path), cache_dir=str(tmp_path / "cache"))
  with pytest.raises(UserError, match="file not found"):
    data.load_criteo(str(tmp_path / "nope.csv"), cache_dir=str(tmp_path / "cache"))


def test_cache_round_trip_and_keys(tmp_path):
  rows = _criteo_rows(80, seed=6)
  path = _write(tmp_path / "c.csv", rows)
  cache = str(tmp_path / "cache")
  first = data.load_criteo(path, cache_dir=cache)
  second = data.load_criteo(path, cache_dir=cache)
  assert first.summary["from_cache"] is False and second.summary["from_cache"] is True
  assert isinstance(second.ids, np.memmap)
  assert second.summary["cache_path"] == first.summary["cache_path"]
  for name in ("ids", "labels", "field_offsets", "counts"):
    np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
  for k in data.SPLIT_NAMES:
    np.testing.assert_array_equal(first.splits[k], second.splits[k])
    np.testing.assert_array_equal(first.split(k)[0], np.asarray(first.ids)[first.splits[k]])
  other_seed = data.load_criteo(path, cache_dir=cache, seed=1)
  other_min = data.load_criteo(path, cache_dir=cache, min_count=3)
  assert not other_seed.summary["from_cache"] and not other_min.summary["from_cache"]
  os.utime(path, ns=(1, 1))  # a changed source file (mtime) is parsed again
  assert not data.load_criteo(path, cache_dir=cache).summary["from_cache"]
  assert not any(n.startswith(".tmp") for n in os.listdir(cache))
  json.dumps(second.summary)  # trainers write the summary into their results


def test_header_only_file_is_a_user_error(tmp_path):
  path = _write(tmp_path / "empty.csv", [])
  with pytest.raises(UserError, match=rf"^{path}: no data rows"):
    data.load_criteo(path, cache_dir=str(tmp_path / "cache"))


def test_default_cache_dir_honours_environment(monkeypatch, tmp_path):
  monkeypatch.setenv("HQ_JAX_CACHE", str(tmp_path / "env"))
  assert data.default_cache_dir() == str(tmp_path / "env")
  monkeypatch.delenv("HQ_JAX_CACHE")
  assert data.default_cache_dir().endswith(os.path.join(".cache", "hq_jax", "ctr"))


def test_embedded_criteo_sample(tmp_path):
  ds = data.embedded_criteo_sample(str(tmp_path))
  assert ds.ids.shape == (9999, 39)
  assert ds.num_fields == 39
  assert ds.summary["rows"] == {"train": 7999, "valid": 1000, "test": 1000}
  assert ds.ids.min() >= 0 and ds.ids.max() < ds.num_features
  assert set(np.unique(ds.labels)) == {0.0, 1.0}
  assert ds.counts.sum() == 7999 * 39
  loaded = data.load_ctr("criteo-sample", cache_dir=str(tmp_path))
  assert loaded.summary["from_cache"]
  shared = os.path.join(SHARED, "criteo-sample", "criteo_10k.csv")
  if os.path.isfile(shared):  # the shipped file is the shared sample, byte for byte
    with open(shared, "rb") as f, gzip.open(data.embedded_criteo_sample_path(), "rb") as g:
      assert f.read() == g.read()


# ---------------------------------------------------------------------------------------------------------
# Avazu.

AVAZU_HEADER = ("id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,"
                "app_category,device_id,device_ip,device_model,device_type,device_conn_type,C14,C15,C16,"
                "C17,C18,C19,C20,C21")


def _avazu_rows(n, seed=0):
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(n):
    hour = f"1410{int(rng.integers(21, 31)):02d}{int(rng.integers(0, 24)):02d}"
    cats = [f"{int(rng.zipf(1.4)) % 50:x}" if j % 3 else str(int(rng.integers(0, 5))) for j in range(21)]
    cats[8] = f"{int(rng.zipf(1.2)):08x}{'z' * int(rng.integers(0, 6))}"  # device_id: some over 8 bytes
    rows.append([str(10**19 + i), str(int(rng.random() < 0.2)), hour] + cats)
  return rows


def _write_avazu(path, rows):
  with open(path, "w") as f:
    f.write(AVAZU_HEADER + "\n" + "".join(",".join(r) + "\n" for r in rows))
  return str(path)


def test_avazu_matches_plain_python_reference(tmp_path):
  rows = _avazu_rows(300)
  ds = data.load_avazu(_write_avazu(tmp_path / "a.csv", rows), cache_dir=str(tmp_path / "cache"),
                       chunk_bytes=2000)
  assert ds.num_fields == 24
  ids, labels, parts = _original_order(ds, 300)
  np.testing.assert_array_equal(labels, [float(r[1]) for r in rows])
  ref_rows = []
  for r in rows:
    h, wd, we = (int(x[0]) for x in data.avazu_hour_fields(np.array([int(r[2])])))
    ref_rows.append([r[1], h, wd, we] + r[3:])
  # Hour-derived fields are exempt from the rare rule, like Criteo's integer fields (first 3 fields).
  train = set(parts[0].tolist())
  for f in range(3):
    lo = int(ds.field_offsets[f])
    seen_train = {ref_rows[i][f + 1] for i in train}
    assert ds.field_offsets[f + 1] - lo == len(seen_train) + 1
  _check_against_reference(_CategoricalFields(ds, 3), [[r[0]] + r[4:] for r in ref_rows], parts, ids[:, 3:],
                           exempt=False)


class _CategoricalFields:
  """The fields of a dataset from `first` on (Avazu's categorical ones), for the reference check."""

  def __init__(self, ds, first):
    self.field_offsets = ds.field_offsets[first:]
    self.counts = ds.counts
    self.num_fields = ds.num_fields - first


def test_avazu_errors_name_file_and_line(tmp_path):
  rows = _avazu_rows(30, seed=1)
  rows[20][2] = "14023012"  # 30 February
  path = _write_avazu(tmp_path / "bad.csv", rows)
  with pytest.raises(UserError, match=rf"^{path}:22: hour must be a valid"):
    data.load_avazu(path, cache_dir=str(tmp_path / "cache"))
  rows[20][2] = "1410211"
  path = _write_avazu(tmp_path / "bad2.csv", rows)
  with pytest.raises(UserError, match=rf"^{path}:22: hour must be YYMMDDHH"):
    data.load_avazu(path, cache_dir=str(tmp_path / "cache"))
  path = tmp_path / "test_file.csv"
  path.write_text("id,hour,C1\n1,14102100,5\n")
  with pytest.raises(UserError, match="missing click"):
    data.load_avazu(str(path), cache_dir=str(tmp_path / "cache"))


# ---------------------------------------------------------------------------------------------------------
# libFM.

OFFSETS = (0, 3, 5, 9)  # three fields: ids 0-2, 3-4, 5-8


def _write_libfm(path, lines):
  path.write_text("".join(l + "\n" for l in lines))
  return str(path)


def test_libfm_small_files(tmp_path):
  train = _write_libfm(tmp_path / "tr",
                       ["1 3:1 0:1 5:1", "-1 1:1 4:1 8:1", "1 0:1 3:1 5:1", "", "-1 6:1 4:1 2:1"])
  valid = _write_libfm(tmp_path / "va", ["1 7:1 0:1 3:1"])
  test = _write_libfm(tmp_path / "te", ["-1 2:1 3:1 5:1", "1 0:1 4:1 5:1"])
  ds = data.load_libfm(train, valid, test, cache_dir=str(tmp_path / "cache"), name="tiny",
                       field_offsets=OFFSETS)
  np.testing.assert_array_equal(ds.ids, [[0, 3, 5], [1, 4, 8], [0, 3, 5], [2, 4, 6], [0, 3, 7],
                                         [2, 3, 5], [0, 4, 5]])
  np.testing.assert_array_equal(ds.labels, [1, 0, 1, 0, 1, 0, 1])
  np.testing.assert_array_equal(ds.counts, [2, 1, 1, 2, 2, 2, 1, 0, 1])  # train file only: 7 unseen
  assert {k: v.tolist() for k, v in ds.splits.items()} == {
      "train": [0, 1, 2, 3], "valid": [4], "test": [5, 6]}
  assert ds.summary["blank_lines"] == 1
  np.testing.assert_array_equal(ds.split("test")[0], [[2, 3, 5], [0, 4, 5]])


@pytest.mark.parametrize("line,message", [
    ("1 0:1 3:1", "expected a label and 3 idx:value pairs"),
    ("1 0:1 3:1 5 1", "expected a label and 3 idx:value pairs"),
    ("1 0:1 1:1 5:1", "fields missing [1], repeated [0]"),
    ("1 0:1 3:1 9:1", "expected exactly one feature id per field"),
    ("1 0:1 3:1 -5:1", "expected exactly one feature id per field"),
    ("1 0:1 3:1 x:1", "not a number"),
    ("1 0:1 3:1 5:0.5", "only one-hot rows"),
    ("2 0:1 3:1 5:1", "label must be 1 or -1"),
])
def test_libfm_errors_name_file_and_line(tmp_path, line, message):
  good = "1 0:1 3:1 5:1"
  bad = _write_libfm(tmp_path / "bad", [good, good, "", line, good])
  ok = _write_libfm(tmp_path / "ok", [good])
  with pytest.raises(UserError) as e:
    data.load_libfm(ok, bad, ok, cache_dir=str(tmp_path / "cache"), field_offsets=OFFSETS)
  assert str(e.value).startswith(f"{bad}:4: ")
  assert message in str(e.value)


def test_frappe_from_shared_data(tmp_path):
  directory = os.path.join(SHARED, "frappe")
  if not os.path.isdir(directory):
    pytest.skip("../shared/data/frappe not present")
  ds = data.load_ctr(f"frappe:{directory}", cache_dir=str(tmp_path))
  assert ds.num_features == 5382 and ds.num_fields == 10
  assert {k: v.size for k, v in ds.splits.items()} == {"train": 202027, "valid": 57722, "test": 28860}
  np.testing.assert_array_equal(ds.field_offsets, data.FRAPPE_FIELD_OFFSETS)
  field = np.searchsorted(ds.field_offsets, np.asarray(ds.ids), side="right") - 1
  assert np.all(field == np.arange(10))
  assert ds.counts.sum() == 202027 * 10
  assert 0.3 < ds.labels.mean() < 0.4  # one positive to two negatives
  json.dumps(ds.summary)


def test_load_ctr_rejects_unknown_specs(tmp_path):
  for spec in ("criteo", "kdd12:/x", "frappe:", "", "criteo-sample:x"):
    with pytest.raises(UserError, match="unknown CTR dataset spec"):
      data.load_ctr(spec, cache_dir=str(tmp_path))
  with pytest.raises(UserError, match="not a folder"):
    data.load_ctr(f"frappe:{tmp_path / 'missing'}", cache_dir=str(tmp_path))
