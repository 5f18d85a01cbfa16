"""Lexicographic key operations against plain Python sorting: top-K, maximum, merge, the float view of a key."""

import jax.numpy as jnp
import numpy as np
import pytest

from hq_jax.retrieval.lex import lex_max, lex_top_k, lowest, merge_topk, to_float

LEX = [  # name, words (rows of (w0, w1) per position), k, expected positions
    ("first_word_decides", [(3, 0), (5, 0), (4, 9)], 2, [1, 2]),
    ("second_word_breaks_ties", [(5, 1), (5, 3), (5, 2), (1, 9)], 3, [1, 2, 0]),
    ("full_ties_by_position", [(2, 7), (2, 7), (2, 7), (2, 8)], 3, [3, 0, 1]),
    ("threshold_inside_ties", [(9, 0), (4, 1), (4, 5), (4, 5), (4, 2)], 3, [0, 2, 3]),
    ("removed_last", [(-np.inf, -np.inf), (1, 0), (-np.inf, -np.inf)], 3, [1, 0, 2]),
]


@pytest.mark.parametrize("name, rows, k, expected", LEX, ids=[c[0] for c in LEX])
def test_lex_top_k_golden(name, rows, k, expected):
  words = tuple(jnp.asarray([[r[j] for r in rows]], jnp.float32) for j in range(2))
  vals, pos = lex_top_k(words, k)
  np.testing.assert_array_equal(np.asarray(pos)[0], expected, err_msg=name)
  np.testing.assert_array_equal(np.asarray(vals[0])[0], [rows[p][0] for p in expected])


def test_lex_top_k_matches_sorting_random_words():
  rng = np.random.default_rng(0)
  words = tuple(jnp.asarray(rng.integers(0, 3, (20, 50)), jnp.float32) for _ in range(3))
  _, pos = lex_top_k(words, 7)
  w = [np.asarray(x) for x in words]
  for b in range(20):
    want = sorted(range(50), key=lambda i: (-w[0][b, i], -w[1][b, i], -w[2][b, i], i))[:7]
    np.testing.assert_array_equal(np.asarray(pos)[b], want)


def test_lex_max_is_the_maximum_of_python_tuples():
  rng = np.random.default_rng(1)
  words = tuple(jnp.asarray(rng.integers(0, 3, (6, 40)), jnp.float32) for _ in range(3))
  got = np.stack([np.asarray(m) for m in lex_max(words)], axis=-1)
  w = np.stack([np.asarray(x) for x in words], axis=-1)
  for b in range(6):
    np.testing.assert_array_equal(got[b], max(tuple(row) for row in w[b]))


def test_merge_prefers_the_first_list_on_equal_keys():
  vals_a, ids_a = (jnp.asarray([[5.0, 3.0]]),), jnp.asarray([[10, 11]])
  vals_b, ids_b = (jnp.asarray([[5.0, 4.0]]),), jnp.asarray([[2, 3]])
  vals, ids = merge_topk(vals_a, ids_a, vals_b, ids_b, 3)
  np.testing.assert_array_equal(np.asarray(ids), [[10, 2, 3]])
  np.testing.assert_array_equal(np.asarray(vals[0]), [[5.0, 5.0, 4.0]])


def test_to_float_keeps_the_int32_order_and_removes_the_lowest():
  edge = 2**31 - 2**24 - 1  # limbs.ENCODABLE - 1
  ints = np.array([np.iinfo(np.int32).min, -edge, -7, -1, 0, 1, 2**24 + 1, edge], np.int32)
  f = np.asarray(to_float(jnp.asarray(ints)))
  assert f[0] == -np.inf and np.all(np.diff(f[1:]) > 0)
  assert int(lowest(jnp.int32)) == np.iinfo(np.int32).min and float(lowest(jnp.float32)) == -np.inf
  z = np.asarray(to_float(jnp.asarray([-0.0, 0.0], jnp.float32)))
  assert not np.signbit(z).any()  # -0.0 and +0.0 tie under lax.top_k's total order
