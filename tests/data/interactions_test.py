"""Tests for hq_jax.data.interactions: the LightGCN text loader and its CSR output."""

import os

import numpy as np
import pytest

from hq_jax.data import interactions
from hq_jax.errors import UserError

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data")


def write_split(tmp_path, train: str, test: str) -> str:
  (tmp_path / "train.txt").write_text(train)
  (tmp_path / "test.txt").write_text(test)
  return str(tmp_path)


def parse_reference(text: str) -> dict[int, set[int]]:
  """Dict-of-sets reading of a LightGCN file, written independently of the loader."""
  rows = {}
  for line in text.splitlines():
    ids = [int(t) for t in line.split()]
    if ids:
      rows.setdefault(ids[0], set()).update(ids[1:])
  return rows


def csr_as_dict(csr: interactions.CSR) -> dict[int, set[int]]:
  return {u: set(csr.row(u).tolist()) for u in range(csr.num_rows) if len(csr.row(u))}


def test_good_file(tmp_path):
  data = interactions.load_lightgcn_dir(write_split(tmp_path, "0 1 2\n1 0\n2 3 1\n", "0 3\n1 2\n2 0\n"))
  assert (data.name, data.num_users, data.num_items) == (tmp_path.name, 3, 4)
  np.testing.assert_array_equal(data.train.indptr, [0, 2, 3, 5])
  np.testing.assert_array_equal(data.train.indices, [1, 2, 0, 1, 3])
  np.testing.assert_array_equal(data.test.indptr, [0, 1, 2, 3])
  np.testing.assert_array_equal(data.test.indices, [3, 2, 0])
  assert data.train.indptr.dtype == np.int64 and data.train.indices.dtype == np.int32
  np.testing.assert_array_equal(data.train.rows(), [0, 0, 1, 2, 2])
  np.testing.assert_array_equal(data.test_users(), [0, 1, 2])
  assert data.summary["train_interactions"] == 5 and data.summary["test_interactions"] == 3
  assert data.summary["test_items_unseen_in_train"] == 0


BAD_FILES = [
    # name, train text, test text, file named in the error, message fragment
    ("malformed_token", "0 1 2\n1 x3 4\n", "0 1\n", "train.txt:2", "malformed token 'x3'"),
    ("float_token", "0 1\n", "0 1\n1 2.5\n", "test.txt:2", "malformed token '2.5'"),
    ("negative_id", "0 1\n1 -4\n", "0 1\n", "train.txt:2", "negative id -4"),
    ("negative_user", "0 1\n", "-1 1\n", "test.txt:1", "negative id -1"),
    ("too_large_for_int32", "0 1\n0 2147483648\n", "0 1\n", "train.txt:2", "too large"),
    ("too_large_for_int64", "0 99999999999999999999999\n", "0 1\n", "train.txt:1", "too large"),
    ("empty_train", "", "0 1\n", "train.txt", "empty file"),
    ("blank_test", "0 1\n", "\n  \n", "test.txt", "empty file"),
    ("users_only", "0\n1\n", "0 1\n", "train.txt", "no training interactions"),
]


