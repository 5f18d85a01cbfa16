"""Backbone shapes and the FM / cross / inner-product formulas against NumPy."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hq_jax.ctr import models


def _embeddings(b=3, f=4, d=5, seed=0):
  return np.random.default_rng(seed).normal(size=(b, f, d)).astype(np.float32)


def test_fm_second_order_matches_pairwise_sum():
  e = _embeddings()
  ref = np.array([sum(np.dot(x[i], x[j]) for i, j in itertools.combinations(range(4), 2)) for x in e])
  np.testing.assert_allclose(jax.jit(models.fm_second_order)(e), ref, rtol=1e-5)


def test_cross_layer_matches_formula():
  rng = np.random.default_rng(1)
  x0, x, w, b = (rng.normal(size=s).astype(np.float32) for s in [(3, 6), (3, 6), (6,), (6,)])
  ref = np.stack([x0[n] * np.dot(w, x[n]) + b + x[n] for n in range(3)])
  np.testing.assert_allclose(jax.jit(models.cross_layer)(x0, x, w, b), ref, rtol=1e-5, atol=1e-6)


def test_pairwise_inner_products_order_and_values():
  e = _embeddings()
  ref = np.array([[np.dot(x[i], x[j]) for i, j in itertools.combinations(range(4), 2)] for x in e])
  np.testing.assert_allclose(jax.jit(models.pairwise_inner_products)(e), ref, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(models.BACKBONES))
def test_backbone_shapes_and_modes(name):
  rngs = nnx.Rngs(params=0)
  model = models.CTRModel(models.Embedding(50, 5, rngs=rngs),
                          models.make_backbone(name, 4, 5, (8, 6), rngs=rngs))
  ids = jnp.asarray(np.random.default_rng(0).integers(0, 50, size=(7, 4)))
  model.train()
  out = model(ids)
  assert out.shape == (7,) and np.all(np.isfinite(out))
  model.eval()
  out_eval = model(ids)
  assert out_eval.shape == (7,)
  # Train mode normalises with batch statistics, eval mode with the running ones: different outputs.
  assert not np.allclose(out, out_eval)


def test_deepfm_is_fm_term_plus_mlp_logit():
  rngs = nnx.Rngs(params=0)
  net = models.DeepFM(4, 5, (8,), rngs=rngs)
  net.eval()
  e = jnp.asarray(_embeddings())
  mlp_only = net.head(net.mlp(e.reshape(3, -1)))[:, 0]
  np.testing.assert_allclose(net(e), models.fm_second_order(e) + mlp_only, rtol=1e-5)


def test_embedding_init_scale():
  emb = models.Embedding(20_000, 16, rngs=nnx.Rngs(params=0))
  assert float(jnp.std(emb.table[...])) == pytest.approx(models.EMBEDDING_INIT_STD, rel=0.02)
