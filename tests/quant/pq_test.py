"""Product codes: encode / decode, the STE / GSTE custom_vjps, codebook gradients and updates, k-means and OPQ,
each against a plain NumPy reference (float64 where it matters)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hq_jax.quant import curvature
from hq_jax.quant import estimators
from hq_jax.quant import pq


def _np_encode(x, books):
  """Loop reference: per row and subspace, the first codeword of least squared distance."""
  m, k, s = books.shape
  codes = np.zeros((x.shape[0], m), np.uint8)
  for r in range(x.shape[0]):
    for j in range(m):
      d = [np.sum((x[r, j * s:(j + 1) * s].astype(np.float64) - books[j, c]) ** 2) for c in range(k)]
      codes[r, j] = int(np.argmin(d))
  return codes


def _np_decode(codes, books):
  return np.concatenate([books[j, codes[:, j]] for j in range(books.shape[0])], axis=1)


def _np_codeword_sums(g, codes, k):
  m = codes.shape[1]
  s = g.shape[1] // m
  out = np.zeros((m, k, s), np.float64)
  for r in range(g.shape[0]):
    for j in range(m):
      out[j, codes[r, j]] += g[r, j * s:(j + 1) * s]
  return out


def _problem(n=40, d=8, m=4, bits=3, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  books = rng.normal(size=(m, 1 << bits, d // m)).astype(np.float32)
  return x, books


def test_encode_decode_match_numpy():
  x, books = _problem()
  codes = np.asarray(jax.jit(pq.encode)(x, books))
  np.testing.assert_array_equal(codes, _np_encode(x, books))
  np.testing.assert_array_equal(np.asarray(jax.jit(pq.decode)(codes, books)), _np_decode(codes, books))
  qc = pq.quantize(jnp.asarray(x), jnp.asarray(books), 3)
  assert qc.codes.dtype == jnp.uint8 and qc.shape == (40, 8) and pq.bits_per_node(qc) == 16.0


def test_encode_ties_go_to_the_lower_code():
  books = np.array([[[1.0], [-1.0], [1.0], [0.0]]], np.float32)  # codewords 0 and 2 equal, 1 and 3 apart
  x = np.array([[1.0], [0.0], [-1.0], [0.5]], np.float32)  # 0.5: equidistant from 1.0 (code 0) and 0.0 (code 3)
  np.testing.assert_array_equal(np.asarray(pq.encode(x, books))[:, 0], [0, 3, 1, 0])


@pytest.mark.parametrize("name,estimator,delta", [("ste", "ste", None), ("gste_scalar", "gste", 0.3),
                                                  ("gste_elementwise", "gste", "elementwise")])
def test_gradients_match_reference(name, estimator, delta):
  x, books = _problem(seed=1)
  rng = np.random.default_rng(2)
  g = rng.normal(size=x.shape).astype(np.float32)
  if delta == "elementwise":
    delta = rng.uniform(0, 1, size=x.shape).astype(np.float32)
  f = lambda x, c: estimators.fake_quant_pq(x, c, delta, estimator=estimator)
  xhat, vjp = jax.vjp(jax.jit(f), jnp.asarray(x), jnp.asarray(books))
  dx, dc = jax.jit(vjp)(jnp.asarray(g))
  codes = _np_encode(x, books)
  ref_xhat = _np_decode(codes, books)
  np.testing.assert_array_equal(np.asarray(xhat), ref_xhat)
  if estimator == "ste":
    ref_dx = g
  else:  # the GSTE with the codeword residual x - x^
    ref_dx = g.astype(np.float64) * (1 + np.asarray(delta, np.float64) * np.sign(g) * (x - ref_xhat))
  np.testing.assert_allclose(np.asarray(dx), ref_dx, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(dc), _np_codeword_sums(g, codes, books.shape[1]), rtol=1e-5, atol=1e-6)


def test_gste_with_zero_delta_is_the_ste_bit_for_bit():
  x, books = _problem(seed=3)
  loss = lambda est, delta: lambda x, c: jnp.sum(jnp.sin(estimators.fake_quant_pq(x, c, delta, estimator=est)))
  ste = jax.grad(loss("ste", None), argnums=(0, 1))(x, books)
  gste = jax.grad(loss("gste", 0.0), argnums=(0, 1))(x, books)
  for a, b in zip(ste, gste):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_codebook_gradient_is_the_sum_of_g_per_codeword():
  # dL/dC of decode() with the codes held fixed, by autodiff, equals the rule.
  x, books = _problem(n=64, seed=4)
  codes = pq.encode(x, books)
  g = np.random.default_rng(5).normal(size=x.shape).astype(np.float32)
  autodiff = jax.grad(lambda c: jnp.sum(pq.decode(codes, c) * g))(jnp.asarray(books))
  np.testing.assert_allclose(np.asarray(pq.codebook_grad(g, codes, books.shape[1])), np.asarray(autodiff), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(pq.codeword_counts(codes, 8)).sum(axis=1), 64)


def test_ema_update_matches_formula():
  x, books = _problem(n=50, seed=6)
  codes = np.asarray(pq.encode(x, books))
  rng = np.random.default_rng(7)
  counts = rng.uniform(0, 5, size=books.shape[:2]).astype(np.float32)
  sums = books * counts[..., None]
  decay, eps = 0.9, 1e-5
  new_books, new_counts, new_sums = jax.jit(pq.ema_codebooks, static_argnames=("decay", "epsilon"))(
      x, codes, counts, sums, decay=decay, epsilon=eps)
  k = books.shape[1]
  n_k = np.stack([np.bincount(codes[:, j], minlength=k) for j in range(codes.shape[1])]).astype(np.float64)
  ref_counts = decay * counts + (1 - decay) * n_k
  ref_sums = decay * sums + (1 - decay) * _np_codeword_sums(x, codes, k)
  total = ref_counts.sum(axis=1, keepdims=True)
  ref_books = ref_sums / ((ref_counts + eps) / (total + k * eps) * total)[..., None]
  np.testing.assert_allclose(np.asarray(new_counts), ref_counts, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(new_sums), ref_sums, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(new_books), ref_books, rtol=1e-4, atol=1e-5)


def test_lloyd_step_matches_numpy():
  rng = np.random.default_rng(8)
  x = rng.normal(size=(30, 2)).astype(np.float32)
  c = np.concatenate([x[:4], [[50.0, 50.0]]]).astype(np.float32)  # the last centroid is chosen by no row
  assign = np.argmin(((x[:, None, :].astype(np.float64) - c[None]) ** 2).sum(-1), axis=1)
  ref = np.stack([x[assign == j].mean(0) if np.any(assign == j) else c[j] for j in range(5)])
  np.testing.assert_allclose(np.asarray(jax.jit(pq.lloyd_step)(x, c)), ref, rtol=1e-5, atol=1e-6)


def test_kmeans_initialisation_is_seeded_and_lowers_distortion():
  rng = np.random.default_rng(9)
  x = (rng.normal(size=(500, 8)) * np.array([3, 1, 1, 0.2, 2, 2, 0.5, 0.5])).astype(np.float32)
  init = jax.jit(pq.init_codebooks, static_argnums=(1, 2, 4))
  a = init(x, 4, 3, jax.random.key(0), 10)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(init(x, 4, 3, jax.random.key(0), 10)))  # reproducible
  assert not np.array_equal(np.asarray(a), np.asarray(init(x, 4, 3, jax.random.key(1), 10)))
  start = init(x, 4, 3, jax.random.key(0), 0)  # 0 iterations: rows drawn from the key
  assert float(pq.distortion(x, a)) < 0.8 * float(pq.distortion(x, start))
  assert a.shape == (4, 8, 2)


def test_opq_rotation_is_orthogonal_and_lowers_distortion():
  # Correlated dimensions across subspaces: a rotation that decorrelates them lets PQ lose less.
  rng = np.random.default_rng(10)
  z = rng.normal(size=(600, 8)) * np.array([4, 3, 2, 1, 0.5, 0.3, 0.2, 0.1])
  q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
  x = (z @ q.T).astype(np.float32)
  r, books = jax.jit(pq.opq_rotation, static_argnums=(1, 2), static_argnames=("iterations",))(
      x, 4, 2, jax.random.key(0), iterations=10)
  np.testing.assert_allclose(np.asarray(r.T @ r), np.eye(8), atol=1e-5)
  plain = pq.init_codebooks(x, 4, 2, jax.random.key(0))
  assert float(pq.distortion(x @ r, books)) < 0.95 * float(pq.distortion(x, plain))


def test_curvature_delta_rule_applies_to_product_codes():
  # The GSTE's delta for product codes is the same rule of the loss as a function of x^ (hq_jax.quant.curvature).
  x, books = _problem(n=16, d=4, m=2, bits=2, seed=11)
  xhat = estimators.fake_quant_pq(jnp.asarray(x), jnp.asarray(books))
  target = jnp.asarray(np.random.default_rng(12).normal(size=x.shape), jnp.float32)
  loss = lambda xs, batch: jnp.sum(jnp.exp(0.1 * xs["x"]) * batch)
  est = curvature.estimate_deltas(loss, {"x": xhat}, [target], jax.random.key(0), num_batches=1, max_samples=50)
  g = jax.grad(lambda v: loss({"x": v}, target))(xhat)
  exact_trace = float(jnp.trace(jax.hessian(lambda v: loss({"x": v}, target))(xhat).reshape(64, 64)))
  ref = max(0.0, exact_trace / 64 / (3 * float(jnp.std(g))))
  np.testing.assert_allclose(float(est.deltas["x"]), ref, rtol=0.2)


def test_ema_update_rows_of_weight_zero_do_not_count():
  x, books = _problem(n=30, seed=13)
  codes = pq.encode(x, books)
  counts = np.ones(books.shape[:2], np.float32)
  sums = books * counts[..., None]
  w = np.ones(30, np.float32)
  w[20:] = 0.0  # padding rows
  with_padding = pq.ema_codebooks(x, codes, counts, sums, decay=0.5, weights=w)
  without = pq.ema_codebooks(x[:20], codes[:20], counts, sums, decay=0.5)
  for a, b in zip(with_padding, without):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_distinct_batch_rows_give_the_gradients_of_the_whole_matrix():
  # Row-wise codes: quantizing the distinct gathered rows and gathering back (what the trainer does) equals
  # gathering the quantized matrix, also for the GSTE, whose rule is applied to each row's summed gradient.
  x, books = _problem(n=20, seed=14)
  ids = np.array([3, 3, 7, 0, 19])
  g = np.random.default_rng(15).normal(size=(5, x.shape[1])).astype(np.float32)
  g[1] = -2 * g[0]  # row 3's two uses pull opposite ways: quantizing per use would differ under the GSTE
  for est, delta in (("ste", None), ("gste", 0.5)):
    whole = jax.grad(lambda x, c: jnp.sum(estimators.fake_quant_pq(x, c, delta, estimator=est)[ids] * g),
                     argnums=(0, 1))(x, books)

    def distinct(x, c):
      uid, inv = jnp.unique(jnp.asarray(ids), size=5, return_inverse=True)
      return jnp.sum(estimators.fake_quant_pq(x[uid], c, delta, estimator=est)[inv.reshape(-1)] * g)

    rows = jax.grad(distinct, argnums=(0, 1))(x, books)
    for a, b in zip(whole, rows):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
