"""Tests for hq_jax.ctr.planted: the fit, the counter-based rows, the teacher, importance, Spearman, and a
small planted-truth MPE run (widths follow importance; a larger lambda never raises the mean width)."""

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats

from hq_jax.ctr import data as ctr_data
from hq_jax.ctr import mpe, planted
from hq_jax.errors import UserError

SMALL = planted.PlantedConfig(rows=20_000, features=5_000, seed=0)


@pytest.fixture(scope="module")
def small_source():
  return planted.PlantedSource(SMALL)


# ---- the fit


def test_fitted_fields_cover_criteo_and_sum_to_its_features():
  assert [f[0] for f in planted.CRITEO_FIELD_FIT] == list(ctr_data.CRITEO_HEADER[1:])
  assert sum(planted.CRITEO_KEPT) + len(planted.CRITEO_KEPT) == planted.CRITEO_FEATURES
  assert sum(planted.field_cardinalities()) == planted.CRITEO_FEATURES
  assert sum(planted.field_cardinalities(5_000)) == 5_000


@pytest.mark.parametrize("name,h,a,q,k,n", [
    ("flat_small", 0.2, 0.5, 1.0, 50, 1000), ("zipf_large", 0.05, 1.0, 0.001, 300_000, 10_000),
    ("steep", 0.6, 2.5, 0.0, 500, 5000)])
def test_expected_distinct_matches_exact_poisson_sum(name, h, a, q, k, n):
  del name
  r = np.arange(2, k + 1, dtype=np.float64)
  w = (r + q) ** -a
  p = np.concatenate([[h], w * (1 - h) / w.sum()])
  for t, got in zip(planted.FIT_THRESHOLDS, planted.expected_distinct(h, a, q, k, n)):
    want = scipy.special.gammainc(t, n * p).sum()
    assert got == pytest.approx(want, rel=2e-3, abs=0.5)


def test_fit_recovers_a_known_law():
  rng = np.random.default_rng(0)
  k, a = 20_000, 1.1
  p = np.arange(1, k + 1, dtype=np.float64) ** -a
  draws = rng.choice(k, size=10_000, p=p / p.sum())
  _, counts = np.unique(draws, return_counts=True)
  h, a_hat, _, _, loss = planted.fit_field_law(counts)
  assert h == pytest.approx(counts.max() / 10_000)
  assert abs(a_hat - a) < 0.15 and loss < 0.2


def test_kept_features_follow_from_the_fit():
  # The stored table sizes are what the stored fit and scale give (C3 less the one rounding feature).
  kept = planted.criteo_kept_features(planted.CRITEO_K_SCALE)
  diff = np.asarray(kept) - np.asarray(planted.CRITEO_KEPT)
  assert np.abs(diff).sum() <= 1


@pytest.mark.slow
def test_refit_reproduces_stored_fit():
  refit = planted.fit_criteo_fields()
  for got, want in zip(refit, planted.CRITEO_FIELD_FIT):
    assert got[:2] == want[:2]
    np.testing.assert_allclose(got[2:4], want[2:4], rtol=0.02, atol=0.01)


# ---- rows


def test_uniforms_are_uniform_and_counter_based():
  key = np.uint64(12345)
  u = planted._uniforms(key, np.arange(20_000), 5)
  assert u.min() >= 0 and u.max() < 1
  assert scipy.stats.kstest(u.ravel(), "uniform").pvalue > 1e-3
  np.testing.assert_array_equal(planted._uniforms(key, np.array([7, 3]), 5), u[[7, 3]])


def test_rows_are_reproducible_in_any_order_and_chunking(small_source):
  ids, labels = small_source.rows(np.arange(1000))
  perm = np.random.default_rng(1).permutation(1000)
  ids2, labels2 = small_source.rows(perm)
  np.testing.assert_array_equal(ids2, ids[perm])
  np.testing.assert_array_equal(labels2, labels[perm])
  streamed = np.concatenate([b for _, b, _ in small_source.blocks(0, 1000, chunk=300)])
  np.testing.assert_array_equal(streamed, ids)
  again = planted.PlantedSource(SMALL)  # a fresh source (another process, shard or resume)
  np.testing.assert_array_equal(again.rows(np.arange(500, 700))[0], ids[500:700])
  other_seed = planted.PlantedSource(planted.PlantedConfig(rows=20_000, features=5_000, seed=1))
  assert not np.array_equal(other_seed.rows(np.arange(100))[0], ids[:100])


