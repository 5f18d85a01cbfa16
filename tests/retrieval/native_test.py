"""The compiled top-K kernel (`hq_jax.retrieval.native`) against the JAX search and plain NumPy references.

Integer keys: the kernel's result equals the JAX search's, keys included, for every stored layout. Float
rows and product codes: the kernel's ranking is exactly the NumPy lane-sum definition (`lane_sum_scores`),
and equals the JAX search wherever float32 sums are exact (dyadic values). Every test skips, with the
loader's reason, where the kernel is not built.
"""

import dataclasses
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import retrieval_ref as ref

from conftest import REPO, subprocess_env
from hq_jax import backend
from hq_jax.quant import pq, quantizer
from hq_jax.quant.pq import ProductCodes
from hq_jax.quant.quantizer import LayeredQuantized, QuantizedMatrix
from hq_jax.retrieval import native, topk

pytestmark = pytest.mark.skipif(not native.available(),
                                reason=f"compiled top-k kernel unavailable: {native.unavailable_reason()}")


def _with(kernel: str):
  return backend.override(dataclasses.replace(backend.tunings(), retrieval_kernel=kernel))


def _both(user_rep, item_rep, indptr, indices, query, k, method="auto"):
  """(JAX search result, kernel result, kernel via `native` directly: the same)."""
  with _with("jax"):
    want = topk(user_rep, item_rep, indptr, indices, query, k, block_items=512, batch_users=16, method=method)
  with _with("native"):
    got = topk(user_rep, item_rep, indptr, indices, query, k, method=method)
  return want, got


def _exclusions(rng, nu, ni, max_len, sort=True):
  lens = rng.integers(0, max_len, nu)
  indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
  rows = [rng.choice(ni, n, replace=False) for n in lens]
  indices = np.concatenate([np.sort(r) if sort else r for r in rows]).astype(np.int32)
  return indptr, indices


def _lane_reference(users, items, indptr, indices, query, k):
  scores = native.lane_sum_scores(users[query], items).astype(np.float64)
  return np.stack([ref.ranked(scores[r], k, indices[indptr[u]:indptr[u + 1]]) for r, u in enumerate(query)])


def _row_scaled(rng, n, d, scale_bits):
  x = jnp.asarray(rng.standard_normal((n, d)) * rng.uniform(0.2, 3.0, (n, 1)), jnp.float32)
  return quantizer.quantize(x, 1, scale=quantizer.sign_scale(x, "row"), scale_bits=scale_bits)


INTEGER = [  # name, builder(rng, n, d) of one side; d
    ("1bit", lambda r, n, d: quantizer.quantize(r.standard_normal((n, d)), 1), 64),
    ("1bit_d70", lambda r, n, d: quantizer.quantize(r.standard_normal((n, d)), 1), 70),
    ("1bit_row32", lambda r, n, d: _row_scaled(r, n, d, 32), 64),
    ("1bit_row8", lambda r, n, d: _row_scaled(r, n, d, 8), 40),
    ("2bit", lambda r, n, d: quantizer.quantize(r.standard_normal((n, d)), 2), 64),
    ("3bit_d30", lambda r, n, d: quantizer.quantize(r.standard_normal((n, d)), 3), 30),
    ("4bit", lambda r, n, d: quantizer.quantize(r.standard_normal((n, d)), 4), 64),
    ("8bit", lambda r, n, d: quantizer.quantize(r.standard_normal((n, d)), 8), 64),
    ("8bit_d300", lambda r, n, d: quantizer.quantize(r.standard_normal((n, d)), 8), 300),
    ("layered_1bit_row8", lambda r, n, d: quantizer.quantize_layers(np.array_split(r.standard_normal((n, d)), 4, axis=1),
                                                                    1, scale_mode="row", scale_bits=8), 64),
    ("layered_mixed", lambda r, n, d: LayeredQuantized(
        (_row_scaled(r, n, 16, 8), quantizer.quantize(r.standard_normal((n, 16)), 4),
         quantizer.quantize(r.standard_normal((n, 32)), 8)), quantizer.layer_weights(3, "mean")), 64),
]


@pytest.mark.parametrize("name, build, d", INTEGER, ids=[c[0] for c in INTEGER])
def test_integer_keys_equal_the_jax_search(name, build, d):
  """Keys and ids equal the JAX search's; 1,500 items (chunks of 512, a padded last tile), 45 users (user
  blocks of 32, groups of 4 with a remainder), unsorted exclusion lists, a repeated query user."""
  rng = np.random.default_rng(len(name) + d)
  users, items = build(rng, 45, d), build(rng, 1500, d)
  indptr, indices = _exclusions(rng, 45, 1500, 120, sort=False)
  query = np.concatenate([rng.permutation(45), [3, 3]])
  (s_want, i_want), (s_got, i_got) = _both(users, items, indptr, indices, query, 25)
  assert native.prepare_items(items, users) is not None  # the kernel really ran
  np.testing.assert_array_equal(i_got, i_want)
  np.testing.assert_array_equal(s_got, s_want)


