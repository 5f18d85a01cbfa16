"""ITQ rotation (hq_jax.quant.rotation) against its definition and a plain NumPy reference."""

import jax
import numpy as np
import pytest

from hq_jax.quant import rotation


def _numpy_itq(x, start, iterations):
  """The textbook loop (Gong & Lazebnik 2011) in NumPy."""
  v = x / np.linalg.norm(x, axis=1, keepdims=True)
  r = start
  for _ in range(iterations):
    b = np.where(v @ r >= 0, 1.0, -1.0)
    s, _, wt = np.linalg.svd(v.T @ b)
    r = s @ wt
  return r


def test_matches_numpy_reference_and_is_orthogonal():
  x = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32) * np.arange(1, 9, dtype=np.float32)
  key = jax.random.key(3)
  got = np.asarray(rotation.itq_rotation(x, key, iterations=20))
  want = _numpy_itq(x.astype(np.float64), np.asarray(rotation.random_rotation(key, 8), np.float64), 20)
  np.testing.assert_allclose(got @ got.T, np.eye(8), atol=1e-5)
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_objective_never_increases():
  x = np.random.default_rng(1).normal(size=(500, 16)).astype(np.float32) @ np.diag(np.geomspace(1, 20, 16))
  v = rotation.unit_rows(x)
  rs = [rotation.itq_rotation(x, jax.random.key(0), iterations=n) for n in (0, 1, 2, 5, 20)]
  losses = [float(rotation.quantization_loss(v, r)) for r in rs]
  assert all(b <= a + 1e-3 for a, b in zip(losses, losses[1:]))
  # ||B - V R||^2 = n d + ||V||^2 - 2 sum |V R|: the part that moves is sum |V R|.
  l1 = [float(np.abs(np.asarray(v) @ np.asarray(r)).sum()) for r in rs]
  assert l1[-1] > 1.02 * l1[0]


def test_recovers_a_rotated_hypercube():
  # Rows that are +-1 vectors seen through a rotation Q: from a start near Q the optimum sign(V R) =
  # sqrt(d) V R (zero quantisation error after the row normalisation) is found. ITQ is a local method: from a
  # random start it may stop at another fixed point.
  rng = np.random.default_rng(2)
  d = 6
  b = np.where(rng.random((400, d)) < 0.5, -1.0, 1.0)
  q, _ = np.linalg.qr(rng.normal(size=(d, d)))
  near, _ = np.linalg.qr(q + 0.2 * rng.normal(size=(d, d)))
  r = np.asarray(rotation.itq_rotation((b @ q.T).astype(np.float32), jax.random.key(1), 100, start=near))
  vr = (b @ q.T / np.sqrt(d)) @ r
  np.testing.assert_allclose(np.abs(vr), 1 / np.sqrt(d), atol=1e-4)


def test_zero_rows_are_ignored():
  x = np.random.default_rng(4).normal(size=(50, 4)).astype(np.float32)
  padded = np.concatenate([x, np.zeros((7, 4), np.float32)])
  key = jax.random.key(0)
  np.testing.assert_allclose(rotation.itq_rotation(padded, key, 10), rotation.itq_rotation(x, key, 10), atol=1e-6)
  assert not np.any(np.asarray(rotation.unit_rows(padded))[50:])


@pytest.mark.parametrize("n", [0, 3])
def test_rotation_keeps_inner_products(n):
  x = np.random.default_rng(5).normal(size=(40, 8)).astype(np.float32)
  r = np.asarray(rotation.itq_rotation(x, jax.random.key(0), n))
  np.testing.assert_allclose((x @ r) @ (x @ r).T, x @ x.T, rtol=1e-4, atol=1e-4)
