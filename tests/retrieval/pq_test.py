"""Product codes are ranked from their codes exactly as their decoded float32 rows, against plain NumPy
references: exact (dyadic codewords, constructed ties) and within float32 rounding (random codewords)."""

import jax.numpy as jnp
import numpy as np
import pytest
import retrieval_ref as ref

from hq_jax.errors import UserError
from hq_jax.quant import pq
from hq_jax.quant.pq import ProductCodes
from hq_jax.quant.quantizer import quantize
from hq_jax.retrieval import QuantizedIndex, item_mesh, ranking_scores, scoring, sharded_topk, topk


def _dyadic_codes(rng, n, num_subspaces, bits, codebooks):
  return ProductCodes(codes=jnp.asarray(rng.integers(0, 1 << bits, (n, num_subspaces)), jnp.uint8),
                      codebooks=jnp.asarray(codebooks, jnp.float32), bits=bits)


def _dyadic_codebooks(rng, num_subspaces, bits, sub_dim):
  """Codewords k / 4 with |k| <= 6: every float32 partial sum of the inner products is exact, so the float
  path's order is the exact order and many scores tie exactly. Codeword 1 repeats codeword 0 (different
  codes, the same decoded rows: exact ties)."""
  books = rng.integers(-6, 7, (num_subspaces, 1 << bits, sub_dim)).astype(np.float32) / 4
  books[:, 1] = books[:, 0]
  return books


def _exclusions(rng, num_users, num_items):
  lengths = rng.integers(0, 6, num_users)
  indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  indices = np.concatenate([np.sort(rng.choice(num_items, n, replace=False)) for n in lengths]).astype(np.int32)
  return indptr, indices


EXACT = [  # name, M, bits, d, shared codebooks, float users
    ("m4_b3_shared", 4, 3, 16, True, False),
    ("m8_b8_separate", 8, 8, 32, False, False),
    ("m2_b1_separate", 2, 1, 8, False, False),
    ("m16_b4_d16_float_users", 16, 4, 16, False, True),
    ("m4_b5_float_users", 4, 5, 24, False, True),
]


