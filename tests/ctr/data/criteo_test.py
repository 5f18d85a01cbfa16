"""Tests for hq_jax.ctr.data.criteo: the format, preprocessing against references, golden values, errors."""

import csv
import gzip
import os

import numpy as np
import pytest

from ctr.data import ctr_files
from hq_jax.ctr import data
from hq_jax.errors import UserError


@pytest.mark.parametrize("name,value", [
    ("negative_two", -2.0), ("minus_one", -1.0), ("zero", 0.0), ("one", 1.0), ("one_and_half", 1.5),
    ("two", 2.0), ("just_above_two", 2.5), ("three", 3.0), ("ten", 10.0), ("e_squared_edge", 7.39),
    ("large", 1382.0), ("huge", 1e7), ("negative_fraction", -1.5),
])
def test_criteo_discretise_matches_float64_reference(name, value):
  del name
  assert data.criteo_discretise(np.array([value]))[0] == ctr_files.discretise_reference(value)


def test_criteo_discretise_vectorised_over_range():
  v = np.concatenate([np.arange(-3, 200), np.geomspace(2.01, 1e8, 500)])
  np.testing.assert_array_equal(data.criteo_discretise(v), [ctr_files.discretise_reference(x) for x in v])


@pytest.mark.parametrize("layout", ["csv_header", "tsv", "csv_no_header"])
def test_criteo_matches_plain_python_reference(tmp_path, layout):
  rows = ctr_files.criteo_rows(300)
  delim = "\t" if layout == "tsv" else ","
  path = ctr_files.write_criteo(tmp_path / "c.txt", rows, delim=delim, header=layout == "csv_header")
  ds = data.load_criteo(path, cache_dir=str(tmp_path / "cache"))
  ids, labels, parts = ctr_files.original_order(ds, len(rows))
  assert ds.ids.shape == (300, 39) and ds.ids.dtype == np.int32
  np.testing.assert_array_equal(labels, [float(r[0]) for r in rows])
  assert {k: v.size for k, v in ds.splits.items()} == {"train": 240, "valid": 30, "test": 30}
  ctr_files.check_against_reference(ds, rows, parts, ids, exempt=True)
  assert ds.summary["rows"] == {"train": 240, "valid": 30, "test": 30}
  assert ds.counts.sum() == 240 * 39


def test_criteo_golden_digest_from_before_the_rewrite(tmp_path):
  """sha256 prefixes of the arrays that the pre-pyarrow loader produced for the same 300 rows."""
  ds = data.load_criteo(ctr_files.write_criteo(tmp_path / "c.csv", ctr_files.criteo_rows(300)),
                        cache_dir=str(tmp_path / "cache"))
  assert ctr_files.digest(ds) == {
      "ids": "81d4738234e5e35a", "labels": "eb9840c60579b559", "counts": "a432c87b5b6ee487",
      "field_offsets": "99ed47e7718f339c", "split_train": "7665d96fa931a404",
      "split_valid": "f524bfc16976d75d", "split_test": "b6de15b506e8fd11"}


# A hand-checked file of 20 rows. split_rows(20, seed 0): train = the rest, valid = rows 9, 14, test = 1, 15.
_I1 = ["0", "-3", "1", "", "-1", "-2", "3", "10", "2", "5", "0", "1", "", "-1", "100", "0", "20", "3", "0",
       "1"]
_C1 = ["ab", "new_long_token_0", "ba", "ab", "ba", "b", "", "", "zz_long_token_2", "ab", "aa_long_token_1",
       "zz_long_token_2", "aa_long_token_1", "b", "single", "ba", "ab", "single", "zz_long_token_2",
       "aa_long_token_1"]
_LABELS = ["1", "1", "0", "1", "0", "1", "0", "1", "0", "1", "0", "1", "0", "1", "0", "0", "1", "0", "1", "0"]


