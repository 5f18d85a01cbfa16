"""Tests for hq_jax.ctr.data.libfm: given and inferred field layouts, Frappe, errors naming path:line."""

import json
import os

import numpy as np
import pytest

from ctr.data import ctr_files
from hq_jax.ctr import data
from hq_jax.errors import UserError

OFFSETS = (0, 3, 5, 9)  # three fields: ids 0-2, 3-4, 5-8


def test_libfm_small_files(tmp_path):
  train = ctr_files.write_libfm(tmp_path / "tr",
                                ["1 3:1 0:1 5:1", "-1 1:1 4:1 8:1", "1 0:1 3:1 5:1", "", "-1 6:1 4:1 2:1"])
  valid = ctr_files.write_libfm(tmp_path / "va", ["1 7:1 0:1 3:1", "-1 1:1 3:1 6:1"])
  test = ctr_files.write_libfm(tmp_path / "te", ["-1 2:1 3:1 5:1", "1 0:1 4:1 5:1"])
  ds = data.load_libfm(train, valid, test, cache_dir=str(tmp_path / "cache"), name="tiny",
                       field_offsets=OFFSETS)
  np.testing.assert_array_equal(ds.ids, [[0, 3, 5], [1, 4, 8], [0, 3, 5], [2, 4, 6], [0, 3, 7], [1, 3, 6],
                                         [2, 3, 5], [0, 4, 5]])
  np.testing.assert_array_equal(ds.labels, [1, 0, 1, 0, 1, 0, 0, 1])
  np.testing.assert_array_equal(ds.counts, [2, 1, 1, 2, 2, 2, 1, 0, 1])  # train file only: 7 unseen
  assert {k: v.tolist() for k, v in ds.splits.items()} == {
      "train": [0, 1, 2, 3], "valid": [4, 5], "test": [6, 7]}
  assert ds.summary["blank_lines"] == 1
  assert ds.summary["layout"] == "given"
  np.testing.assert_array_equal(ds.split("test")[0], [[2, 3, 5], [0, 4, 5]])


@pytest.mark.parametrize("line,message", [
    ("1 0:1 3:1", "expected a label and 3 idx:value pairs"),
    ("1 0:1 3:1 5 1", "expected a label and 3 idx:value pairs"),
    ("1 0:1 1:1 5:1", "fields missing [1], repeated [0]"),
    ("1 0:1 1:1 5:1", "feature id 1 out of range for field 1 (ids 3..4)"),
    ("1 0:1 3:1 9:1", "expected exactly one feature id per field"),
    ("1 0:1 3:1 9:1", "feature id 9 out of range 0..8"),
    ("1 0:1 3:1 -5:1", "expected exactly one feature id per field"),
    ("1 0:1 3:1 -5:1", "feature id -5 out of range 0..8"),
    ("1 0:1 3:1 x:1", "not a number"),
    ("1 0:1 3:1 5:0.5", "only one-hot rows"),
    ("2 0:1 3:1 5:1", "label must be 1 or -1"),
])
def test_libfm_errors_name_file_and_line(tmp_path, line, message):
  good = "1 0:1 3:1 5:1"
  bad = ctr_files.write_libfm(tmp_path / "bad", [good, good, "", line, good])
  ok = ctr_files.write_libfm(tmp_path / "ok", [good])
  with pytest.raises(UserError) as e:
    data.load_libfm(ok, bad, ok, cache_dir=str(tmp_path / "cache"), field_offsets=OFFSETS)
  assert str(e.value).startswith(f"{bad}:4: ")
  assert message in str(e.value)


def _generic_files(tmp_path, valid_labels=("1", "-1"), test_labels=("0", "1")):
  """Four fields (ids 0-4, 5-6, 7-11, 12-13), labels 1 / -1 and 1 / 0, rows in any id order."""
  train = ctr_files.write_libfm(tmp_path / "train.libfm", [
      "1 0:1 5:1 7:1 12:1", "-1 13:1 9:1 6:1 3:1", "1 2:1 5:1 10:1 12:1", "-1 0:1 6:1 8:1 12:1",
      "-1 4:1 5:1 7:1 13:1"])
  valid = ctr_files.write_libfm(tmp_path / "valid.libfm", [f"{valid_labels[0]} 1:1 5:1 7:1 12:1",
                                                          f"{valid_labels[1]} 0:1 6:1 11:1 13:1"])
  test = ctr_files.write_libfm(tmp_path / "test.libfm", [f"{test_labels[0]} 3:1 6:1 9:1 13:1",
                                                        f"{test_labels[1]} 2:1 5:1 8:1 12:1"])
  return train, valid, test