def test_integer_keys_with_many_ties_break_by_id():
  """1 bit, d = 8: 9 distinct keys over 3,000 items; the order within a key is the id order."""
  rng = np.random.default_rng(5)
  users, items = (quantizer.quantize(rng.standard_normal((40, 8)), 1) for _ in range(2))
  items = quantizer.quantize(rng.standard_normal((3000, 8)), 1)
  indptr, indices = _exclusions(rng, 40, 3000, 200)
  (_, i_want), (_, i_got) = _both(users, items, indptr, indices, np.arange(40), 50)
  np.testing.assert_array_equal(i_got, i_want)
  want = ref.reference_topk(ref.float64_scores(users, items), indptr, indices, np.arange(40), 50)
  np.testing.assert_array_equal(i_got, want)


@pytest.mark.parametrize("d", [64, 19, 130])
def test_float_rows_rank_by_the_lane_sum(d):
  """Random floats (every rounding real) with duplicate items (exact ties): ids equal the lane-sum top K,
  scores its values bit for bit."""
  rng = np.random.default_rng(d)
  users = (rng.standard_normal((37, d)) * rng.uniform(0.1, 4, (37, 1))).astype(np.float32)
  items = (rng.standard_normal((2000, d)) * rng.uniform(0.1, 4, (2000, 1))).astype(np.float32)
  items[1500:1600] = items[100:200]  # exact ties at higher ids
  indptr, indices = _exclusions(rng, 37, 2000, 100)
  query = np.arange(37)
  with _with("native"):
    scores, got = topk(users, items, indptr, indices, query, 30)
  want = _lane_reference(users, items, indptr, indices, query, 30)
  np.testing.assert_array_equal(got, want)
  lane = native.lane_sum_scores(users, items)
  np.testing.assert_array_equal(scores, np.take_along_axis(lane[query], got, axis=1))


def test_float_gate_keeps_near_ties():
  """Items whose scores differ by less than the int8 gate's error bound: the gate must let all of them
  through to the exact scoring (a too-tight gate would drop some)."""
  rng = np.random.default_rng(1)
  base = rng.standard_normal(64).astype(np.float32)
  items = (base + rng.standard_normal((3000, 64)) * 1e-4).astype(np.float32)
  items[::3] = (rng.standard_normal((1000, 64)) * 0.1).astype(np.float32)
  users = (base + rng.standard_normal((9, 64)) * 1e-3).astype(np.float32)
  indptr, indices = _exclusions(rng, 9, 3000, 30)
  with _with("native"):
    _, got = topk(users, items, indptr, indices, np.arange(9), 100)
  np.testing.assert_array_equal(got, _lane_reference(users, items, indptr, indices, np.arange(9), 100))


def test_dyadic_floats_equal_the_jax_search():
  """Values k / 4: every float32 evaluation is exact, so both searches give the exact order."""
  rng = np.random.default_rng(2)
  users = (rng.integers(-4, 5, (30, 24)) / 4).astype(np.float32)
  items = (rng.integers(-4, 5, (1200, 24)) / 4).astype(np.float32)
  indptr, indices = _exclusions(rng, 30, 1200, 80)
  (s_want, i_want), (s_got, i_got) = _both(users, items, indptr, indices, np.arange(30), 40)
  np.testing.assert_array_equal(i_got, i_want)
  np.testing.assert_array_equal(s_got, s_want)


