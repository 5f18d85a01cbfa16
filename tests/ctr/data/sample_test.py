"""Tests for hq_jax.ctr.data.sample: the embedded Criteo sample, with golden values."""

import gzip

import numpy as np

from conftest import SHARED_DATA
from ctr.data import ctr_files
from hq_jax.ctr import data


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
  shared = SHARED_DATA / "criteo-sample" / "criteo_10k.csv"
  if shared.is_file():  # the shipped file is the shared sample, byte for byte
    with open(shared, "rb") as f, gzip.open(data.embedded_criteo_sample_path(), "rb") as g:
      assert f.read() == g.read()


def test_embedded_criteo_sample_golden_from_before_the_rewrite(tmp_path):
  """11,423 features and sha256 prefixes of the arrays that the pre-pyarrow loader produced."""
  ds = data.embedded_criteo_sample(str(tmp_path))
  assert ds.num_features == 11423
  assert ctr_files.digest(ds) == {
      "ids": "a7ee2d41708a1f13", "labels": "36a7d5121d3954e7", "counts": "9fb131c39d8b29d1",
      "field_offsets": "95962214fee464a1", "split_train": "340a27fbb5fa2d35",
      "split_valid": "522f4ba39c20ef67", "split_test": "67d8f617807a6734"}
  assert ds.summary["format"] == "criteo-csv-with-header" and ds.summary["blank_lines"] == 0
