"""ALPT, QR and fixed-width LSQ+ tables."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hq_jax.ctr import baselines, lsq


def test_stochastic_round_is_unbiased_and_on_grid():
  x = jnp.full((200_000,), 2.3)
  r = jax.jit(baselines.stochastic_round)(x, jax.random.key(0))
  assert set(np.unique(r)) == {2.0, 3.0}
  assert float(jnp.mean(r)) == pytest.approx(2.3, abs=0.005)


def test_qr_indices_and_embedding():
  q, r = baselines.qr_indices(jnp.array([0, 4, 5, 9]), 5)
  np.testing.assert_array_equal(q, [0, 0, 1, 1])
  np.testing.assert_array_equal(r, [0, 4, 0, 4])
  emb = baselines.QREmbedding(10, 3, ratio=2, rngs=nnx.Rngs(params=0))
  assert (emb.num_remainder, emb.num_quotient, emb.stored_floats()) == (5, 2, 21)
  out = emb(jnp.array([[7]]))
  np.testing.assert_allclose(out[0, 0], emb.remainder[...][2] * emb.quotient[...][1], rtol=1e-6)


def test_alpt_table_stays_on_int8_grid_after_write_back():
  emb = baselines.ALPTEmbedding(100, 4, rngs=nnx.Rngs(params=0))
  step = lsq.effective_step(emb.alpha[...])
  np.testing.assert_allclose(emb.table[...] / step, np.round(emb.table[...] / step), atol=1e-4)
  emb.table[...] = emb.table[...] + 0.37 * step  # An optimizer update off the grid.
  emb.alpha[...] = emb.alpha[...] * 1.1  # And a new step size.
  emb.post_update(jax.random.key(1))
  new_step = lsq.effective_step(emb.alpha[...])
  codes = emb.table[...] / new_step
  np.testing.assert_allclose(codes, np.round(codes), atol=1e-4)
  assert codes.min() >= -128 and codes.max() <= 127
  np.testing.assert_array_equal(emb.codes(), np.round(codes).astype(np.int8))
  # On the grid the 8-bit forward pass is the identity.
  np.testing.assert_allclose(emb(jnp.arange(100)), emb.table[...], atol=1e-7)


def test_lsq_embedding_forward():
  emb = baselines.LSQEmbedding(30, 4, 6, rngs=nnx.Rngs(params=0))
  ids = jnp.array([[1, 2], [3, 29]])
  want = lsq.lsq_quantize(emb.table[...][ids], lsq.effective_step(emb.alpha[...]), emb.beta[...], 6, 120)
  np.testing.assert_allclose(emb(ids), want)
  assert len(np.unique(np.asarray(emb(jnp.arange(30))))) <= 64