def test_ids_stay_in_their_fields_with_the_planted_frequencies(small_source):
  ids, _ = small_source.rows(np.arange(20_000))
  off = small_source.field_offsets
  assert np.all(ids >= off[:-1]) and np.all(ids < off[1:])
  counts = np.bincount(ids.ravel(), minlength=small_source.num_features)
  expected = small_source.probabilities * 20_000
  top = expected > 200  # frequent features: within 5 standard deviations of the planted frequency
  assert np.all(np.abs(counts[top] - expected[top]) < 5 * np.sqrt(expected[top]) + 1)


def test_labels_follow_the_teacher(small_source):
  ids, labels = small_source.rows(np.arange(20_000))
  p = 1 / (1 + np.exp(-small_source.logits(ids)))
  assert labels.mean() == pytest.approx(planted.CRITEO_SAMPLE_CTR, abs=0.015)
  assert abs(labels.mean() - p.mean()) < 0.01
  assert scipy.stats.pearsonr(p, labels).statistic > 0.2
  lin, pair = small_source._terms(ids)
  assert np.std(lin) == pytest.approx(SMALL.linear_std, rel=0.1)
  assert np.std(pair) == pytest.approx(SMALL.interaction_std, rel=0.1)


def test_teacher_terms_match_a_pairwise_loop(small_source):
  ids, _ = small_source.rows(np.arange(5))
  lin, pair = small_source._terms(ids)
  w, v = small_source.linear.astype(np.float64), small_source.factors.astype(np.float64)
  for i in range(5):
    x = ids[i]
    want = sum(v[x[f]] @ v[x[g]] for f in range(len(x)) for g in range(f + 1, len(x)))
    assert pair[i] == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert lin[i] == pytest.approx(w[x].sum(), rel=1e-5, abs=1e-6)


def test_importance_matches_monte_carlo(small_source):
  # I_i = p_i E[(w_i + <v_i, u>)^2]: the frequency-weighted mean of the squared contribution over rows.
  ids, _ = small_source.rows(np.arange(20_000))
  w, v = small_source.linear.astype(np.float64), small_source.factors.astype(np.float64)
  total = v[ids].sum(axis=1)
  est = np.zeros(small_source.num_features)
  for f in range(ids.shape[1]):
    x = ids[:, f]
    c = w[x] + np.einsum("nk,nk->n", v[x], total - v[x])
    est += np.bincount(x, weights=c ** 2, minlength=est.size) / ids.shape[0]
  got = small_source.feature_importance()
  field_of = small_source.field_of
  per_field = lambda x: np.bincount(field_of, weights=x, minlength=ids.shape[1])
  np.testing.assert_allclose(per_field(est), per_field(got), rtol=0.1, atol=1e-3 * got.sum())
  assert est.sum() == pytest.approx(got.sum(), rel=0.05)


def test_importance_varies_within_frequency(small_source):
  counts = small_source.train_counts()
  share = planted.within_group_share(small_source.feature_importance(), counts, 16)
  assert 0.05 < share < 0.95
  levels = small_source.level[small_source.probabilities > 1e-3]
  assert len(set(levels.tolist())) == len(planted.FEATURE_LEVELS)  # every level among frequent features


# ---- datasets


