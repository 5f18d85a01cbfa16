"""Sparse table updates: dedupe, lazy Adam and row-wise Adagrad against references, the sparse train step."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.configs import mpe_test
from hq_jax.ctr import sparse, train
from hq_jax.ctr.methods import METHODS
from hq_jax.errors import UserError


@pytest.mark.parametrize("num_rows,shape", [(10, (4, 3)), (1000, (6, 5)), (5, (3, 4))],
                         ids=["bound_is_batch", "few_repeats", "bound_is_table"])
def test_unique_rows_matches_numpy_and_pads_with_n(num_rows, shape):
  ids = np.random.default_rng(0).integers(0, num_rows, size=shape)
  unique, inverse = jax.jit(sparse.unique_rows, static_argnums=1)(jnp.asarray(ids), num_rows)
  want = np.unique(ids)
  assert unique.shape == (min(ids.size, num_rows),)
  np.testing.assert_array_equal(unique[:want.size], want)
  np.testing.assert_array_equal(unique[want.size:], num_rows + np.arange(unique.shape[0] - want.size))
  np.testing.assert_array_equal(np.asarray(unique)[np.asarray(inverse)], ids)


def test_padded_ids_read_zero_and_are_never_written():
  table = jnp.arange(12.0).reshape(4, 3)
  ids = jnp.array([1, 3, 4, 5])  # >= N: padding.
  np.testing.assert_array_equal(sparse.gather_rows(table, ids)[2:], 0.0)
  out = sparse.scatter_rows(table, ids, jnp.full((4, 3), -1.0))
  np.testing.assert_array_equal(np.asarray(out)[[0, 2]], np.asarray(table)[[0, 2]])
  np.testing.assert_array_equal(np.asarray(out)[[1, 3]], -1.0)


def _numpy_lazy_adam(table, mu, nu, count, ids, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
  """Lazy Adam in float64 NumPy, as TF's LazyAdamOptimizer / torch SparseAdam (optax's bias correction)."""
  table, mu, nu, t = table.copy(), mu.copy(), nu.copy(), count + 1
  mu[ids] = b1 * mu[ids] + (1 - b1) * grads
  nu[ids] = b2 * nu[ids] + (1 - b2) * grads ** 2
  table[ids] -= lr * (mu[ids] / (1 - b1 ** t)) / (np.sqrt(nu[ids] / (1 - b2 ** t)) + eps)
  return table, mu, nu, t


def test_lazy_adam_equals_dense_optax_adam_when_every_row_is_touched():
  rng = np.random.default_rng(1)
  table = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
  tx = optax.adam(1e-2)
  dense, dense_state = table, tx.init(table)
  lazy, lazy_state = table, sparse.lazy_adam_init(table)
  update = jax.jit(lambda t, s, i, g: sparse.lazy_adam_update(t, s, i, g, learning_rate=1e-2))

  @jax.jit
  def dense_update(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(20):
    grads = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    dense, dense_state = dense_update(dense, dense_state, grads)
    lazy, lazy_state = update(lazy, lazy_state, jnp.arange(6), grads)
  # Bit for bit (both jitted): the same formula in the same order.
  np.testing.assert_array_equal(lazy, dense)
  np.testing.assert_array_equal(lazy_state["mu"], dense_state[0].mu)
  np.testing.assert_array_equal(lazy_state["nu"], dense_state[0].nu)
  assert int(lazy_state["count"]) == int(dense_state[0].count) == 20


def test_lazy_adam_matches_numpy_and_leaves_untouched_rows_exactly():
  rng = np.random.default_rng(2)
  n, d, lr = 9, 3, 1e-2
  table = rng.normal(size=(n, d)).astype(np.float32)
  state = sparse.lazy_adam_init(jnp.asarray(table))
  ref = (table.astype(np.float64), np.zeros((n, d)), np.zeros((n, d)), 0)
  got = jnp.asarray(table)
  update = jax.jit(lambda t, s, i, g: sparse.lazy_adam_update(t, s, i, g, learning_rate=lr))
  for touched in ([0, 4, 5], [4, 8], [1, 2, 3, 4], [8]):
    grads = rng.normal(size=(len(touched), d)).astype(np.float32)
    before_table, before_mu = np.asarray(got), np.asarray(state["mu"])
    # Padded with one out-of-range id and a garbage gradient, as unique_rows leaves it.
    ids = jnp.asarray(touched + [n], jnp.int32)
    got, state = update(got, state, ids, jnp.asarray(np.concatenate([grads, np.full((1, d), 7.0)]), jnp.float32))
    ref = _numpy_lazy_adam(*ref, np.array(touched), grads.astype(np.float64), lr)
    untouched = np.setdiff1d(np.arange(n), touched)
    np.testing.assert_array_equal(np.asarray(got)[untouched], before_table[untouched])
    np.testing.assert_array_equal(np.asarray(state["mu"])[untouched], before_mu[untouched])
  np.testing.assert_allclose(got, ref[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state["nu"], ref[2], rtol=1e-5, atol=1e-12)
  assert int(state["count"]) == ref[3] == 4


def test_rowwise_adagrad_matches_numpy():
  rng = np.random.default_rng(3)
  n, d, lr, eps = 7, 4, 0.05, 1e-8
  table = rng.normal(size=(n, d)).astype(np.float32)
  ref, acc = table.astype(np.float64), np.zeros(n)
  got, state = jnp.asarray(table), sparse.rowwise_adagrad_init(jnp.asarray(table))
  for touched in ([0, 3], [3, 5, 6], [1, 3]):
    grads = rng.normal(size=(len(touched), d))
    acc[touched] += np.mean(grads ** 2, axis=1)
    ref[touched] -= lr * grads / (np.sqrt(acc[touched])[:, None] + eps)
    got, state = jax.jit(lambda t, s, i, g: sparse.rowwise_adagrad_update(t, s, i, g, learning_rate=lr))(
        got, state, jnp.asarray(touched + [n], jnp.int32), jnp.asarray(np.vstack([grads, np.ones((1, d))]),
                                                                         jnp.float32))
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state["accumulator"], acc, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(got)[[2, 4]], table[[2, 4]])  # Never touched.


def test_project_applies_to_the_written_rows_only():
  table = jnp.ones((5, 2))
  out, _ = sparse.rowwise_adagrad_update(table, sparse.rowwise_adagrad_init(table), jnp.array([1, 5]),
                                         jnp.ones((2, 2)), learning_rate=0.5, project=lambda r: r * 0 + 9.0)
  np.testing.assert_array_equal(out, [[1, 1], [9, 9], [1, 1], [1, 1], [1, 1]])


# ---------------------------------------------------------------------------------------------------------
# The sparse train step.


def _step_setup(method, table_optimizer, num_features=40, num_fields=5, phase=None):
  c = mpe_test.get_config()
  c.method, c.train.table_optimizer = method, table_optimizer
  m = METHODS[method]
  model = train.create_model(c, num_features, num_fields, np.arange(num_features) % 7)
  m.enter_phase(model.embedding, phase or m.phases[0])
  graphdef, params, rest = train.split_model(model, train=True)
  tx, table_opt = train.create_optimizer(c), train.create_table_optimizer(c)
  step = train.make_train_step(graphdef, tx, l2=1e-3, lam=m.regularizer_weight(c, m.phases[0]), table_opt=table_opt)
  return step, params, rest, train.init_optimizer(model, tx, table_opt)


@pytest.mark.parametrize("method", ["fp", pytest.param("lsq", marks=pytest.mark.slow), "mpe"])
def test_sparse_step_equals_dense_step_when_every_row_is_in_every_batch(method):
  rng = np.random.default_rng(4)
  batches = [jnp.asarray(rng.permutation(np.tile(np.arange(40), 2)).reshape(16, 5)) for _ in range(3)]
  labels = jnp.asarray(np.arange(16) % 2, jnp.float32)
  results = {}
  for opt in ("dense_adam", "lazy_adam"):
    step, params, rest, opt_state = _step_setup(method, opt)
    for i, ids in enumerate(batches):
      params, rest, opt_state, m = step(params, rest, opt_state, ids, labels, jax.random.key(i))
    results[opt] = (jax.tree_util.tree_flatten_with_path(jax.tree.map(np.asarray, (params, rest)))[0],
                    float(m["loss"]), float(m["grad_norm"]))
  dense, lazy = results["dense_adam"], results["lazy_adam"]
  assert lazy[1] == pytest.approx(dense[1], rel=1e-6) and lazy[2] == pytest.approx(dense[2], rel=1e-5)
  # Every parameter and BatchNorm statistic (no zero-gradient bias before a BatchNorm whose rounding noise
  # Adam would amplify: models.MLP).
  assert [p for p, _ in dense[0]] == [p for p, _ in lazy[0]]
  for (path, a), (_, b) in zip(dense[0], lazy[0]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))


# Every row in every batch: 27 features in 6 fields, batches of 1,000 rows (a feature is missing from a batch
# with probability below 1e-100).
EVERY_ROW_SPEC = "synthetic:rows=4000,cardinalities=3/5/4/6/2/7,zipf_a=0,seed=0"


@pytest.mark.parametrize("method,batch_size", [("fp", 1000), pytest.param("lsq", 1000, marks=pytest.mark.slow),
                                               pytest.param("mpe", 4000, marks=pytest.mark.slow)])
def test_lazy_adam_trains_as_dense_adam_when_every_row_is_in_every_batch(tmp_path, method, batch_size):
  """The whole trainer: lazy Adam is Adam when no row is left out, so the metrics agree to float rounding
  (before models.MLP lost its pre-BatchNorm biases, their amplified rounding noise moved the AUC by ~0.002).
  MPE in 2 epochs of one step (the whole 3,200-row training split) per phase: over 3 steps per epoch its training
  amplifies the rounding by which the two optimizers differ (test AUC 0.5060 against 0.5090), as it amplifies a
  mesh's (train_mesh_test.AMPLIFIED)."""
  results = {}
  for opt in ("dense_adam", "lazy_adam"):
    c = mpe_test.get_config()
    c.method, c.train.table_optimizer, c.data.spec = method, opt, EVERY_ROW_SPEC
    c.train.batch_size, c.train.max_epochs, c.train.patience = batch_size, 3, 3
    if method == "mpe":
      c.train.max_epochs = c.train.patience = 2
    results[opt] = train.train_and_evaluate(c, str(tmp_path / opt))
  dense, lazy = results["dense_adam"], results["lazy_adam"]
  assert dense["steps"] == lazy["steps"] == (9 if method != "mpe" else 4)
  for k in ("test_auc", "valid_auc"):
    assert lazy[k] == pytest.approx(dense[k], abs=1e-5), k
  assert lazy["test_logloss"] == pytest.approx(dense["test_logloss"], abs=1e-5)