def test_criteo_golden_ids_by_hand(tmp_path):
  rows = [[_LABELS[i], _I1[i]] + ["1"] * 12 + [_C1[i]] + ["x"] * 25 for i in range(20)]
  ds = data.load_criteo(ctr_files.write_criteo(tmp_path / "g.csv", rows), cache_dir=str(tmp_path / "cache"))
  stored = [0, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 16, 17, 18, 19, 9, 14, 1, 15]
  assert {k: v.tolist() for k, v in ds.splits.items()} == {
      "train": list(range(16)), "valid": [16, 17], "test": [18, 19]}
  np.testing.assert_array_equal(ds.labels, [float(_LABELS[i]) for i in stored])
  # I1 keeps every training value: 0 1 2 5 8 (discretised), then missing, then -2 -1 (int64 bits as uint64).
  # Unseen in training: 100 -> 21 and -3, both OOV (local 0).
  i1 = {"0": 1, "1": 2, "3": 2, "2": 3, "5": 3, "10": 4, "20": 5, "": 6, "-2": 7, "-1": 8, "100": 0, "-3": 0}
  np.testing.assert_array_equal(ds.ids[:, 0], [i1[_I1[i]] for i in stored])
  # C1 keeps values seen twice in training, in key order: '' (0) < 'b' < 'ba' < 'ab' (little-endian bytes)
  # < tokens over 8 bytes, numbered by first occurrence in the file (row 1's token comes first).
  c1 = {"": 1, "b": 2, "ba": 3, "ab": 4, "zz_long_token_2": 5, "aa_long_token_1": 6, "single": 0,
        "new_long_token_0": 0}
  np.testing.assert_array_equal(ds.ids[:, 13] - 33, [c1[_C1[i]] for i in stored])
  np.testing.assert_array_equal(ds.field_offsets,
                                [0, 9] + list(range(11, 34, 2)) + [40] + list(range(42, 91, 2)))
  np.testing.assert_array_equal(ds.counts[:9], [0, 3, 5, 1, 1, 1, 2, 1, 2])
  np.testing.assert_array_equal(ds.counts[33:40], [1, 2, 2, 2, 3, 3, 3])
  assert ds.num_features == 90 and ds.counts.sum() == 16 * 39
  fields = {f["name"]: f for f in ds.summary["fields"]}
  assert fields["C1"] == {"name": "C1", "features": 7, "train_distinct_values": 7, "rare_values_to_oov": 1,
                          "rare_train_occurrences": 1, "all_split_distinct_values": 8}
  assert fields["I1"]["all_split_distinct_values"] == 10


def test_criteo_value_only_in_test_is_oov(tmp_path):
  rows = ctr_files.criteo_rows(100, seed=1)
  parts = data.split_rows(100, (0.8, 0.1, 0.1), 0)
  t = int(parts[2][0])
  for i in range(100):  # C1 = 'common' everywhere but one test row, which has a value seen nowhere else
    rows[i][14] = "common"
  rows[t][14] = "testonly"
  for i in parts[1][:5]:  # I1 = 77 only in validation rows: integer fields are exempt but still OOV
    rows[int(i)][1] = "77"
  ds = data.load_criteo(ctr_files.write_criteo(tmp_path / "c.csv", rows), cache_dir=str(tmp_path / "cache"))
  ids, _, _ = ctr_files.original_order(ds, 100)
  c1 = 13
  assert ids[t, c1] == ds.field_offsets[c1]
  assert ds.field_offsets[c1 + 1] - ds.field_offsets[c1] == 2  # OOV + 'common'
  assert np.all(ids[np.arange(100) != t, c1] == ds.field_offsets[c1] + 1)
  assert np.all(ids[parts[1][:5], 0] == ds.field_offsets[0])


def test_criteo_layouts_and_chunking_give_identical_arrays(tmp_path):
  rows = ctr_files.criteo_rows(200, seed=2)
  a = data.load_criteo(ctr_files.write_criteo(tmp_path / "a.csv", rows), cache_dir=str(tmp_path / "c1"))
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
  rows = ctr_files.criteo_rows(60, seed=3)
  plain = data.load_criteo(ctr_files.write_criteo(tmp_path / "plain.csv", rows),
                           cache_dir=str(tmp_path / "c1"))
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
  rows = _malformed(ctr_files.criteo_rows(50, seed=4), 37, kind)
  path = ctr_files.write_criteo(tmp_path / "bad.csv", rows)
  with pytest.raises(UserError) as e:
    data.load_criteo(path, cache_dir=str(tmp_path / "cache"), chunk_bytes=chunk_bytes)
  assert str(e.value).startswith(f"{path}:37: ")
  assert message in str(e.value)
  assert os.listdir(tmp_path / "cache") == []  # an interrupted build leaves no (half) cache behind