def test_generic_libfm_spec_infers_a_four_field_layout(tmp_path):
  train, valid, test = _generic_files(tmp_path)
  ds = data.load_ctr(f"libfm:{train},{valid},{test}", cache_dir=str(tmp_path / "cache"))
  assert ds.num_fields == 4 and ds.summary["layout"] == "inferred"
  # Field k starts at the smallest k-th sorted id of a training row; the last ends after the largest id.
  np.testing.assert_array_equal(ds.field_offsets, [0, 5, 7, 12, 14])
  np.testing.assert_array_equal(ds.ids[:5], [[0, 5, 7, 12], [3, 6, 9, 13], [2, 5, 10, 12], [0, 6, 8, 12],
                                             [4, 5, 7, 13]])
  np.testing.assert_array_equal(ds.ids[5:], [[1, 5, 7, 12], [0, 6, 11, 13], [3, 6, 9, 13], [2, 5, 8, 12]])
  np.testing.assert_array_equal(ds.labels, [1, 0, 1, 0, 0, 1, 0, 0, 1])
  np.testing.assert_array_equal(ds.counts, [2, 0, 1, 1, 1, 3, 2, 2, 1, 1, 1, 0, 3, 2])
  assert {k: v.tolist() for k, v in ds.splits.items()} == {
      "train": [0, 1, 2, 3, 4], "valid": [5, 6], "test": [7, 8]}
  assert ds.summary["split_sources"]["valid"] == os.path.abspath(valid)
  again = data.load_ctr(f"libfm:{train},{valid},{test}", cache_dir=str(tmp_path / "cache"))
  assert again.summary["from_cache"]
  np.testing.assert_array_equal(again.ids, ds.ids)


def test_generic_libfm_spec_with_explicit_offsets(tmp_path):
  train, valid, test = _generic_files(tmp_path)
  ds = data.load_ctr(f"libfm:{train},{valid},{test},offsets=0/5/7/12/16", cache_dir=str(tmp_path / "cache"))
  np.testing.assert_array_equal(ds.field_offsets, [0, 5, 7, 12, 16])
  assert ds.summary["layout"] == "given" and ds.counts.size == 16
  with pytest.raises(UserError) as e:
    data.load_ctr(f"libfm:{train},{valid},{test},offsets=0/5/7/12/13", cache_dir=str(tmp_path / "cache"))
  assert str(e.value).startswith(f"{train}:2: feature id 13 out of range 0..12")


def test_generic_libfm_id_beyond_the_training_ids_extends_the_last_field(tmp_path):
  train, valid, _ = _generic_files(tmp_path)
  test = ctr_files.write_libfm(tmp_path / "t2.libfm", ["1 3:1 6:1 9:1 20:1", "-1 0:1 5:1 7:1 12:1"])
  ds = data.load_libfm(train, valid, test, cache_dir=str(tmp_path / "cache"))
  np.testing.assert_array_equal(ds.field_offsets, [0, 5, 7, 12, 21])
  assert ds.counts[20] == 0


@pytest.mark.parametrize("name,files,message", [
    ("row_with_five_fields", {"test.libfm": ["1 3:1 6:1 9:1 13:1 2:1", "0 2:1 5:1 8:1 12:1"]},
     "test.libfm:1: expected a label and 4 idx:value pairs"),
    ("negative_id", {"valid.libfm": ["1 1:1 5:1 7:1 12:1", "-1 -1:1 6:1 11:1 13:1"]},
     "valid.libfm:2: feature id -1 out of range: ids must be >= 0"),
    ("field_repeated_in_test", {"test.libfm": ["1 3:1 4:1 9:1 13:1", "0 2:1 5:1 8:1 12:1"]},
     "test.libfm:1: feature id 4 out of range for field 1 (ids 5..6)"),
    ("ambiguous_layout", {"train.libfm": ["1 0:1 5:1 7:1 12:1", "-1 6:1 9:1 10:1 13:1"]},
     "train.libfm: cannot infer the libFM field layout: the ids at sorted position 0 (0..6) overlap those at "
     "position 1 (5..9)"),
])
def test_generic_libfm_errors(tmp_path, name, files, message):
  del name
  paths = _generic_files(tmp_path)
  for file, lines in files.items():
    ctr_files.write_libfm(tmp_path / file, lines)
  with pytest.raises(UserError) as e:
    data.load_ctr("libfm:" + ",".join(paths), cache_dir=str(tmp_path / "cache"))
  assert str(e.value).startswith(str(tmp_path / message.split(":")[0]) + ":" + message.split(":", 1)[1])


