"""Tests for hq_jax.ctr.synthetic: Zipf shape, planted teacher, determinism, counts, cache and specs."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from hq_jax.ctr import data
from hq_jax.ctr import synthetic
from hq_jax.errors import UserError

CARDS = (5, 40, 300, 2000)


def _small(**kw):
  args = dict(num_rows=4000, cardinalities=CARDS, seed=0)
  args.update(kw)
  return synthetic.synthetic_ctr(**args)


@pytest.mark.parametrize("name,cardinality,a", [
    ("tiny", 1, 1.2), ("flat", 10, 0.0), ("criteo_like", 1000, 1.2), ("steep", 50, 2.5)])
def test_zipf_probabilities_match_formula(name, cardinality, a):
  del name
  p = synthetic.zipf_probabilities(cardinality, a)
  ref = np.array([r ** -a for r in range(1, cardinality + 1)], np.float64)
  np.testing.assert_allclose(p, ref / ref.sum(), rtol=1e-12)


@pytest.mark.parametrize("name,seed,embed_dim", [("k1", 0, 1), ("k4", 1, 4), ("k8", 2, 8)])
def test_teacher_logits_match_pairwise_loop(name, seed, embed_dim):
  del name
  rng = np.random.default_rng(seed)
  emb = rng.standard_normal((30, embed_dim)).astype(np.float32)
  lin = rng.standard_normal(30).astype(np.float32)
  ids = rng.integers(0, 30, (7, 5))
  got = synthetic.teacher_logits(ids, emb, lin, 0.25)
  for i in range(7):
    e = emb[ids[i]].astype(np.float64)
    ref = 0.25 + lin[ids[i]].astype(np.float64).sum()
    ref += sum(float(e[f] @ e[g]) for f in range(5) for g in range(f + 1, 5))
    assert got[i] == pytest.approx(ref, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("total,fields", [(100, 10), (100_000, 39), (6_800_000, 39), (4_430_000, 24)])
def test_criteo_like_cardinalities_sum_exactly(total, fields):
  c = synthetic.criteo_like_cardinalities(total, fields)
  assert len(c) == fields and sum(c) == total
  assert c == sorted(c) and c[0] >= 4


def test_deterministic_given_seed_and_independent_of_chunk_size(monkeypatch):
  a, ta = _small()
  b, tb = _small()
  c, _ = _small(seed=1)
  np.testing.assert_array_equal(a.ids, b.ids)
  np.testing.assert_array_equal(a.labels, b.labels)
  np.testing.assert_array_equal(ta.embeddings, tb.embeddings)
  assert not np.array_equal(a.ids, c.ids)
  monkeypatch.setattr(synthetic, "_CHUNK_ROWS", 333)
  d, td = _small()
  np.testing.assert_array_equal(a.ids, d.ids)
  np.testing.assert_array_equal(a.labels, d.labels)
  assert ta.bias == td.bias


def test_layout_splits_and_train_counts():
  ds, truth = _small()
  assert ds.ids.shape == (4000, 4) and ds.ids.dtype == np.int32 and ds.labels.dtype == np.float32
  np.testing.assert_array_equal(ds.field_offsets, [0, 5, 45, 345, 2345])
  field = np.searchsorted(ds.field_offsets, ds.ids, side="right") - 1
  assert np.all(field == np.arange(4))
  assert {k: v.size for k, v in ds.splits.items()} == {"train": 3200, "valid": 400, "test": 400}
  train_ids, _ = ds.split("train")
  np.testing.assert_array_equal(ds.counts, np.bincount(train_ids.ravel(), minlength=2345))
  for f in range(4):  # probabilities are a distribution within each field
    assert truth.probabilities[ds.field_offsets[f]:ds.field_offsets[f + 1]].sum() == pytest.approx(1.0)


def test_zipf_shape_of_generated_ids():
  a = 1.2
  ds, truth = synthetic.synthetic_ctr(num_rows=100_000, cardinalities=(1000,), zipf_a=a, seed=3,
                                      split=(1.0, 0.0, 0.0))
  freq = ds.counts / ds.counts.sum()
  # Total variation distance between the empirical and the planted law.
  assert 0.5 * np.abs(freq - truth.probabilities).sum() < 0.03
  # The head follows a power law of slope -a on log-log axes.
  order = np.argsort(-truth.probabilities)[:30]
  slope = np.polyfit(np.log(np.arange(1, 31)), np.log(freq[order]), 1)[0]
  assert slope == pytest.approx(-a, abs=0.1)
  # Ranks are scattered over ids: the most frequent feature is not simply id 0.
  assert not np.all(np.diff(truth.probabilities) <= 0)


def test_planted_teacher_and_labels():
  ds, truth = synthetic.synthetic_ctr(num_rows=20_000, cardinalities=(4, 30, 200, 1000, 50, 8), seed=5,
                                      important_fraction=0.5, important_field_fraction=0.5, target_ctr=0.25)
  assert truth.field_important.sum() == 3
  field = np.repeat(np.arange(6), np.diff(ds.field_offsets))
  assert not truth.important[~truth.field_important[field]].any()  # unimportant fields carry nothing
  assert np.all(truth.importance[~truth.important] == 0)
  assert np.all(truth.importance[truth.important] > 0)
  frac = truth.important[truth.field_important[field]].mean()
  assert 0.4 < frac < 0.6
  assert abs(float(ds.labels.mean()) - 0.25) < 0.02
  logits = synthetic.teacher_logits(np.asarray(ds.ids), truth.embeddings, truth.linear, truth.bias)
  assert roc_auc_score(ds.labels, logits) > 0.7  # labels really come from the teacher
  p = 1 / (1 + np.exp(-logits))
  assert abs(p.mean() - 0.25) < 0.01  # the fitted bias hits the target CTR in expectation


def test_cache_round_trip(tmp_path):
  a, ta = _small(cache_dir=str(tmp_path))
  b, tb = _small(cache_dir=str(tmp_path))
  assert not a.summary["from_cache"] and b.summary["from_cache"]
  assert isinstance(b.ids, np.memmap)
  np.testing.assert_array_equal(a.ids, b.ids)
  np.testing.assert_array_equal(ta.importance, tb.importance)
  assert ta.bias == tb.bias
  mem, tm = _small()
  json.dumps(mem.summary)
  json.dumps(b.summary)
  np.testing.assert_array_equal(mem.ids, b.ids)
  np.testing.assert_array_equal(mem.counts, b.counts)
  assert tm.bias == tb.bias


def test_spec_parsing_through_load_ctr(tmp_path):
  ds = data.load_ctr("synthetic:rows=500,cardinalities=3/7/11,zipf_a=1.1,seed=2", cache_dir=str(tmp_path))
  assert ds.ids.shape == (500, 3) and ds.num_features == 21
  ds2 = data.load_ctr("synthetic:rows=300,fields=5,features=200")
  assert ds2.num_fields == 5 and ds2.num_features == 200
  for bad, msg in [("synthetic:rows=x", "not a valid int"), ("synthetic:colour=red", "expected KEY=VALUE"),
                   ("synthetic:cardinalities=3/x", "integers separated"),
                   ("synthetic:cardinalities=3/4,fields=2", "either cardinalities"),
                   ("synthetic:rows=10,cardinalities=0/3", "cardinalities >= 1"),
                   ("synthetic:rows=10,target_ctr=1.5", "target_ctr"),
                   ("synthetic:rows=10,important_fraction=2", "must lie in"),
                   ("synthetic:rows=10,embed_dim=0", "embed_dim >= 1")]:
    with pytest.raises(UserError, match=msg):
      data.load_ctr(bad)