@pytest.mark.parametrize("m, bits, d, float_users", [(8, 8, 64, True), (16, 4, 64, False), (4, 5, 24, True)])
def test_product_codes_rank_by_the_lane_sum_of_decoded_rows(m, bits, d, float_users):
  """Random codebooks: the kernel scores from the codebooks (rows never decoded) exactly as the lane sum of
  the decoded rows; and the same as the float pair (users, decoded items) through the kernel."""
  rng = np.random.default_rng(m + bits)
  books = rng.standard_normal((m, 1 << bits, d // m)).astype(np.float32)
  items = pq.quantize(jnp.asarray(rng.standard_normal((1500, d)), jnp.float32), jnp.asarray(books), bits)
  users = (rng.standard_normal((20, d)).astype(np.float32) if float_users else
           pq.quantize(jnp.asarray(rng.standard_normal((20, d)), jnp.float32), jnp.asarray(books), bits))
  indptr, indices = _exclusions(rng, 20, 1500, 40)
  with _with("native"):
    _, got = topk(users, items, indptr, indices, np.arange(20), 30)
    _, floats = topk(ref.float_rows(users), ref.float_rows(items), indptr, indices, np.arange(20), 30)
  table = native.prepare_items(items, users)
  assert table.meta[5] == m and table.arrays[1].size == books.size  # codebooks, not decoded rows
  want = _lane_reference(ref.float_rows(users), ref.float_rows(items), indptr, indices, np.arange(20), 30)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(floats, want)


def test_dyadic_product_codes_equal_the_jax_search():
  rng = np.random.default_rng(4)
  books = rng.integers(-6, 7, (8, 16, 4)).astype(np.float32) / 4
  books[:, 1] = books[:, 0]  # different codes, the same rows: ties
  items = ProductCodes(codes=jnp.asarray(rng.integers(0, 16, (900, 8)), jnp.uint8), codebooks=jnp.asarray(books),
                       bits=4)
  users = (rng.integers(-8, 9, (12, 32)) / 8).astype(np.float32)
  indptr, indices = _exclusions(rng, 12, 900, 40)
  (_, i_want), (_, i_got) = _both(users, items, indptr, indices, np.arange(12), 60)
  np.testing.assert_array_equal(i_got, i_want)


def test_threads_and_user_blocks_give_one_result():
  rng = np.random.default_rng(6)
  users, items = quantizer.quantize(rng.standard_normal((70, 32)), 4), quantizer.quantize(rng.standard_normal((700, 32)), 4)
  indptr, indices = _exclusions(rng, 70, 700, 50)
  table = native.prepare_items(items, users)
  prepared = native.prepare_users(users, table)
  query = rng.permutation(70)
  one = native.search(prepared, table, indptr, indices, query, 10, threads=1)
  many = native.search(prepared, table, indptr, indices, query, 10, threads=3)
  parts = [native.search(prepared, table, indptr, indices, query[i:i + 9], 10, threads=2) for i in range(0, 70, 9)]
  for a, b in [(one, many), (one, tuple(np.concatenate(p) for p in zip(*parts)))]:
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_keys_past_the_kernels_width_fall_back_to_the_jax_search():
  """Row scales 2^-70 .. 2^70: exact keys need ~290 bits, more than the kernel's int128 (and multipliers past
  int64); `prepare_items` says so (None) and `topk` still ranks exactly (the JAX search's limbs)."""
  rng = np.random.default_rng(8)
  codes = lambda n: jnp.asarray(rng.choice([-1, 1], (n, 16)), jnp.int8)
  scales = lambda n: jnp.asarray(2.0 ** rng.integers(-70, 71, (n, 1)), jnp.float32)
  users = QuantizedMatrix(codes(6), scales(6), jnp.float32(0), 1)
  items = QuantizedMatrix(codes(200), scales(200), jnp.float32(0), 1)
  layered = lambda q: LayeredQuantized((q, q), (0.5, 0.5))
  assert native.prepare_items(layered(items), layered(users)) is None
  indptr, indices = np.zeros(7, np.int64), np.zeros(0, np.int32)
  with _with("native"):
    _, got = topk(layered(users), layered(items), indptr, indices, np.arange(6), 10)
  exact = ref.exact_scores(layered(users), layered(items))
  np.testing.assert_array_equal(got, np.stack([ref.ranked(exact[u], 10, []) for u in range(6)]))


def test_exclusion_rows_are_sorted_per_user_and_mapped():
  indptr = np.array([0, 3, 3, 5])
  indices = np.array([7, 2, 5, 1, 0], np.int32)
  row_of = np.array([9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
  ptr, rows = native.exclusion_rows(indptr, indices, np.array([2, 0, 1]), row_of, 10)
  np.testing.assert_array_equal(ptr, [0, 2, 5, 5])
  np.testing.assert_array_equal(rows[:5], [8, 9, 2, 4, 7])
  assert rows.size == 256


def test_missing_build_falls_back_to_jax(tmp_path):
  """No library at HQ_JAX_TOPK_LIB: `available()` is False with the reason, and `topk` runs the JAX search."""
  script = ("import numpy as np\nfrom hq_jax.retrieval import native, topk\n"
            "assert not native.available() and 'not built' in native.unavailable_reason(), native.unavailable_reason()\n"
            "s, i = topk(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32), np.zeros(4, np.int64),"
            " np.zeros(0, np.int32), np.arange(3), 1)\nassert (i[:, 0] == np.arange(3)).all(), i\nprint('ok')\n")
  env = {**subprocess_env(), native.LIB_ENV: str(tmp_path / "absent.so")}
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
  assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]