@pytest.mark.parametrize("name,train,test,where,fragment", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_files_name_file_and_line(tmp_path, name, train, test, where, fragment):
  del name
  with pytest.raises(UserError) as e:
    interactions.load_lightgcn_dir(write_split(tmp_path, train, test))
  assert where in str(e.value) and fragment in str(e.value)
  assert str(tmp_path) in str(e.value)


def test_missing_dir_and_file(tmp_path):
  with pytest.raises(UserError, match="data directory not found"):
    interactions.load_lightgcn_dir(str(tmp_path / "nope"))
  (tmp_path / "train.txt").write_text("0 1\n")
  with pytest.raises(UserError, match="test.txt: file not found"):
    interactions.load_lightgcn_dir(str(tmp_path))


def test_ids_out_of_given_range(tmp_path):
  path = write_split(tmp_path, "0 1\n3 2\n", "0 4\n")
  with pytest.raises(UserError, match="user id 3 out of range"):
    interactions.load_lightgcn_dir(path, num_users=3)
  with pytest.raises(UserError, match="item id 4 out of range"):
    interactions.load_lightgcn_dir(path, num_items=4)
  data = interactions.load_lightgcn_dir(path, num_users=6, num_items=9)
  assert (data.num_users, data.num_items) == (6, 9)
  assert data.train.indptr.shape == (7,)


def test_duplicates_dropped_and_counted(tmp_path):
  # (0, 2) twice on one line and again on a second line for user 0; (1, 1) twice in test.
  data = interactions.load_lightgcn_dir(write_split(tmp_path, "0 2 2 1\n1 0\n0 2\n", "1 1 1\n0 0\n"))
  assert csr_as_dict(data.train) == {0: {1, 2}, 1: {0}}
  assert csr_as_dict(data.test) == {0: {0}, 1: {1}}
  assert data.summary["train_duplicates_dropped"] == 2
  assert data.summary["test_duplicates_dropped"] == 1
  assert data.summary["train_interactions"] == 3 and data.summary["test_interactions"] == 2


def test_user_with_no_items_and_unseen_test_items(tmp_path):
  # User 1 lists nothing in train; item 5 appears only in test; user 3 appears only in test.
  data = interactions.load_lightgcn_dir(write_split(tmp_path, "0 0 1\n1\n2 2\n", "0 5\n1 0\n3 1 5\n"))
  assert (data.num_users, data.num_items) == (4, 6)
  np.testing.assert_array_equal(data.train.row_lengths(), [2, 0, 1, 0])
  np.testing.assert_array_equal(data.test_users(), [0, 1, 3])
  assert data.summary["users_without_train_items"] == 2
  assert data.summary["test_users_without_train_items"] == 2
  assert data.summary["test_items_unseen_in_train"] == 2
  assert data.summary["items_without_train_interactions"] == 3  # items 3, 4, 5


def test_csr_matches_dict_of_sets_reference(tmp_path):
  rng = np.random.default_rng(0)
  texts = []
  for _ in range(2):
    lines = []
    for u in rng.permutation(40):  # users in any order, some lines empty of items, duplicates inside
      items = rng.integers(0, 70, size=rng.integers(0, 12))
      lines.append(" ".join(str(t) for t in [u, *items]) + ("  " if u % 3 else "") + "\n")
    texts.append("".join(lines))
  data = interactions.load_lightgcn_dir(write_split(tmp_path, *texts))
  for csr, text in ((data.train, texts[0]), (data.test, texts[1])):
    reference = {u: items for u, items in parse_reference(text).items() if items}
    assert csr_as_dict(csr) == reference
    for u in range(csr.num_rows):
      row = csr.row(u)
      assert np.all(np.diff(row) > 0), f"row {u} not strictly sorted"
    assert csr.indptr[0] == 0 and csr.indptr[-1] == csr.nnz


def test_embedded_lastfm_summary():
  for arg in (None, "", "lastfm"):
    data = interactions.load_dataset(arg)
    assert data.name == "lastfm"
    assert (data.num_users, data.num_items) == (1892, 4489)
    assert (data.train.nnz, data.test.nnz) == (42135, 10533)
    assert data.summary["train_interactions"] == 42135 and data.summary["test_interactions"] == 10533


def test_gowalla_summary():
  path = os.path.join(SHARED_DATA, "gowalla")
  if not os.path.isfile(os.path.join(path, "train.txt")):
    pytest.skip(f"{path} not present")
  data = interactions.load_dataset(path)
  assert (data.num_users, data.num_items) == (29858, 40981)
  assert (data.train.nnz, data.test.nnz) == (810128, 217242)
  assert data.summary["train_duplicates_dropped"] == 0 and data.summary["test_duplicates_dropped"] == 0


def test_validation_split_holds_out_a_seeded_tenth_of_each_users_training_items():
  from hq_jax.data.interactions import load_dataset, validation_split  # noqa: PLC0415
  data = load_dataset("lastfm")
  valid = validation_split(data, 0.1, seed=0)
  n = data.train.row_lengths()
  held = valid.test.row_lengths()
  np.testing.assert_array_equal(held, np.where(n >= 2, np.maximum(1, np.round(0.1 * n)), 0))
  np.testing.assert_array_equal(valid.train.row_lengths() + held, n)
  for u in (0, 7, 1000):  # a partition of the user's training items
    np.testing.assert_array_equal(np.sort(np.concatenate([valid.train.row(u), valid.test.row(u)])), data.train.row(u))
  again = validation_split(data, 0.1, seed=0)
  np.testing.assert_array_equal(again.test.indices, valid.test.indices)
  assert not np.array_equal(validation_split(data, 0.1, seed=1).test.indices, valid.test.indices)
  assert valid.name == "lastfm-valid" and valid.summary["test_interactions"] == valid.test.nnz
  with pytest.raises(ValueError, match="fraction"):
    validation_split(data, 1.0)


# ---- issue 21: sparse ids refused before anything of their size is allocated; byte-order marks

def _lastfm_like(tmp_path, extra_train="", extra_test=""):
  """A 300-user folder (users 0..299, items 0..49) plus extra lines."""
  train = "".join(f"{u} {u % 50} {(u * 7) % 50}\n" for u in range(300)) + extra_train
  test = "".join(f"{u} {(u * 3) % 50}\n" for u in range(300)) + extra_test
  return write_split(tmp_path, train, test)


@pytest.mark.parametrize("name,train,test,where,message", [
    ("huge_user", "2000000000 5 17 99\n", "", "train.txt:301",
     "user id 2000000000 implies a table of 2,000,000,001 rows for 301 distinct user ids (limit 4,194,304: the "
     "larger of 4,194,304 and 16 x the distinct ids); ids are table rows and must be dense: remap them to "
     "0..N-1"),
    ("huge_item", "", "7 3\n8 1500000000\n", "test.txt:302", "item id 1500000000 implies a table of 1,500,000,001"),
    ("just_above_the_floor", "5 4194304\n", "", "train.txt:301", "item id 4194304 implies a table of 4,194,305"),
])
def test_sparse_ids_name_file_line_id_and_limit(tmp_path, monkeypatch, name, train, test, where, message):
  del name
  allocated = []
  monkeypatch.setattr(interactions, "to_csr", lambda *a: allocated.append(a) or 1 / 0)
  with pytest.raises(UserError) as e:
    interactions.load_lightgcn_dir(_lastfm_like(tmp_path, train, test))
  assert str(e.value).startswith(f"{tmp_path}/{where}: {message}")
  assert not allocated


def test_ids_up_to_the_floor_are_accepted(tmp_path):
  data = interactions.load_lightgcn_dir(_lastfm_like(tmp_path, "5 4194303\n"))
  assert data.num_items == 4_194_304 and data.num_users == 300


@pytest.mark.parametrize("which", ["train.txt", "test.txt"])
def test_utf8_byte_order_mark_is_dropped(tmp_path, which):
  plain = interactions.load_lightgcn_dir(write_split(tmp_path, "0 1 2\n1 0\n2 3 1\n", "0 3\n1 2\n2 0\n"))
  path = tmp_path / which
  path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
  bom = interactions.load_lightgcn_dir(str(tmp_path))
  for a, b in ((plain.train, bom.train), (plain.test, bom.test)):
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
