"""Tests for hq_jax.ctr.data.vocab: exact keys, per-field encoding against a reference, scratch spilling."""

import numpy as np
import pyarrow as pa
import pytest

from ctr.data import ctr_files
from hq_jax.ctr import data
from hq_jax.ctr.data import vocab
from hq_jax.errors import UserError

WIDE = 0xFF << 56


def test_pack_keys_golden():
  wide = {}
  tokens = pa.array([b"", b"a", b"ab", b"ba", b"12345678", b"123456789", b"x" * 20, b"123456789"],
                    pa.binary())
  keys = vocab.pack_keys(tokens.slice(1), wide)  # a sliced array: offsets start inside the buffers
  assert keys.dtype == np.uint64
  assert keys.tolist() == [0x61, 0x6261, 0x6162, int.from_bytes(b"12345678", "little"), WIDE, WIDE | 1, WIDE]
  assert vocab.pack_keys(tokens.slice(0, 1), wide).tolist() == [0]
  # Long tokens keep their serial key across calls; new ones continue the numbering.
  assert vocab.pack_keys(pa.array([b"y" * 9, b"x" * 20], pa.binary()), wide).tolist() == [WIDE | 2, WIDE | 1]


def test_pack_keys_serials_follow_first_occurrence():
  wide = {}
  keys = vocab.pack_keys(pa.array([b"b" * 9, b"a" * 9, b"b" * 9, b"c" * 9, b"a" * 9], pa.binary()), wide)
  assert keys.tolist() == [WIDE, WIDE | 1, WIDE, WIDE | 2, WIDE | 1]


@pytest.mark.parametrize("need", [1, 2, 3])
def test_encode_field_matches_reference(need):
  rng = np.random.default_rng(0)
  keys = rng.zipf(1.5, 500).astype(np.uint64) * np.uint64(2**40)  # large keys: order is numeric
  keys[::7] = np.uint64(2**64 - 1)
  train = np.sort(rng.choice(500, 400, replace=False))
  local, counts, stats = vocab.encode_field(keys, train, need)
  train_count = {}
  for k in keys[train].tolist():
    train_count[k] = train_count.get(k, 0) + 1
  kept = sorted(k for k, c in train_count.items() if c >= need)
  expected = [kept.index(k) + 1 if k in kept else 0 for k in keys.tolist()]
  np.testing.assert_array_equal(local, expected)
  rare = sum(c for k, c in train_count.items() if c < need)
  assert counts.tolist() == [rare] + [train_count[k] for k in kept]
  assert stats == {"features": len(kept) + 1, "train_distinct_values": len(train_count),
                   "rare_values_to_oov": len(train_count) - len(kept), "rare_train_occurrences": rare,
                   "all_split_distinct_values": len(set(keys.tolist()))}


def test_spilled_keys_give_the_same_dataset(tmp_path, monkeypatch):
  path = ctr_files.write_criteo(tmp_path / "c.csv", ctr_files.criteo_rows(400, seed=9))
  held = data.load_criteo(path, cache_dir=str(tmp_path / "a"), chunk_bytes=5000)
  monkeypatch.setattr(vocab, "SPILL_BYTES", 1000)
  spilled = data.load_criteo(path, cache_dir=str(tmp_path / "b"), chunk_bytes=5000)
  for name in ("ids", "labels", "counts", "field_offsets"):
    np.testing.assert_array_equal(getattr(held, name), getattr(spilled, name))
  assert held.summary["fields"] == spilled.summary["fields"]


def test_feature_ids_beyond_int32_are_refused_before_the_id_matrix(tmp_path, monkeypatch):
  """Global ids are int32: a vocabulary that would pass MAX_FEATURES stops with the field's name."""
  monkeypatch.setattr(vocab, "MAX_FEATURES", 60)
  rows = ctr_files.criteo_rows(100, seed=12)
  path = ctr_files.write_criteo(tmp_path / "c.csv", rows)
  with pytest.raises(UserError, match=rf"^{path}: field \w+ would end at feature id \d+, beyond the int32 id "
                                      r"space \(at most 60 features\); raise min_count$"):
    data.load_criteo(path, cache_dir=str(tmp_path / "cache"))