@pytest.mark.parametrize("method,opt", [("fp", "lazy_adam"), ("alpt", "rowwise_adagrad"), ("mpe", "lazy_adam")])
def test_sparse_step_leaves_rows_outside_the_batch_unchanged_and_is_deterministic(method, opt):
  ids = jnp.asarray(np.arange(10).reshape(2, 5))  # Rows 10..39 untouched.
  labels = jnp.array([0.0, 1.0])
  runs = []
  for _ in range(2):
    step, params, rest, opt_state = _step_setup(method, opt)
    table0 = np.asarray(params["embedding"]["table"][...])
    for i in range(2):
      params, rest, opt_state, _ = step(params, rest, opt_state, ids, labels, jax.random.key(i))
    table = np.asarray(params["embedding"]["table"][...])
    np.testing.assert_array_equal(table[10:], table0[10:])
    assert not np.array_equal(table[:10], table0[:10])
    runs.append(table)
  np.testing.assert_array_equal(runs[0], runs[1])


def test_sparse_step_has_no_table_sized_op_but_the_row_scatters():
  """The gradient is taken w.r.t. the gathered rows: the only (N, D) results in the compiled step are the
  in-place scatters of the table and of lazy Adam's two moments (no (N, D) gradient, no dense Adam)."""
  n = 100_003
  step, params, rest, opt_state = _step_setup("fp", "lazy_adam", num_features=n)
  args = (params, rest, opt_state, jnp.zeros((16, 5), jnp.int32), jnp.zeros((16,)), jax.random.key(0))
  text = step.lower(*args).compile().as_text()
  ops = re.findall(rf"= f32\[{n},8\]\S* (\w[\w-]*)\(", text)
  assert ops and set(ops) <= {"parameter", "scatter", "fusion"}, ops
  fused = [line for line in text.splitlines() if re.search(rf"= f32\[{n},8\]\S* fusion\(", line)]
  assert len(fused) == 3 and all("scatter" in line for line in fused), fused
  dense_step, *dense_args = _step_setup("fp", "dense_adam", num_features=n)
  dense_text = dense_step.lower(*dense_args, *args[3:]).compile().as_text()
  assert len(re.findall(rf"= f32\[{n},8\]", dense_text)) > len(re.findall(rf"= f32\[{n},8\]", text))


@pytest.mark.parametrize("method,opt,lr,message", [
    ("qr", "lazy_adam", 0.0, "method 'qr' has none"),
    ("fp", "sgd", 0.0, "unknown optimizer 'sgd'"),
    ("fp", "dense_adam", 0.1, "table_learning_rate is the step size of a sparse table optimizer"),
])
def test_trainer_refuses_what_it_cannot_update_sparsely(tmp_path, method, opt, lr, message):
  c = mpe_test.get_config()
  c.method, c.train.table_optimizer, c.train.table_learning_rate = method, opt, lr
  with pytest.raises(UserError, match=message):
    train.train_and_evaluate(c, str(tmp_path))