@pytest.mark.parametrize("split,labels,message", [
    ("valid", {"valid_labels": ("-1", "-1")}, "valid.libfm: the valid split has one class only: 0 positives "
                                              "and 2 negatives"),
    ("test", {"test_labels": ("1", "1")}, "test.libfm: the test split has one class only: 2 positives and 0 "
                                          "negatives"),
])
def test_libfm_one_class_split_stops_at_load_time_also_from_cache(tmp_path, split, labels, message):
  del split
  paths = _generic_files(tmp_path, **labels)
  for _ in range(2):  # the second load is a cache hit: the check runs again
    with pytest.raises(UserError) as e:
      data.load_ctr("libfm:" + ",".join(paths), cache_dir=str(tmp_path / "cache"))
    assert str(e.value) == (f"{tmp_path}/{message}; every split needs both labels 0 and 1 (AUC is undefined "
                            "otherwise)")
  assert len([d for d in os.listdir(tmp_path / "cache") if d.startswith("libfm-")]) == 1


def test_frappe_one_class_validation_file(tmp_path):
  rows = ["1 0:1 957:1 5039:1 5046:1 5053:1 5055:1 5058:1 5060:1 5069:1 5149:1",
          "-1 956:1 5038:1 5045:1 5052:1 5054:1 5057:1 5059:1 5068:1 5148:1 5381:1"]
  directory = tmp_path / "frappe"
  directory.mkdir()
  ctr_files.write_libfm(directory / "frappe.train.libfm", rows)
  ctr_files.write_libfm(directory / "frappe.validation.libfm", [rows[1], rows[1]])
  ctr_files.write_libfm(directory / "frappe.test.libfm", rows)
  with pytest.raises(UserError,
                     match=rf"^{directory}/frappe.validation.libfm: the valid split has one class"):
    data.load_ctr(f"frappe:{directory}", cache_dir=str(tmp_path / "cache"))


def test_frappe_from_shared_data(tmp_path, shared_data):
  directory = os.path.join(shared_data, "frappe")
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
  # sha256 prefixes of the arrays that the loader produced before its rewrite.
  assert ctr_files.digest(ds) == {
      "ids": "197c38f530d154b3", "labels": "7ddbb5403cf2f3e1", "counts": "22507d2d13c2971e",
      "field_offsets": "2d53e68cf07ac81c", "split_train": "0c4d697d540b8fdb",
      "split_valid": "a5b3a5ded583381c", "split_test": "b984b9f5bd52b5d6"}


# ---- issue 21: ids checked before anything is allocated; byte-order marks

def _hashed_files(tmp_path, base: int, n=(60, 20, 20)):
  """Three one-hot fields: ids 0..9, 10..19 and `base` + a hash % 1000 (libfm-hashed-ids)."""
  rng = np.random.default_rng(0)
  paths = []
  for name, rows in zip(("train", "valid", "test"), n):
    lines = [f"{1 if i % 2 else -1} {rng.integers(0, 10)}:1 {10 + rng.integers(0, 10)}:1 "
             f"{base + int(rng.integers(0, 50)) * 2654435761 % 1000}:1" for i in range(rows)]
    paths.append(ctr_files.write_libfm(tmp_path / f"{name}.libfm", lines))
  return paths


def _line_of(path, feature_id):
  return next(i for i, l in enumerate(open(path), 1) if f" {feature_id}:" in l)


@pytest.mark.parametrize("base", [2**31 - 900, 4_294_967_000, 2**64 + 5])
def test_libfm_ids_beyond_int32_name_the_line(tmp_path, base, monkeypatch):
  """Ids that do not fit int32 (even beyond int64) stop the load before the int32 cast, naming the line."""
  paths = _hashed_files(tmp_path, base)
  allocated = []
  monkeypatch.setattr(np, "bincount", lambda *a, **k: allocated.append(k) or 1 / 0)
  with pytest.raises(UserError) as e:
    data.load_libfm(*paths, cache_dir=str(tmp_path / "cache"))
  line, first = next((i, l.split()[-1].split(":")[0]) for i, l in enumerate(open(paths[0]), 1)
                     if int(l.split()[-1].split(":")[0]) >= 2**31)
  assert str(e.value).startswith(f"{paths[0]}:{line}: feature id {first} too large (ids are int32 table rows: "
                                 "at most 2,147,483,647)")
  assert not allocated


def test_libfm_sparse_hashed_ids_name_the_line_id_and_limit(tmp_path, monkeypatch):
  """Hashed ids near 2e9 among 70 distinct ids would make a 2e9-row table: refused before any allocation."""
  paths = _hashed_files(tmp_path, 2_000_000_000)
  allocated = []
  monkeypatch.setattr(np, "bincount", lambda *a, **k: allocated.append(k) or 1 / 0)
  largest = max(int(l.split()[-1].split(":")[0]) for p in paths for l in open(p))
  where = next(f"{p}:{_line_of(p, largest)}" for p in paths if _line_of_or_none(p, largest))
  with pytest.raises(UserError) as e:
    data.load_libfm(*paths, cache_dir=str(tmp_path / "cache"))
  assert str(e.value).startswith(f"{where}: feature id {largest} implies a table of {largest + 1:,} rows for ")
  assert "(limit 4,194,304: the larger of 4,194,304 and 16 x the distinct ids)" in str(e.value)
  assert not allocated


