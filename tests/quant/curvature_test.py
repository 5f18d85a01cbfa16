"""Tests of HVPs, Hutchinson's estimators and the GSTE delta against exact `jax.hessian` and NumPy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from hq_jax.quant import curvature

NUM_USERS, NUM_ITEMS, DIM = 10, 12, 4


def _bpr_batch(seed, size=16):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.integers(0, NUM_USERS, size)), jnp.asarray(rng.integers(0, NUM_ITEMS, size)),
          jnp.asarray(rng.integers(0, NUM_ITEMS, size)))


def bpr_loss(xhats, batch):
  """BPR on (users, items) matrices: mean softplus(-(<u, p> - <u, n>)); smooth in both matrices."""
  users, items = xhats
  u, p, n = batch
  margin = jnp.sum(users[u] * (items[p] - items[n]), axis=-1)
  return jnp.mean(jax.nn.softplus(-margin))


def bpr_single(x):
  """The same loss on one stacked 22x4 matrix (users then items): a single-matrix problem."""
  return bpr_loss((x[:NUM_USERS], x[NUM_USERS:]), _bpr_batch(0))


def _matrices(seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(100 + seed)
  return (jnp.asarray(rng.normal(0, 1.0, (NUM_USERS, DIM)), dtype),
          jnp.asarray(rng.normal(0, 1.0, (NUM_ITEMS, DIM)), dtype))


def _exact_hessian(f, x):
  """The exact Hessian of f at x as an (N, N) float64 matrix (computed in float64)."""
  with jax.enable_x64(True):
    h = jax.jit(jax.hessian(f))(jnp.asarray(np.asarray(x), jnp.float64))
  return np.asarray(h, np.float64).reshape(x.size, x.size)


def test_fwd_over_rev_equals_rev_over_rev_and_exact_hessian():
  with jax.enable_x64(True):
    x = jnp.concatenate(_matrices(dtype=jnp.float64))
    v = jnp.asarray(np.random.default_rng(1).normal(size=x.shape))
    fwd_rev = jax.jit(functools.partial(curvature.hvp, bpr_single))(x, v)
    rev_rev = jax.jit(functools.partial(curvature.hvp_rev_rev, bpr_single))(x, v)
    exact = (_exact_hessian(bpr_single, x) @ np.asarray(v).ravel()).reshape(x.shape)
    assert np.abs(exact).max() > 1e-2
    np.testing.assert_allclose(np.asarray(fwd_rev), np.asarray(rev_rev), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(fwd_rev), exact, rtol=1e-10, atol=1e-13)


def test_vhv_equals_v_dot_hvp_and_exact_hessian():
  with jax.enable_x64(True):
    x = jnp.concatenate(_matrices(dtype=jnp.float64))
    v = jnp.asarray(np.random.default_rng(4).normal(size=x.shape))
    got = float(jax.jit(functools.partial(curvature.vhv, bpr_single))(x, v))
    via_hvp = float(jnp.vdot(v, jax.jit(functools.partial(curvature.hvp, bpr_single))(x, v)))
    exact = float(np.asarray(v).ravel() @ _exact_hessian(bpr_single, x) @ np.asarray(v).ravel())
    assert abs(exact) > 1e-2
    assert got == pytest.approx(via_hvp, rel=1e-12) and got == pytest.approx(exact, rel=1e-10)


def test_rademacher_probes_are_balanced_signs_fixed_by_key_and_index():
  key = jax.random.key(5)
  v = np.asarray(curvature.rademacher(key, 3, (1001, 7)))  # 7007 entries: not a multiple of 32
  assert v.shape == (1001, 7) and v.dtype == np.float32 and set(np.unique(v)) == {-1.0, 1.0}
  assert abs(v.mean()) < 4 / np.sqrt(v.size)  # 4 standard deviations of a fair sign's mean
  np.testing.assert_array_equal(v, np.asarray(curvature.rademacher(key, 3, (1001, 7))))
  w = np.asarray(curvature.rademacher(key, 4, (1001, 7)))
  assert abs(np.mean(v * w)) < 4 / np.sqrt(v.size)  # independent draws: uncorrelated
  # Each entry's sign uses its own bit: neighbouring entries are uncorrelated too.
  flat = v.ravel()
  assert abs(np.mean(flat[1:] * flat[:-1])) < 4 / np.sqrt(flat.size)


def test_hvp_on_pytree_float32():
  xs = _matrices()
  rng = np.random.default_rng(2)
  vs = tuple(jnp.asarray(rng.normal(size=x.shape), jnp.float32) for x in xs)
  f = functools.partial(bpr_loss, batch=_bpr_batch(0))
  a = jax.jit(functools.partial(curvature.hvp, f))(xs, vs)
  b = jax.jit(functools.partial(curvature.hvp_rev_rev, f))(xs, vs)
  for u, w in zip(a, b):
    np.testing.assert_allclose(np.asarray(u), np.asarray(w), rtol=1e-5, atol=1e-6)


def test_block_fn_is_the_diagonal_block():
  with jax.enable_x64(True):
    xs = _matrices(dtype=jnp.float64)
    f = functools.partial(bpr_loss, batch=_bpr_batch(0))
    full = _exact_hessian(lambda x: f((x[:NUM_USERS], x[NUM_USERS:])), jnp.concatenate(xs))
    n_users = NUM_USERS * DIM
    np.testing.assert_allclose(_exact_hessian(curvature.block_fn(f, xs, 0), xs[0]), full[:n_users, :n_users],
                               rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(_exact_hessian(curvature.block_fn(f, xs, 1), xs[1]), full[n_users:, n_users:],
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("rtol", [0.0, 1e-3], ids=["all_50_samples", "spec_rule"])
def test_hutchinson_trace_matches_exact_trace(rtol):
  """Within 4 standard errors of the exact trace (float32 estimate, float64 exact)."""
  x = jnp.concatenate(_matrices())
  exact = np.trace(_exact_hessian(bpr_single, x))
  est = jax.jit(lambda x, k: curvature.hutchinson_trace(bpr_single, x, k, rtol=rtol))(x, jax.random.key(0))
  assert 5 <= int(est.num_samples) <= 50
  if rtol == 0.0:
    assert int(est.num_samples) == 50
  assert float(est.stderr) > 0
  assert abs(float(est.estimate) - exact) <= 4 * float(est.stderr), (float(est.estimate), exact, float(est.stderr))


def test_hutchinson_diagonal_matches_exact_diagonal():
  x = jnp.concatenate(_matrices())
  exact = np.diag(_exact_hessian(bpr_single, x)).reshape(x.shape)
  est = jax.jit(lambda x, k: curvature.hutchinson_diagonal(bpr_single, x, k, rtol=0.0))(x, jax.random.key(1))
  assert est.estimate.shape == x.shape and est.stderr.shape == x.shape
  assert int(est.num_samples) == 50
  err = np.abs(np.asarray(est.estimate, np.float64) - exact)
  # Elements with no off-diagonal coupling have v_i (Hv)_i = H_ii exactly: stderr 0, float error only.
  np.testing.assert_array_less(err, 4 * np.asarray(est.stderr) + 1e-5)
  assert np.abs(exact).max() > 1e-2


def test_hutchinson_is_unbiased_on_a_known_matrix():
  """f = x^T A x / 2 with A random symmetric: E[v^T A v] = Tr(A) and E[v * Av] = diag(A)."""
  rng = np.random.default_rng(3)
  a = rng.normal(size=(12, 12))
  a = jnp.asarray(a + a.T, jnp.float32)
  f = lambda x: 0.5 * x @ a @ x
  x = jnp.zeros(12, jnp.float32)
  tr = jax.jit(lambda k: curvature.hutchinson_trace(f, x, k, rtol=0.0))(jax.random.key(2))
  diag = jax.jit(lambda k: curvature.hutchinson_diagonal(f, x, k, rtol=0.0))(jax.random.key(3))
  assert abs(float(tr.estimate) - float(jnp.trace(a))) <= 4 * float(tr.stderr)
  np.testing.assert_array_less(np.abs(np.asarray(diag.estimate) - np.diag(np.asarray(a))),
                               4 * np.asarray(diag.stderr) + 1e-5)


@pytest.mark.parametrize("min_samples", [2, 5])
def test_stopping_rule_stops_early_when_samples_are_constant(min_samples):
  """H = c I: every v^T H v = c N (and v * Hv = c), so the running mean never moves."""
  c = 0.7
  f = lambda x: 0.5 * c * jnp.sum(x**2)
  x = jnp.ones((20, 4), jnp.float32)
  tr = curvature.hutchinson_trace(f, x, jax.random.key(0), min_samples=min_samples)
  assert int(tr.num_samples) == min_samples
  np.testing.assert_allclose(float(tr.estimate), c * x.size, rtol=1e-6)
  assert float(tr.stderr) == 0.0
  diag = curvature.hutchinson_diagonal(f, x, jax.random.key(0), min_samples=min_samples)
  assert int(diag.num_samples) == min_samples
  np.testing.assert_allclose(np.asarray(diag.estimate), c, rtol=1e-6)


def test_stopping_rule_runs_to_max_samples_on_noisy_samples():
  rng = np.random.default_rng(4)
  a = rng.normal(size=(30, 30))
  a = jnp.asarray(a + a.T, jnp.float32)
  f = lambda x: 0.5 * x @ a @ x
  x = jnp.zeros(30, jnp.float32)
  assert int(curvature.hutchinson_trace(f, x, jax.random.key(0)).num_samples) == 50
  assert int(curvature.hutchinson_trace(f, x, jax.random.key(0), max_samples=20).num_samples) == 20
  assert int(curvature.hutchinson_trace(f, x, jax.random.key(0), max_samples=7).num_samples) == 7  # not a whole chunk
  assert int(curvature.hutchinson_diagonal(f, x, jax.random.key(0)).num_samples) == 50


def test_stopping_rule_matches_sequential_numpy_reference():
  """Same probe vectors, the rule applied by a plain loop: same stopping point, mean and stderr."""
  x = jnp.concatenate(_matrices())
  key = jax.random.key(5)
  rtol, min_samples, max_samples = 0.02, 3, 50
  est = curvature.hutchinson_trace(bpr_single, x, key, rtol=rtol, min_samples=min_samples,
                                   max_samples=max_samples)
  hessian = _exact_hessian(bpr_single, x)
  probes = jax.jit(jax.vmap(lambda k: curvature.rademacher(key, k, x.shape)))(jnp.arange(max_samples))
  probes = np.asarray(probes, np.float64).reshape(max_samples, -1)
  samples = []
  for k in range(max_samples):
    samples.append(probes[k] @ hessian @ probes[k])
    if k + 1 >= min_samples:
      mean, prev = np.mean(samples), np.mean(samples[:-1])
      if abs(mean - prev) <= rtol * abs(mean):
        break
  assert min_samples < len(samples) < max_samples  # this case exercises the rule, not a bound
  assert int(est.num_samples) == len(samples)
  np.testing.assert_allclose(float(est.estimate), np.mean(samples), rtol=1e-5)
  np.testing.assert_allclose(float(est.stderr), np.std(samples, ddof=1) / np.sqrt(len(samples)), rtol=1e-4)


GSTE_DELTA_CASES = [
    # (name, trace, grad, expected)
    ("positive", 8.0, [1.0, -1.0, 1.0, -1.0], (8.0 / 4) / (3 * 1.0)),
    ("negative_trace_clips_to_zero", -8.0, [1.0, -1.0, 1.0, -1.0], 0.0),
    ("zero_gradient", 8.0, [0.0, 0.0, 0.0, 0.0], 0.0),
    ("constant_gradient_has_no_spread", 8.0, [2.0, 2.0, 2.0, 2.0], 0.0),
]


@pytest.mark.parametrize("name,trace,grad,expected", GSTE_DELTA_CASES, ids=[c[0] for c in GSTE_DELTA_CASES])
def test_gste_delta_golden(name, trace, grad, expected):
  del name
  out = jax.jit(curvature.gste_delta, static_argnums=1)(jnp.float32(trace), 4, jnp.asarray(grad, jnp.float32))
  np.testing.assert_allclose(float(out), expected, rtol=1e-6)


def test_gste_delta_random_against_numpy():
  rng = np.random.default_rng(6)
  g = rng.normal(0, 0.01, (30, 8)).astype(np.float32)
  out = jax.jit(curvature.gste_delta, static_argnums=1)(jnp.float32(3.5), g.size, g)
  np.testing.assert_allclose(float(out), max(0.0, (3.5 / g.size) / (3 * np.std(g.astype(np.float64)))),
                             rtol=1e-5)
  diag = rng.normal(0, 1.0, g.shape).astype(np.float32)
  out = jax.jit(curvature.gste_delta_elementwise)(diag, g)
  np.testing.assert_allclose(np.asarray(out), np.maximum(0.0, diag / (3 * np.std(g.astype(np.float64)))),
                             rtol=1e-5)
  assert (np.asarray(out) == 0).any() and (np.asarray(out) > 0).any()


@functools.partial(jax.jit, static_argnames=("index",))
def _trace_delta_by_hand(xs, batch, key, *, index):
  """(delta, Tr(H)/N, std(g)) of one matrix and batch from the public pieces (rtol 0: all 50 samples)."""
  f = curvature.block_fn(functools.partial(bpr_loss, batch=batch), xs, index)
  g = jax.grad(f)(xs[index])
  est = curvature.hutchinson_trace(f, xs[index], key, rtol=0.0)
  return curvature.gste_delta(est.estimate, xs[index].size, g), est.estimate / xs[index].size, jnp.std(g)


def test_estimate_deltas_is_the_batch_mean_of_per_matrix_deltas():
  """Composed by hand from the public pieces with the documented keys (batch b, matrix i)."""
  xs = _matrices()
  batches = [_bpr_batch(s) for s in range(4)]
  key = jax.random.key(7)
  out = curvature.estimate_deltas(bpr_loss, xs, batches, key, num_batches=3, mode="trace", rtol=0.0)
  for i in range(2):
    expected = []
    for b in range(3):
      k = jax.random.fold_in(jax.random.fold_in(key, b), i)
      delta, curv, grad_std = _trace_delta_by_hand(xs, batches[b], k, index=i)
      expected.append(float(delta))
      np.testing.assert_allclose(float(out.curvature[i][b]), float(curv), rtol=1e-5)
      np.testing.assert_allclose(float(out.grad_std[i][b]), float(grad_std), rtol=1e-5)
      assert int(out.num_samples[i][b]) == 50
    assert out.deltas[i].shape == ()
    assert min(expected) > 0
    np.testing.assert_allclose(float(out.deltas[i]), np.mean(expected), rtol=1e-5)


def _t_bound(num_samples: int, comparisons: int, false_alarm: float = 1e-3) -> float:
  """How many standard errors a mean of `num_samples` samples may miss by: Student's t quantile with
  num_samples - 1 degrees of freedom (the standard error is itself estimated from few samples when the
  stopping rule ends early), two-sided, Bonferroni over `comparisons`, so a correct estimator fails the whole
  test with probability < false_alarm."""
  return float(scipy.stats.t.ppf(1 - false_alarm / (2 * comparisons), df=max(num_samples - 1, 1)))


@jax.jit
def _exact_hessian_blocks(xs, batch):
  return jax.hessian(bpr_loss)(xs, batch)


@pytest.mark.parametrize("mode", ["trace", "diagonal"])
def test_estimate_deltas_close_to_exact_hessian(mode):
  """With the spec's rule: each batch's Tr(H)/N (or diag(H)) is within a t bound of stderrs of the exact block's,
  std(g) is the gradient's, and delta is the batch mean of the delta formula."""
  xs = _matrices()
  batches = [_bpr_batch(s) for s in range(3)]
  out = curvature.estimate_deltas(bpr_loss, xs, batches, jax.random.key(8), mode=mode)
  with jax.enable_x64(True):
    xs64 = tuple(jnp.asarray(np.asarray(x), jnp.float64) for x in xs)
    hessians = [_exact_hessian_blocks(xs64, batch) for batch in batches]
  for i in range(2):
    n = xs[i].size
    deltas = []
    for b in range(3):
      block = np.asarray(hessians[b][i][i]).reshape(n, n)
      exact = np.trace(block) / n if mode == "trace" else np.diag(block).reshape(xs[i].shape)
      err = np.abs(np.asarray(out.curvature[i][b]) - exact)
      bound = _t_bound(int(out.num_samples[i][b]), comparisons=6 * np.size(exact))
      np.testing.assert_array_less(err, bound * np.asarray(out.stderr[i][b]) + 1e-6)
      grad_std = np.std(np.asarray(jax.grad(bpr_loss)(xs, batches[b])[i], np.float64))
      np.testing.assert_allclose(float(out.grad_std[i][b]), grad_std, rtol=1e-5)
      deltas.append(np.maximum(0.0, np.asarray(out.curvature[i][b], np.float64) / (3 * grad_std)))
    assert out.deltas[i].shape == (() if mode == "trace" else xs[i].shape)
    np.testing.assert_allclose(np.asarray(out.deltas[i]), np.mean(deltas, axis=0), rtol=1e-5, atol=1e-8)
    assert np.any(np.asarray(out.deltas[i]) > 0)


