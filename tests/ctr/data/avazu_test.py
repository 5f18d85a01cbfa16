"""Tests for hq_jax.ctr.data.avazu: hour fields, preprocessing against a reference, golden values, errors."""

import csv

import numpy as np
import pytest

from ctr.data import ctr_files
from hq_jax.ctr import data
from hq_jax.errors import UserError


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


class _CategoricalFields:
  """The fields of a dataset from `first` on (Avazu's categorical ones), for the reference check."""

  def __init__(self, ds, first):
    self.field_offsets = ds.field_offsets[first:]
    self.counts = ds.counts
    self.num_fields = ds.num_fields - first


def test_avazu_matches_plain_python_reference(tmp_path):
  rows = ctr_files.avazu_rows(300)
  ds = data.load_avazu(ctr_files.write_avazu(tmp_path / "a.csv", rows), cache_dir=str(tmp_path / "cache"),
                       chunk_bytes=2000)
  assert ds.num_fields == 24
  ids, labels, parts = ctr_files.original_order(ds, 300)
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
  ctr_files.check_against_reference(_CategoricalFields(ds, 3), [[r[0]] + r[4:] for r in ref_rows], parts,
                                    ids[:, 3:], exempt=False)


def test_avazu_golden_digest_from_before_the_rewrite(tmp_path):
  """sha256 prefixes of the arrays that the pre-pyarrow loader produced for the same 300 rows."""
  ds = data.load_avazu(ctr_files.write_avazu(tmp_path / "a.csv", ctr_files.avazu_rows(300)),
                       cache_dir=str(tmp_path / "cache"))
  assert ctr_files.digest(ds) == {
      "ids": "a651184a4d0fc6ea", "labels": "6cd170690105e599", "counts": "1e5b908ef1a956bb",
      "field_offsets": "e1f2edd00ce9deb8", "split_train": "7665d96fa931a404",
      "split_valid": "f524bfc16976d75d", "split_test": "b6de15b506e8fd11"}


def test_avazu_errors_name_file_and_line(tmp_path):
  rows = ctr_files.avazu_rows(30, seed=1)
  rows[20][2] = "14023012"  # 30 February
  path = ctr_files.write_avazu(tmp_path / "bad.csv", rows)
  with pytest.raises(UserError, match=rf"^{path}:22: hour must be a valid"):
    data.load_avazu(path, cache_dir=str(tmp_path / "cache"))
  rows[20][2] = "1410211"
  path = ctr_files.write_avazu(tmp_path / "bad2.csv", rows)
  with pytest.raises(UserError, match=rf"^{path}:22: hour must be YYMMDDHH"):
    data.load_avazu(path, cache_dir=str(tmp_path / "cache"))
  path = tmp_path / "test_file.csv"
  path.write_text("id,hour,C1\n1,14102100,5\n")
  with pytest.raises(UserError, match="missing click"):
    data.load_avazu(str(path), cache_dir=str(tmp_path / "cache"))


def test_avazu_bad_label_and_column_count(tmp_path):
  rows = ctr_files.avazu_rows(30, seed=2)
  rows[4][1] = "1.0"
  path = ctr_files.write_avazu(tmp_path / "bad.csv", rows)
  with pytest.raises(UserError, match=rf"^{path}:6: label must be 0 or 1, got '1.0'"):
    data.load_avazu(path, cache_dir=str(tmp_path / "cache"))
  rows[4][1] = "1"
  rows[9].append("extra")
  path = ctr_files.write_avazu(tmp_path / "bad2.csv", rows)
  with pytest.raises(UserError, match=rf"^{path}:11: expected 24 columns, found 25"):
    data.load_avazu(path, cache_dir=str(tmp_path / "cache"))


# ---- issue 21: byte-order marks, RFC 4180 quoted values at every chunk size

@pytest.mark.parametrize("chunk_bytes", [2, 1 << 20])
def test_avazu_utf8_byte_order_mark_is_dropped(tmp_path, chunk_bytes):
  rows = ctr_files.avazu_rows(200, seed=3)
  plain = ctr_files.write_avazu(tmp_path / "a.csv", rows)
  bom = tmp_path / "bom.csv"
  bom.write_bytes(b"\xef\xbb\xbf" + open(plain, "rb").read())
  a = data.load_avazu(plain, cache_dir=str(tmp_path / "c1"))
  b = data.load_avazu(str(bom), cache_dir=str(tmp_path / "c2"), chunk_bytes=chunk_bytes)
  assert [f["name"] for f in a.summary["fields"]] == [f["name"] for f in b.summary["fields"]]
  for name in ("ids", "labels", "field_offsets", "counts"):
    np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize("chunk_bytes", [1, 9, 500, 1 << 20])
def test_avazu_quoted_values_equal_python_csv_at_every_chunk_size(tmp_path, chunk_bytes):
  rows = ctr_files.avazu_rows(150, seed=4)
  for i, r in enumerate(rows):  # site_id: a newline, a comma or a quote inside a quoted value
    if i % 4 == 0:
      r[5] = ["s\n%d", "s,%d", 's"%d', "s\n\n%d"][i // 4 % 4] % (i % 3)
  path = tmp_path / "q.csv"
  with open(path, "w", newline="") as f:
    f.write(ctr_files.AVAZU_HEADER + "\n")
    csv.writer(f, lineterminator="\n").writerows(rows)
  records = list(csv.reader(open(path, newline="")))[1:]
  assert records == rows
  ds = data.load_avazu(str(path), cache_dir=str(tmp_path / "cache"), chunk_bytes=chunk_bytes)
  assert sum(ds.summary["rows"].values()) == 150 and ds.summary["blank_lines"] == 0
  assert ds.summary["quoted_newlines"] == sum(r[5].count("\n") for r in rows) > 0
  ids, labels, parts = ctr_files.original_order(ds, 150)
  np.testing.assert_array_equal(labels, [float(r[1]) for r in rows])
  ctr_files.check_against_reference(_CategoricalFields(ds, 3), [[r[1]] + r[3:] for r in rows], parts,
                                    ids[:, 3:], exempt=False)
