"""Tests for hq_jax.ctr.data.cache: round trip, keys, interrupted builds, environment."""

import json
import os

import numpy as np
import pytest

from ctr.data import ctr_files
from hq_jax.ctr import data
from hq_jax.errors import UserError


def test_cache_round_trip_and_keys(tmp_path):
  rows = ctr_files.criteo_rows(80, seed=6)
  path = ctr_files.write_criteo(tmp_path / "c.csv", rows)
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
  # What the load-time label check needs survives the cache: labels and the split's source file.
  assert second.summary["split_sources"] == dict.fromkeys(data.SPLIT_NAMES, os.path.abspath(path))


def test_interrupted_build_leaves_no_cache(tmp_path):
  def build(tmp):
    np.save(os.path.join(tmp, "ids.npy"), np.zeros((2, 1), np.int32))
    raise UserError("boom")

  with pytest.raises(UserError, match="boom"):
    data.cached_build("x", [], {}, str(tmp_path), build)
  assert os.listdir(tmp_path) == []


def test_extra_arrays_come_back(tmp_path):
  def build(tmp):
    for name, value in {"ids": np.zeros((3, 1), np.int32), "labels": np.array([0, 1, 1], np.float32),
                        "field_offsets": np.array([0, 1]), "counts": np.array([1]),
                        "extra": np.arange(4)}.items():
      np.save(os.path.join(tmp, name + ".npy"), value)
    return {"splits": {"train": 1, "valid": 1, "test": 1}, "summary": {"a": 1}}

  ds, extra = data.cached_build("x", [], {"p": 1}, str(tmp_path), build)
  np.testing.assert_array_equal(extra["extra"], np.arange(4))
  assert {k: v.tolist() for k, v in ds.splits.items()} == {"train": [0], "valid": [1], "test": [2]}
  assert ds.summary["a"] == 1 and ds.summary["params"] == {"p": 1}


def test_cache_folder_that_cannot_be_created(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  with pytest.raises(UserError, match="cannot create the CTR cache folder"):
    data.cached_build("x", [], {}, str(blocker / "sub"), lambda tmp: {})


def test_default_cache_dir_honours_environment(monkeypatch, tmp_path):
  monkeypatch.setenv("HQ_JAX_CACHE", str(tmp_path / "env"))
  assert data.default_cache_dir() == str(tmp_path / "env")
  monkeypatch.delenv("HQ_JAX_CACHE")
  assert data.default_cache_dir().endswith(os.path.join(".cache", "hq_jax", "ctr"))
