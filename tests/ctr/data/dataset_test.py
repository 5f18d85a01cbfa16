"""Tests for hq_jax.ctr.data.dataset: splits, batches and the load-time label check."""

import numpy as np
import pytest

from hq_jax.ctr import data
from hq_jax.errors import UserError


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


def test_split_rows_golden():
  parts = data.split_rows(10, (0.8, 0.1, 0.1), seed=0)
  assert [p.tolist() for p in parts] == [[0, 2, 3, 4, 5, 6, 7, 9], [8], [1]]  # recorded before the rewrite


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


def _dataset(labels, sizes=(4, 2, 2), summary=None):
  n = len(labels)
  bounds = np.cumsum([0, *sizes])
  return data.CTRDataset(
      name="tiny", ids=np.zeros((n, 1), np.int32), labels=np.asarray(labels, np.float32),
      field_offsets=np.array([0, 1]), counts=np.array([n]),
      splits={k: np.arange(bounds[i], bounds[i + 1]) for i, k in enumerate(data.SPLIT_NAMES)},
      summary=summary or {})


def test_split_of_a_dataset_and_unknown_split():
  ds = _dataset([0, 1, 0, 1, 0, 1, 1, 0])
  np.testing.assert_array_equal(ds.split("valid")[1], [0, 1])
  with pytest.raises(UserError, match="unknown split 'dev'"):
    ds.split("dev")


def test_label_counts():
  assert data.label_counts(_dataset([0, 1, 0, 0, 0, 1, 1, 1])) == {
      "train": (3, 1), "valid": (1, 1), "test": (0, 2)}


FILES = {"split_sources": {"train": "/d/tr.libfm", "valid": "/d/va.libfm", "test": "/d/te.libfm"}}


@pytest.mark.parametrize("name,labels,summary,message", [
    ("valid_one_class_file", [0, 1, 0, 1, 0, 0, 1, 0], FILES,
     "/d/va.libfm: the valid split has one class only: 0 positives and 2 negatives"),
    ("test_one_class_file", [0, 1, 0, 1, 0, 1, 1, 1], FILES,
     "/d/te.libfm: the test split has one class only: 2 positives and 0 negatives"),
    ("train_one_class_file", [1, 1, 1, 1, 0, 1, 1, 0], FILES, "/d/tr.libfm: the train split has one class"),
    ("random_split", [0, 1, 0, 1, 1, 1, 1, 0],
     {"split_sources": dict.fromkeys(data.SPLIT_NAMES, "/d/c.tsv"), "split_rule": "rows drawn by seed 0"},
     "/d/c.tsv: the valid split (rows drawn by seed 0) has one class only"),
    ("no_sources", [0, 1, 0, 1, 0, 1, 0, 0], None, "tiny: the test split has one class only"),
])
def test_check_both_classes_names_split_and_file(name, labels, summary, message):
  del name
  with pytest.raises(UserError) as e:
    data.check_both_classes(_dataset(labels, summary=summary))
  assert str(e.value).startswith(message)
  assert "\n" not in str(e.value)


def test_check_both_classes_empty_split_and_pass():
  with pytest.raises(UserError, match="tiny: the test split has no rows"):
    data.check_both_classes(_dataset([0, 1, 0, 1, 0, 1], sizes=(4, 2, 0)))
  ds = _dataset([0, 1, 0, 1, 0, 1, 1, 0])
  assert data.check_both_classes(ds) is ds