def _line_of_or_none(path, feature_id):
  return any(f" {feature_id}:" in l for l in open(path))


def test_libfm_dense_rule_limits(tmp_path):
  """An id space up to 2^22 is accepted however sparse; beyond it, only up to 16 x the distinct ids."""
  from hq_jax.data import interactions  # noqa: PLC0415
  assert interactions.dense_id_limit(70) == 4_194_304
  assert interactions.dense_id_limit(1_000_000) == 16_000_000
  assert interactions.dense_id_limit(10**9) == 2**31
  paths = _hashed_files(tmp_path, 4_000_000)  # ids up to ~4.0M for 70 distinct: below the floor
  ds = data.load_libfm(*paths, cache_dir=str(tmp_path / "cache"))
  assert 4_000_000 < ds.num_features <= 4_001_000


def test_libfm_given_layout_too_large_or_too_sparse(tmp_path):
  train, valid, test = _generic_files(tmp_path)
  with pytest.raises(UserError, match="field_offsets end at 3,000,000,000: ids are int32"):
    data.load_libfm(train, valid, test, cache_dir=str(tmp_path / "cache"),
                    field_offsets=(0, 5, 7, 12, 3_000_000_000))
  with pytest.raises(UserError, match=r"the given libFM layout \(field offsets ending at 100,000,000\) implies "
                                      r"a table of 100,000,000 rows for 14 distinct feature ids"):
    data.load_libfm(train, valid, test, cache_dir=str(tmp_path / "cache"), field_offsets=(0, 5, 7, 12, 10**8))


def test_libfm_utf8_byte_order_mark_is_dropped(tmp_path):
  train, valid, test = _generic_files(tmp_path)
  plain = data.load_libfm(train, valid, test, cache_dir=str(tmp_path / "c1"))
  for p in (train, valid, test):
    text = open(p, "rb").read()
    open(p, "wb").write(b"\xef\xbb\xbf" + text)
  bom = data.load_libfm(train, valid, test, cache_dir=str(tmp_path / "c2"))
  for name in ("ids", "labels", "field_offsets", "counts"):
    np.testing.assert_array_equal(getattr(plain, name), getattr(bom, name))


@pytest.mark.parametrize("base", [2_000_000_000, 4_294_967_000, 2**62])
def test_libfm_remap_ids_equals_the_files_renumbered_by_hand(tmp_path, base):
  """remap_ids: the distinct ids of the three files, sorted, become 0..D-1; the result equals loading files
  whose ids were renumbered that way beforehand, and raw_ids.npy maps each row back."""
  paths = _hashed_files(tmp_path, base)
  raw = sorted({int(t.split(":")[0]) for p in paths for l in open(p) for t in l.split()[1:]})
  rank = {r: i for i, r in enumerate(raw)}
  dense = []
  for p in paths:
    lines = [" ".join([l.split()[0]] + [f"{rank[int(t.split(':')[0])]}:1" for t in l.split()[1:]])
             for l in open(p)]
    dense.append(ctr_files.write_libfm(tmp_path / ("dense_" + os.path.basename(p)), lines))
  want = data.load_libfm(*dense, cache_dir=str(tmp_path / "c1"))
  got = data.load_ctr("libfm:" + ",".join(paths) + ",remap_ids", cache_dir=str(tmp_path / "c2"))
  for name in ("ids", "labels", "field_offsets", "counts"):
    np.testing.assert_array_equal(getattr(want, name), getattr(got, name))
  assert got.num_features == len(raw) and got.summary["remapped_ids"] == {
      "distinct": len(raw), "raw_min": raw[0], "raw_max": raw[-1]}
  np.testing.assert_array_equal(np.load(os.path.join(got.summary["cache_path"], "raw_ids.npy")), raw)


def test_libfm_remap_ids_errors(tmp_path):
  paths = _hashed_files(tmp_path, 2**64)
  with pytest.raises(UserError, match=rf"^{paths[0]}:1: feature id 184467440737095516\d\d too large to remap "
                                      r"\(at most 9,223,372,036,854,775,807\)"):
    data.load_libfm(*paths, cache_dir=str(tmp_path / "cache"), remap_ids=True)
  with pytest.raises(UserError, match="cannot be used with field_offsets"):
    data.load_libfm(*paths, cache_dir=str(tmp_path / "cache"), remap_ids=True, field_offsets=(0, 10, 20, 30))