def test_delta_config_schedule():
  xs = _matrices()
  cfg = curvature.DeltaConfig(mode="trace", every_epochs=10)
  assert [e for e in range(31) if curvature.deltas_due(cfg, e)] == [10, 20, 30]
  d = curvature.initial_deltas(cfg, xs)
  assert all(float(v) == 0.0 and v.shape == () for v in d)
  diag = curvature.initial_deltas(curvature.DeltaConfig(mode="diagonal"), xs)
  assert [v.shape for v in diag] == [x.shape for x in xs]
  fixed = curvature.DeltaConfig(mode="fixed", fixed_delta=1e-3)
  assert [float(v) for v in curvature.initial_deltas(fixed, xs)] == pytest.approx([1e-3, 1e-3])
  assert not any(curvature.deltas_due(fixed, e) for e in range(31))
  with pytest.raises(ValueError):
    curvature.update_deltas(fixed, bpr_loss, xs, [], jax.random.key(0))
  with pytest.raises(ValueError):
    curvature.DeltaConfig(mode="hessian")
  out = curvature.update_deltas(curvature.DeltaConfig(num_batches=2), bpr_loss, xs,
                                [_bpr_batch(s) for s in range(2)], jax.random.key(0))
  assert [np.shape(v) for v in out.curvature] == [(2,), (2,)]
