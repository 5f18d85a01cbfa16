"""ALPT, QR and fixed-width LSQ+ tables; ALPT's step size learnt in the train step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments.configs import mpe_test
from hq_jax.ctr import baselines, lsq, models, sparse, train


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


@pytest.mark.parametrize("table_optimizer", ["dense_adam", "rowwise_adagrad"])
def test_alpt_step_size_learns_from_the_updated_rows_before_the_write_back(table_optimizer):
  """ALPT (Li et al. 2022, arXiv 2212.05735; Hetu's implementation): the rows and dense layers are updated first, alpha
  then takes the LSQ gradient of the loss of the updated float rows quantized with it (through the updated
  dense layers), and the rows are written back onto the grid of the new alpha. With SGD(1) as the optimizer,
  alpha's step is minus that gradient; on the stored rows (the step's own forward pass) the gradient would be
  rounding noise, which Adam turned into learning-rate-sized steps (issue 21)."""
  c = mpe_test.get_config()
  c.method, c.train.table_optimizer = "alpt", table_optimizer
  n, f = 40, 5
  model = train.create_model(c, n, f, np.ones(n))
  graphdef, params, rest = train.split_model(model, train=True)
  tx = optax.sgd(1.0)
  table_opt = sparse.table_optimizer(table_optimizer, 0.5)
  opt_state = train.init_optimizer(model, tx, table_opt)
  step = train.make_train_step(graphdef, tx, l2=0.0, lam=0.0, table_opt=table_opt)
  ids = jnp.asarray(np.random.default_rng(0).integers(0, n, size=(64, f)))
  labels = jnp.asarray(np.arange(64) % 2, jnp.float32)
  new_params, _, _, _ = step(*jax.tree.map(jnp.copy, (params, rest, opt_state)), ids, labels, jax.random.key(3))

  # The reference, from the step's pieces: the main gradient at the stored rows, SGD / row-wise Adagrad.
  def bce(m, e):
    return jnp.mean(optax.sigmoid_binary_cross_entropy(m.backbone(e), labels))

  ref = nnx.merge(graphdef, params, rest)
  main = nnx.All(nnx.Param, nnx.Not(models.PostUpdateParam))
  grads = nnx.grad(lambda m: bce(m, m.embedding(ids)), argnums=nnx.DiffState(0, main))(ref)
  alpha = ref.embedding.alpha[...]
  table = ref.embedding.table[...]
  if table_optimizer == "dense_adam":
    updated = table - grads["embedding"]["table"][...]
  else:
    unique = jnp.unique(ids)
    g_rows = grads["embedding"]["table"][...][unique]
    rows, _ = sparse.rowwise_adagrad_rows(table[unique], sparse.rowwise_adagrad_init(table), unique, g_rows,
                                          learning_rate=0.5)
    updated = table.at[unique].set(rows)
  dense = nnx.merge(graphdef, params, rest)
  nnx.update(dense, nnx.state(nnx.merge(graphdef, new_params, rest), nnx.All(main, nnx.Not(models.TableParam))))

  def step_loss(alpha, rows):
    q = lsq.lsq_quantize(rows[ids], lsq.effective_step(alpha), jnp.zeros((c.model.dim,)), 8, n * c.model.dim)
    return bce(nnx.clone(dense), q)  # a copy: its BatchNorm statistics are dropped

  want = jax.grad(step_loss)(alpha, updated)
  got = alpha - new_params["embedding"]["alpha"][...]
  assert float(got) == pytest.approx(float(want), rel=1e-4)
  # On the stored rows, already on alpha's grid, the same gradient is rounding noise.
  assert abs(float(jax.grad(step_loss)(alpha, table))) < 1e-4 * abs(float(want))
  # Written back onto the grid of the new step.
  new_step = lsq.effective_step(new_params["embedding"]["alpha"][...])
  codes = new_params["embedding"]["table"][...] / new_step
  np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
  if table_optimizer == "rowwise_adagrad":  # Rows outside the batch are not written.
    untouched = np.setdiff1d(np.arange(n), np.asarray(ids))
    np.testing.assert_array_equal(new_params["embedding"]["table"][...][untouched], table[untouched])