def test_memmap_and_lazy_datasets_agree(tmp_path):
  spec = "rows=3000,features=2000,seed=3"
  ds, source = planted.planted_from_spec(spec, cache_dir=str(tmp_path))
  assert ds.summary["storage"] == "memmap" and isinstance(ds.ids, np.memmap)
  lazy, _ = planted.planted_from_spec(spec + ",storage=lazy")
  for name in ctr_data.SPLIT_NAMES:
    ids, labels = ds.split(name)
    lazy_ids, lazy_labels = lazy.split(name)
    assert isinstance(lazy_ids, planted.PlantedRows) and lazy_ids.shape == ids.shape
    np.testing.assert_array_equal(np.asarray(lazy_ids), ids)
    np.testing.assert_array_equal(np.asarray(lazy_labels), labels)
  idx = np.array([5, 1, 2000, 7])
  np.testing.assert_array_equal(lazy.ids[idx], ds.ids[idx])
  np.testing.assert_array_equal(ds.counts, lazy.counts)
  np.testing.assert_array_equal(ds.counts, source.train_counts())
  assert ds.counts.sum() == 2400 * 39
  again = ctr_data.load_ctr("planted:" + spec, cache_dir=str(tmp_path))
  assert again.summary["from_cache"]


@pytest.mark.parametrize("spec,fragment", [
    ("rows=x", "not a valid int"), ("colour=1", "KEY=VALUE"), ("storage=disk", "storage"),
    ("features=10", "features must be"), ("rows=1000,target_ctr=1.5", "target_ctr")])
def test_bad_specs_are_user_errors(spec, fragment):
  with pytest.raises(UserError, match=fragment):
    planted.parse_spec(spec)


# ---- Spearman


@pytest.mark.parametrize("name,widths,importance", [
    ("ties", [0, 0, 1, 2, 2, 6, 6, 6], [0.1, 0.3, 0.2, 0.5, 0.4, 0.9, 0.7, 0.8]),
    ("reversed", [6, 5, 4, 3, 2, 1], [1, 2, 3, 4, 5, 6]),
    ("random", list(np.random.default_rng(0).integers(0, 7, 128)), list(np.random.default_rng(1).random(128))),
    ("importance_ties", [1, 2, 3, 4, 5], [0.0, 0.0, 0.0, 1.0, 1.0])])
def test_spearman_matches_scipy(name, widths, importance):
  del name
  want = scipy.stats.spearmanr(widths, importance).statistic
  assert planted.spearman_width_importance(np.array(widths), np.array(importance)) == pytest.approx(want, abs=1e-12)


def test_spearman_of_constant_widths_is_nan():
  assert math.isnan(planted.spearman_width_importance(np.full(5, 3), np.arange(5)))


def test_group_importance_sums_groups():
  counts = np.array([5, 0, 3, 9, 1, 7])
  importance = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
  group_of, _ = mpe.frequency_groups(counts, 3)
  want = np.bincount(group_of, weights=importance) / importance.sum()
  np.testing.assert_allclose(planted.group_importance(importance, counts, 3), want)


# ---- planted truth through MPE


def _mpe_config(lam):
  from experiments.configs import mpe_criteo_scale  # pylint: disable=g-import-not-at-top
  c = mpe_criteo_scale.get_config("test")
  c.mpe.lam = lam
  return c


@pytest.fixture(scope="module")
def mpe_runs(tmp_path_factory):
  """MPE search + retrain on the tiny planted set at two lambdas (one train call each)."""
  from hq_jax.ctr import train  # pylint: disable=g-import-not-at-top
  out = {}
  for lam in (3e-4, 3e-2):
    c = _mpe_config(lam)
    c.data.cache_dir = str(tmp_path_factory.mktemp("cache"))
    out[lam] = train.train_and_evaluate(c, str(tmp_path_factory.mktemp(f"mpe_{lam}")))
  return out


def test_mpe_widths_follow_planted_importance(mpe_runs):
  r = mpe_runs[3e-4]
  source = planted.planted_source(planted.parse_spec(r["config"]["data"]["spec"].partition(":")[2])[0])
  counts = source.train_counts()
  imp = planted.group_importance(source.feature_importance(), counts, len(r["groups"]["bits"]))
  rho = planted.spearman_width_importance(np.array(r["groups"]["bits"]), imp)
  assert rho > 0.3, rho


def test_larger_lambda_never_raises_mean_width(mpe_runs):
  assert mpe_runs[3e-2]["mean_bits_per_feature"] <= mpe_runs[3e-4]["mean_bits_per_feature"]