def test_criteo_error_quotes_the_token(tmp_path):
  rows = _malformed(ctr_files.criteo_rows(50, seed=4), 37, "non_numeric_integer")
  path = ctr_files.write_criteo(tmp_path / "bad.csv", rows)
  with pytest.raises(UserError, match=r"must be a number, got '12a'$"):
    data.load_criteo(path, cache_dir=str(tmp_path / "cache"))


def test_criteo_integers_python_accepts_but_pyarrow_does_not(tmp_path):
  """Python's float() (the old parser) reads ' 5' and '1_0'; the loader keeps that behaviour."""
  rows = ctr_files.criteo_rows(100, seed=7)
  plain = data.load_criteo(ctr_files.write_criteo(tmp_path / "a.csv", rows), cache_dir=str(tmp_path / "c"))
  for r in rows:
    if r[1] == "10":
      r[1] = "1_0"
    elif r[1] == "5":
      r[1] = " 5"
  odd = data.load_criteo(ctr_files.write_criteo(tmp_path / "b.csv", rows), cache_dir=str(tmp_path / "c"))
  np.testing.assert_array_equal(plain.ids, odd.ids)


def test_criteo_line_numbers_count_blank_lines(tmp_path):
  rows = ctr_files.criteo_rows(20, seed=5)
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


def test_header_only_file_is_a_user_error(tmp_path):
  path = ctr_files.write_criteo(tmp_path / "empty.csv", [])
  with pytest.raises(UserError, match=rf"^{path}: no data rows"):
    data.load_criteo(path, cache_dir=str(tmp_path / "cache"))


def test_criteo_one_class_split_names_file_and_split(tmp_path):
  rows = ctr_files.criteo_rows(100, seed=1)
  parts = data.split_rows(100, (0.8, 0.1, 0.1), 0)
  for i in parts[2]:
    rows[int(i)][0] = "0"
  path = ctr_files.write_criteo(tmp_path / "c.csv", rows)
  with pytest.raises(UserError) as e:
    data.load_criteo(path, cache_dir=str(tmp_path / "cache"))
  assert str(e.value).startswith(f"{path}: the test split (rows drawn by seed 0, fractions 0.8/0.1/0.1) has "
                                 "one class only: 0 positives and 10 negatives")


# ---- issue 21: no row lost silently (quoting per layout, RFC 4180 at every chunk size), byte-order marks

def _stray_quote_rows(n=120):
  """Criteo rows where C5 of row 50 starts with '"' and C5 of row 54 ends with one (criteo-tsv-stray-quote)."""
  rows = ctr_files.criteo_rows(n, seed=8)
  rows[50][18] = '"' + rows[50][18]
  rows[54][18] = rows[54][18] + '"'
  return rows


@pytest.mark.parametrize("chunk_bytes", [64, 1000, 1 << 20])
def test_criteo_raw_tsv_has_no_quoting(tmp_path, chunk_bytes):
  """In the headerless TSV a '"' is an ordinary character: every line is a row, the quotes are in the tokens."""
  rows = _stray_quote_rows()
  path = ctr_files.write_criteo(tmp_path / "s.tsv", rows, delim="\t", header=False)
  ds = data.load_criteo(path, cache_dir=str(tmp_path / "cache"), chunk_bytes=chunk_bytes)
  assert sum(ds.summary["rows"].values()) == 120
  assert ds.summary["blank_lines"] == 0 and ds.summary["quoted_newlines"] == 0
  ids, labels, parts = ctr_files.original_order(ds, len(rows))
  np.testing.assert_array_equal(labels, [float(r[0]) for r in rows])
  ctr_files.check_against_reference(ds, rows, parts, ids, exempt=True)


def test_criteo_csv_stray_quotes_follow_rfc_4180_and_are_counted(tmp_path):
  """In a CSV the same quotes make one legal record of lines 50-54 (as Python's csv reads it); the summary
  says that 4 newlines were inside a quoted value, and nothing is counted as blank."""
  rows = _stray_quote_rows()
  path = ctr_files.write_criteo(tmp_path / "s.csv", rows, delim=",", header=False)
  records = list(csv.reader(open(path, newline="")))
  assert len(records) == 116
  for chunk_bytes in (100, 1 << 20):
    ds = data.load_criteo(path, cache_dir=str(tmp_path / f"c{chunk_bytes}"), chunk_bytes=chunk_bytes)
    assert sum(ds.summary["rows"].values()) == 116
    assert ds.summary["blank_lines"] == 0 and ds.summary["quoted_newlines"] == 4
    ids, labels, parts = ctr_files.original_order(ds, len(records))
    ctr_files.check_against_reference(ds, records, parts, ids, exempt=True)