@pytest.mark.parametrize("name, num_subspaces, bits, d, shared, float_users", EXACT, ids=[c[0] for c in EXACT])
def test_dyadic_product_codes_rank_exactly_with_ties_to_the_lower_id(kernel, name, num_subspaces, bits, d, shared,
                                                                     float_users):
  rng = np.random.default_rng(len(name))
  item_books = _dyadic_codebooks(rng, num_subspaces, bits, d // num_subspaces)
  user_books = item_books if shared else _dyadic_codebooks(rng, num_subspaces, bits, d // num_subspaces)
  items = _dyadic_codes(rng, 300, num_subspaces, bits, item_books)
  codes = np.asarray(items.codes).copy()
  codes[7] = codes[250]  # the same codes at two ids
  codes[11, 0] = 0  # items 11 and 12: different codes (codeword 0 vs its copy 1), the same decoded row
  codes[12] = codes[11]
  codes[12, 0] = 1
  items = ProductCodes(codes=jnp.asarray(codes), codebooks=items.codebooks, bits=bits)
  users = (rng.integers(-8, 9, (9, d)).astype(np.float32) / 8 if float_users else
           _dyadic_codes(rng, 9, num_subspaces, bits, user_books))
  scores = ref.float64_scores(users, items)  # exact: dyadic values, small sums
  assert len(np.unique(scores)) < scores.size // 4  # many exact ties
  indptr, indices = _exclusions(rng, 9, 300)
  want = ref.reference_topk(scores, indptr, indices, np.arange(9), 40)
  _, got = topk(users, items, indptr, indices, np.arange(9), 40, block_items=64)
  np.testing.assert_array_equal(got, want)
  keys = ranking_scores(users, items)
  for row in range(9):
    assert ref.key_order(keys[row]) == ref.order(scores[row]), row


@pytest.mark.parametrize("float_users", [False, True])
def test_random_codebooks_rank_like_their_decoded_floats(kernel, float_users):
  """The same rows through the same program: identical to the float32 pair's ranking; against float64, every
  adjacent pair is in order up to float32 rounding of the inner products, and nothing left out beats the
  K-th by more."""
  rng = np.random.default_rng(3 + float_users)
  d, m, bits = 32, 8, 6
  books = rng.standard_normal((m, 1 << bits, d // m)).astype(np.float32)
  items = pq.quantize(jnp.asarray(rng.standard_normal((500, d)), jnp.float32), jnp.asarray(books), bits)
  users = (rng.standard_normal((20, d)).astype(np.float32) if float_users else
           pq.quantize(jnp.asarray(rng.standard_normal((20, d)), jnp.float32), jnp.asarray(books), bits))
  indptr, indices = _exclusions(rng, 20, 500)
  k = 30
  _, got = topk(users, items, indptr, indices, np.arange(20), k, block_items=128)
  u_rows, i_rows = ref.float_rows(users), ref.float_rows(items)
  _, floats = topk(u_rows, i_rows, indptr, indices, np.arange(20), k, block_items=128)
  np.testing.assert_array_equal(got, floats)
  s64 = ref.float64_scores(users, items)
  magnitude = np.abs(u_rows).astype(np.float64) @ np.abs(i_rows).astype(np.float64).T
  tol = 2 * d * 2.0 ** -24 * magnitude  # twice a float32 inner product's rounding bound
  for u in range(20):
    row = got[u]
    excluded = set(indices[indptr[u]:indptr[u + 1]].tolist())
    assert not excluded & set(row.tolist())
    for a, b in zip(row[:-1], row[1:]):
      assert s64[u, a] >= s64[u, b] - tol[u, a] - tol[u, b]
    rest = [i for i in range(500) if i not in excluded and i not in set(row.tolist())]
    best_rest = max(rest, key=lambda i: s64[u, i])
    assert s64[u, row[-1]] >= s64[u, best_rest] - tol[u, row[-1]] - tol[u, best_rest]


def test_index_file_of_product_codes_round_trips_and_searches_the_same(tmp_path):
  rng = np.random.default_rng(9)
  books = _dyadic_codebooks(rng, 8, 4, 4)
  items = _dyadic_codes(rng, 200, 8, 4, books)
  users = _dyadic_codes(rng, 5, 8, 4, books)
  index = QuantizedIndex.from_rep(items)
  assert index.nbytes == 200 * 8 + books.nbytes  # one byte a code, float32 codebooks
  index.save(str(tmp_path / "pq.hqidx"))
  back = QuantizedIndex.load(str(tmp_path / "pq.hqidx")).to_rep()
  assert isinstance(back, ProductCodes) and back.bits == 4
  np.testing.assert_array_equal(np.asarray(back.codes), np.asarray(items.codes))
  np.testing.assert_array_equal(np.asarray(back.codebooks), books)
  indptr, indices = np.zeros(6, np.int64), np.zeros(0, np.int32)
  want = ref.reference_topk(ref.float64_scores(users, items), indptr, indices, np.arange(5), 20)
  _, got = topk(users, back, indptr, indices, np.arange(5), 20, block_items=64)
  np.testing.assert_array_equal(got, want)
  _, sharded = sharded_topk(users, back, indptr, indices, np.arange(5), 20, mesh=item_mesh(1), block_items=64)
  np.testing.assert_array_equal(sharded, want)


@pytest.mark.parametrize("name, damage, message", [
    ("code_too_large", lambda a: {**a, "codes": np.full_like(a["codes"], 200)}, "exceed 4 bits"),
    ("codebooks_wrong_k", lambda a: {**a, "codebooks": a["codebooks"][:, :8]}, "do not match 4 bits"),
])
def test_damaged_product_code_index_is_a_user_error(tmp_path, name, damage, message):
  from hq_jax.retrieval.index import ProductLayer
  rng = np.random.default_rng(1)
  items = _dyadic_codes(rng, 50, 8, 4, _dyadic_codebooks(rng, 8, 4, 4))
  layer = ProductLayer.from_rep(items)
  arrays = damage(layer.arrays())
  bad = QuantizedIndex(layers=(ProductLayer(**arrays, bits=layer.bits, dim=layer.dim),))
  (tmp_path / "bad.hqidx").write_bytes(bad.to_bytes())
  with pytest.raises(UserError, match=message):
    QuantizedIndex.load(str(tmp_path / "bad.hqidx"))


@pytest.mark.parametrize("name, users, items, method, message", [
    ("pq_users_float_items", "pq", "float", "auto", "must be of one kind.*differ: product codes .* vs float"),
    ("float_users_scalar_items", "float", "scalar", "auto", "differ: float vs 4 bits"),
    ("pq_vs_scalar", "pq", "scalar", "auto", "got user ProductCodes, item QuantizedMatrix"),
    ("method_for_pq", "pq", "pq", "hamming", "'hamming' does not apply to product codes"),
    ("dims_differ", "pq", "pq8", "auto", "differ in dimension: 16 vs 8"),
])
def test_illegal_pairs_are_user_errors(name, users, items, method, message):
  rng = np.random.default_rng(0)
  books = _dyadic_codebooks(rng, 4, 3, 4)
  make = {"pq": lambda n: _dyadic_codes(rng, n, 4, 3, books),
          "pq8": lambda n: _dyadic_codes(rng, n, 4, 3, books[:, :, :2]),
          "float": lambda n: rng.standard_normal((n, 16)).astype(np.float32),
          "scalar": lambda n: quantize(rng.standard_normal((n, 16)), 4)}
  with pytest.raises(UserError, match=message):
    scoring.ranking_scores(make[users](3), make[items](10), method)
