"""BPR loss and L2 regulariser against plain NumPy formulas (spec, section Encoder)."""

import jax
import numpy as np
import pytest
from flax import nnx

from hq_jax.hqgnn import lightgcn


def _np_softplus(x):
  return np.logaddexp(0.0, x)


@pytest.mark.parametrize("batch,dim", [(1, 4), (7, 3), (64, 16)])
def test_bpr_loss_matches_numpy(batch, dim):
  rng = np.random.default_rng(batch)
  u, p, n = (rng.normal(size=(batch, dim)).astype(np.float32) for _ in range(3))
  want = np.mean(_np_softplus(-(np.sum(u * p, 1) - np.sum(u * n, 1))))
  got = jax.jit(lightgcn.bpr_loss)(u, p, n)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_weights_exclude_padding_rows():
  rng = np.random.default_rng(0)
  u, p, n = (rng.normal(size=(6, 4)).astype(np.float32) for _ in range(3))
  w = np.array([1, 1, 1, 1, 0, 0], np.float32)
  np.testing.assert_allclose(float(lightgcn.bpr_loss(u, p, n, w)), float(lightgcn.bpr_loss(u[:4], p[:4], n[:4])),
                             rtol=1e-6)
  np.testing.assert_allclose(float(lightgcn.l2_regularizer(u, p, n, w)),
                             float(lightgcn.l2_regularizer(u[:4], p[:4], n[:4])), rtol=1e-6)


def test_l2_regularizer_matches_spec():
  rng = np.random.default_rng(1)
  u, p, n = (rng.normal(size=(5, 3)) for _ in range(3))
  want = 0.5 * (np.sum(u**2) + np.sum(p**2) + np.sum(n**2)) / 5
  np.testing.assert_allclose(float(lightgcn.l2_regularizer(u, p, n)), want, rtol=1e-5)


def test_model_init_and_split():
  model = lightgcn.LightGCN(3, 5, 4, init_std=0.1, rngs=nnx.Rngs(params=0))
  table = np.asarray(model.embedding[...])
  assert table.shape == (8, 4)
  users, items = model.split_nodes(model.embedding[...])
  assert users.shape == (3, 4) and items.shape == (5, 4)
  same = lightgcn.LightGCN(3, 5, 4, init_std=0.1, rngs=nnx.Rngs(params=0))
  np.testing.assert_array_equal(table, np.asarray(same.embedding[...]))