def _quoted_newline_file(tmp_path, n=90):
  """A header CSV where every third record's C3 is a quoted value holding a newline, a comma or '""', with
  blank lines between some records (csv-quoted-newline-chunk); returns (path, records as Python's csv reads
  them, blank lines)."""
  rows = ctr_files.criteo_rows(n, seed=9)
  for i, r in enumerate(rows):
    if i % 3 == 0:
      r[16] = ["nl%d\n%s", "c%d,%s", 'q%d""%s', "two%d\n\n%s"][i % 4] % (i % 5, r[16])
  path = tmp_path / "q.csv"
  with open(path, "w", newline="") as f:
    f.write(",".join(data.CRITEO_HEADER) + "\n")
    for i, r in enumerate(rows):
      f.write(",".join(f'"{v}"' if any(c in v for c in ',\n"') else v for v in r) + "\n")
      f.write("\n" if i % 17 == 0 else "")
  records = [r for r in csv.reader(open(path, newline=""))][1:]
  return str(path), [r for r in records if r], sum(1 for r in records if not r)


@pytest.mark.parametrize("chunk_bytes", [1, 7, 50, 333, 2048, 1 << 20])
def test_criteo_quoted_newlines_equal_python_csv_at_every_chunk_size(tmp_path, chunk_bytes):
  path, records, blank = _quoted_newline_file(tmp_path)
  ds = data.load_criteo(path, cache_dir=str(tmp_path / "cache"), chunk_bytes=chunk_bytes)
  assert sum(ds.summary["rows"].values()) == len(records) == 90
  assert ds.summary["blank_lines"] == blank == 6
  assert ds.summary["quoted_newlines"] == sum(r[16].count("\n") for r in records) == 24
  ids, labels, parts = ctr_files.original_order(ds, len(records))
  np.testing.assert_array_equal(labels, [float(r[0]) for r in records])
  ctr_files.check_against_reference(ds, records, parts, ids, exempt=True)


@pytest.mark.parametrize("chunk_bytes", [40, 1 << 20])
def test_criteo_error_after_multi_line_records_names_the_bad_record(tmp_path, chunk_bytes):
  path, records, _ = _quoted_newline_file(tmp_path, n=30)
  text = open(path).read().split("\n")
  bad = next(i for i in range(20, len(text)) if text[i] and "\"" not in text[i] and text[i - 1])
  text[bad] = text[bad].rsplit(",", 1)[0]  # one column short
  open(path, "w").write("\n".join(text))
  with pytest.raises(UserError, match=rf"^{path}:{bad + 1}: expected 40 columns, found 39$"):
    data.load_criteo(path, cache_dir=str(tmp_path / "cache"), chunk_bytes=chunk_bytes)


def test_criteo_unclosed_quote_names_its_line(tmp_path):
  rows = ctr_files.criteo_rows(40, seed=10)
  rows[20][16] = '"open'
  path = ctr_files.write_criteo(tmp_path / "u.csv", rows)
  with pytest.raises(UserError, match=rf"^{path}:22: a quoted value opens here and is not closed"):
    data.load_criteo(path, cache_dir=str(tmp_path / "cache"), chunk_bytes=300)


@pytest.mark.parametrize("layout", ["csv_header", "tsv", "csv_no_header", "csv_header_gz"])
def test_criteo_utf8_byte_order_mark_is_dropped(tmp_path, layout):
  rows = ctr_files.criteo_rows(100, seed=11)
  delim = "\t" if layout == "tsv" else ","
  plain = ctr_files.write_criteo(tmp_path / "p.txt", rows, delim=delim, header=layout.startswith("csv_header"))
  text = b"\xef\xbb\xbf" + open(plain, "rb").read()
  bom = tmp_path / ("b.txt.gz" if layout.endswith("gz") else "b.txt")
  bom.write_bytes(gzip.compress(text) if layout.endswith("gz") else text)
  a = data.load_criteo(plain, cache_dir=str(tmp_path / "c1"))
  b = data.load_criteo(str(bom), cache_dir=str(tmp_path / "c2"), chunk_bytes=2)
  assert a.summary["format"] == b.summary["format"]
  for name in ("ids", "labels", "field_offsets", "counts"):
    np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
