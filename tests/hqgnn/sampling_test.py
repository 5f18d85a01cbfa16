"""BPR sampling: positives are training items, negatives never are, users uniform over active users."""

import numpy as np
import pytest

from hq_jax.data.interactions import load_dataset, to_csr
from hq_jax.hqgnn import sampling


@pytest.fixture(scope="module")
def lastfm():
  return load_dataset(None)


def test_triples_are_valid(lastfm):
  triples = sampling.sample_bpr_epoch(lastfm.train, lastfm.num_items, sampling.epoch_rng(0, 0))
  assert triples.shape == (lastfm.train.nnz, 3) and triples.dtype == np.int32
  train_pairs = set(zip(lastfm.train.rows().tolist(), lastfm.train.indices.tolist()))
  users, pos, neg = triples.T
  assert all((u, p) in train_pairs for u, p in zip(users.tolist(), pos.tolist()))
  assert not any((u, n) in train_pairs for u, n in zip(users.tolist(), neg.tolist()))
  assert np.all(lastfm.train.row_lengths()[users] > 0)
  assert neg.min() >= 0 and neg.max() < lastfm.num_items


def test_same_seed_and_epoch_same_triples(lastfm):
  a = sampling.sample_bpr_epoch(lastfm.train, lastfm.num_items, sampling.epoch_rng(3, 7))
  b = sampling.sample_bpr_epoch(lastfm.train, lastfm.num_items, sampling.epoch_rng(3, 7))
  c = sampling.sample_bpr_epoch(lastfm.train, lastfm.num_items, sampling.epoch_rng(3, 8))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_distributions_are_uniform():
  # 4 users (user 3 has no items), 6 items; many samples.
  users = np.array([0, 0, 1, 2, 2, 2])
  items = np.array([0, 1, 2, 3, 4, 5])
  train, _ = to_csr(users, items, 4, 6)
  t = sampling.sample_bpr_epoch(train, 6, np.random.default_rng(0), num_samples=60000)
  user_freq = np.bincount(t[:, 0], minlength=4) / len(t)
  np.testing.assert_allclose(user_freq, [1 / 3, 1 / 3, 1 / 3, 0.0], atol=0.01)
  # user 0's positives split evenly over items 0 and 1; its negatives uniform over items 2..5.
  rows = t[t[:, 0] == 0]
  np.testing.assert_allclose(np.bincount(rows[:, 1], minlength=6)[:2] / len(rows), [0.5, 0.5], atol=0.02)
  np.testing.assert_allclose(np.bincount(rows[:, 2], minlength=6)[2:] / len(rows), [0.25] * 4, atol=0.02)


def test_user_with_every_item_has_no_negative():
  train, _ = to_csr(np.array([0, 0]), np.array([0, 1]), 1, 2)
  with pytest.raises(ValueError, match="no negative"):
    sampling.sample_bpr_epoch(train, 2, np.random.default_rng(0))
