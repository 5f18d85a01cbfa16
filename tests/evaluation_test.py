"""Tests for hq_jax.evaluation: hand-computed golden cases and a plain NumPy reference of the protocol."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import retrieval_ref as ref

from hq_jax import evaluation
from hq_jax.data.interactions import InteractionData, to_csr
from hq_jax.errors import UserError
from hq_jax.quant import quantizer
from hq_jax.quant.pq import ProductCodes
from hq_jax.quant.quantizer import LayeredQuantized, QuantizedMatrix, dequantize


def make_data(train: dict, test: dict, num_users: int, num_items: int) -> InteractionData:
  """InteractionData from {user: [items]} dicts."""

  def csr(pairs):
    users = np.array([u for u, items in pairs.items() for _ in items], np.int64)
    items = np.array([i for its in pairs.values() for i in its], np.int64)
    return to_csr(users, items, num_users, num_items)[0]

  return InteractionData(name="tiny", num_users=num_users, num_items=num_items, train=csr(train),
                         test=csr(test), summary={})


def reference_evaluate(user_emb, item_emb, train: dict, test: dict, ks) -> dict:
  """The LightGCN protocol, written plainly in float64 NumPy, one user at a time."""
  scores = user_emb.astype(np.float64) @ item_emb.astype(np.float64).T
  return reference_evaluate_scores(scores, train, test, ks)


def reference_evaluate_scores(all_scores, train: dict, test: dict, ks) -> dict:
  """The protocol from a (U, I) score matrix (float64, or exact Fractions as an object array)."""
  totals = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
  eval_users = [u for u in range(all_scores.shape[0]) if len(set(test.get(u, ())))]
  for u in eval_users:
    scores = list(all_scores[u])
    train_items = set(train.get(u, ()))
    test_items = set(test[u])
    for i in train_items:
      scores[i] = -np.inf
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))  # by score desc, then item id asc
    for k in ks:
      hits = [1.0 if (i in test_items and i not in train_items) else 0.0 for i in order[:k]]
      dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
      idcg = sum(1.0 / math.log2(r + 2) for r in range(min(len(test_items), k)))
      totals[f"recall@{k}"] += sum(hits) / len(test_items)
      totals[f"ndcg@{k}"] += dcg / idcg
  out = {key: value / len(eval_users) for key, value in totals.items()}
  out["num_eval_users"] = len(eval_users)
  return out


def reference_topk(user_emb, item_emb, train: dict, users, k):
  out = []
  for u in users:
    scores = item_emb.astype(np.float64) @ user_emb[u].astype(np.float64)
    scores[list(set(train.get(u, ())))] = -np.inf
    ranked = np.lexsort((np.arange(len(scores)), -scores))[:k]
    out.append(np.where(np.isneginf(scores[ranked]), -1, ranked))  # -1: fewer than k eligible items
  return np.array(out)


def random_split(rng, num_users, num_items, density):
  train, test = {}, {}
  for u in range(num_users):
    items = np.flatnonzero(rng.random(num_items) < density)
    is_test = rng.random(len(items)) < 0.3
    train[u] = items[~is_test].tolist()
    test[u] = items[is_test].tolist()
  return train, test


def grid_embeddings(rng, n, d, step=0.25):
  """Values on a power-of-two grid: every dot product is exact in float32, so ties are real ties."""
  return (rng.integers(-4, 5, size=(n, d)) * step).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# recall_ndcg_at_k: golden cases
# ----------------------------------------------------------------------------------------------------------

D = [1.0 / math.log2(r + 2) for r in range(5)]  # rank discounts

GOLDEN = [
    # name, ranked items, test items (of 5), ks, expected {metric: value}
    ("all_hits_first", [0, 1, 2, 3, 4], [0, 1], (2, 5),
     {"recall@2": 1.0, "ndcg@2": 1.0, "recall@5": 1.0, "ndcg@5": 1.0}),
    ("no_hits", [0, 1, 2, 3, 4], [], (2,), {"recall@2": 0.0, "ndcg@2": 0.0}),
    ("hit_at_rank_1_of_2", [3, 4, 0, 1, 2], [4, 2], (1, 2, 5),
     {"recall@1": 0.0, "ndcg@1": 0.0,
      "recall@2": 0.5, "ndcg@2": D[1] / (D[0] + D[1]),
      "recall@5": 1.0, "ndcg@5": (D[1] + D[4]) / (D[0] + D[1])}),
    ("more_tests_than_k", [1, 0, 2, 3, 4], [0, 2, 3, 4], (2,),
     {"recall@2": 0.25, "ndcg@2": D[1] / (D[0] + D[1])}),
    ("single_hit_last", [4, 3, 2, 1, 0], [0], (5,), {"recall@5": 1.0, "ndcg@5": D[4] / D[0]}),
]


@pytest.mark.parametrize("name,ranked,test_items,ks,expected", GOLDEN, ids=[g[0] for g in GOLDEN])
def test_recall_ndcg_at_k_golden(name, ranked, test_items, ks, expected):
  del name
  topk = jnp.array([ranked], jnp.int32)
  mask = jnp.zeros((1, 5), bool).at[0, jnp.array(test_items, jnp.int32)].set(True) if test_items else (
      jnp.zeros((1, 5), bool))
  got = jax.jit(evaluation.recall_ndcg_at_k, static_argnames="ks")(topk, mask, ks=ks)
  assert set(got) == set(expected)
  for key, value in expected.items():
    np.testing.assert_allclose(float(got[key][0]), value, rtol=1e-6, err_msg=key)


def test_a_perfect_list_scores_exactly_one():
  # Every user's test items fill the top of its list: NDCG@K is 1.0 exactly (not 1 + 1 ulp), for K below,
  # at and above the number of test items.
  rng = np.random.default_rng(0)
  num_test = rng.integers(1, 60, 64)
  hits = (np.arange(50)[None, :] < num_test[:, None]).astype(np.float32)
  got = evaluation.metrics_from_hits(jnp.asarray(hits), jnp.asarray(num_test), (1, 7, 20, 50))
  for k in (1, 7, 20, 50):
    np.testing.assert_array_equal(np.asarray(got[f"ndcg@{k}"]), 1.0)


def test_recall_ndcg_at_k_explicit_num_test_counts_removed_items():
  # One of three test items was removed from the mask (it is a training item): it still counts in |T_u|.
  topk = jnp.array([[2, 0, 1]], jnp.int32)
  mask = jnp.array([[False, False, True, False]])
  got = jax.jit(evaluation.recall_ndcg_at_k, static_argnames="ks")(topk, mask, ks=(3,),
                                                                  num_test=jnp.array([3]))
  np.testing.assert_allclose(float(got["recall@3"][0]), 1 / 3, rtol=1e-6)
  np.testing.assert_allclose(float(got["ndcg@3"][0]), D[0] / (D[0] + D[1] + D[2]), rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# evaluate: hand-computed cases
# ----------------------------------------------------------------------------------------------------------


def test_evaluate_one_user_five_items_hand_computed():
  # Scores rank items 0 > 1 > 2 > 3 > 4; item 1 is a training item, so the list is 0, 2, 3, 4, (1).
  users = np.array([[1.0]], np.float32)
  items = np.array([[5.0], [4.0], [3.0], [2.0], [1.0]], np.float32)
  data = make_data({0: [1]}, {0: [2, 4]}, 1, 5)
  got = evaluation.evaluate(users, items, data, ks=(1, 2, 4, 5))
  idcg2 = D[0] + D[1]
  expected = {"recall@1": 0.0, "ndcg@1": 0.0,
              "recall@2": 0.5, "ndcg@2": D[1] / idcg2,
              "recall@4": 1.0, "ndcg@4": (D[1] + D[3]) / idcg2,
              "recall@5": 1.0, "ndcg@5": (D[1] + D[3]) / idcg2,
              "num_eval_users": 1}
  assert got.keys() == expected.keys()
  for key, value in expected.items():
    assert got[key] == pytest.approx(value, rel=1e-6), key
  assert all(type(got[k]) is float for k in got if k != "num_eval_users")


def test_default_keys():
  rng = np.random.default_rng(0)
  data = make_data({0: [0]}, {0: [1]}, 1, 60)
  got = evaluation.evaluate(rng.normal(size=(1, 3)), rng.normal(size=(60, 3)), data)
  assert list(got) == ["recall@20", "ndcg@20", "recall@50", "ndcg@50", "num_eval_users"]


def test_users_without_test_items_are_ignored():
  users = np.array([[1.0], [1.0], [-1.0]], np.float32)
  items = np.array([[5.0], [4.0], [3.0], [2.0], [1.0]], np.float32)
  alone = evaluation.evaluate(users[:1], items, make_data({}, {0: [1]}, 1, 5), ks=(1, 2))
  # Users 1 and 2 have training items but no test items: same averages as user 0 alone.
  data = make_data({1: [0], 2: [4, 3]}, {0: [1]}, 3, 5)
  got = evaluation.evaluate(users, items, data, ks=(1, 2))
  assert got["num_eval_users"] == 1
  assert got == pytest.approx(alone)
  assert got["recall@2"] == 1.0 and got["ndcg@2"] == pytest.approx(D[1])


def test_training_items_are_excluded_and_never_hits():
  # Item 0 scores highest but is a training item; it is also (malformed split) a test item: it counts in
  # |T_u| = 2 but is never a hit.
  users = np.array([[1.0]], np.float32)
  items = np.array([[9.0], [1.0], [5.0]], np.float32)
  data = make_data({0: [0]}, {0: [0, 2]}, 1, 3)
  got = evaluation.evaluate(users, items, data, ks=(1, 3))
  assert got["recall@1"] == 0.5 and got["recall@3"] == 0.5
  assert got["ndcg@1"] == pytest.approx(1.0)
  assert got["ndcg@3"] == pytest.approx(D[0] / (D[0] + D[1]))
  # Only two non-training items: the third slot is -1.
  np.testing.assert_array_equal(evaluation.topk_items(users, items, data, [0], 3), [[2, 1, -1]])


def test_ties_go_to_the_lower_item_id():
  scores = jnp.array([[1.0, 3.0, 3.0, 2.0, 3.0]])
  np.testing.assert_array_equal(jax.lax.top_k(scores, 4)[1], [[1, 2, 4, 3]])
  # All items score equally: the ranking is by item id, training items skipped.
  users = np.ones((2, 2), np.float32)
  items = np.ones((6, 2), np.float32)
  data = make_data({0: [0, 2], 1: [5]}, {0: [1], 1: [0]}, 2, 6)
  np.testing.assert_array_equal(evaluation.topk_items(users, items, data, [0, 1], 3), [[1, 3, 4], [0, 1, 2]])
  np.testing.assert_array_equal(evaluation.topk_items(users, items, data, [1], 3), [[0, 1, 2]])


def test_signed_zero_scores_tie():
  # lax.top_k alone ranks +0.0 above -0.0; evaluation treats them as equal scores.
  users = np.array([[1.0]], np.float32)
  items = np.array([[-0.0], [0.0], [-0.0], [1.0], [-1.0]], np.float32)
  data = make_data({}, {0: [0]}, 1, 5)
  np.testing.assert_array_equal(evaluation.topk_items(users, items, data, [0], 5), [[3, 0, 1, 2, 4]])
  assert evaluation.evaluate(users, items, data, ks=(2,))["recall@2"] == 1.0


def test_ties_with_integer_scores_under_jit():
  scores = jnp.array([[5, 7, 7, 5, 7, 1]], jnp.int32)
  np.testing.assert_array_equal(jax.jit(lambda s: jax.lax.top_k(s, 5)[1])(scores), [[1, 2, 4, 0, 3]])


# ----------------------------------------------------------------------------------------------------------
# evaluate and topk_items against the NumPy reference
# ----------------------------------------------------------------------------------------------------------

RANDOM_CASES = [
    # name, seed, num_users, num_items, dim, density, ks, batch_size
    ("one_batch", 0, 17, 40, 4, 0.25, (5, 10), 1024),
    ("padded_last_batch", 1, 23, 31, 3, 0.3, (1, 7, 31), 8),
    ("batch_of_one", 2, 6, 12, 2, 0.4, (3, 12), 1),
    ("many_ties", 3, 30, 50, 1, 0.2, (10, 20), 7),
    ("dense_rows", 4, 9, 15, 5, 0.8, (4, 15), 4),
]


@pytest.mark.parametrize("name,seed,num_users,num_items,dim,density,ks,batch_size", RANDOM_CASES,
                         ids=[c[0] for c in RANDOM_CASES])
def test_evaluate_matches_numpy_reference(name, seed, num_users, num_items, dim, density, ks, batch_size):
  del name
  rng = np.random.default_rng(seed)
  train, test = random_split(rng, num_users, num_items, density)
  data = make_data(train, test, num_users, num_items)
  users = grid_embeddings(rng, num_users, dim)
  items = grid_embeddings(rng, num_items, dim)
  got = evaluation.evaluate(users, items, data, ks=ks, batch_size=batch_size)
  expected = reference_evaluate(users, items, train, test, ks)
  assert got["num_eval_users"] == expected["num_eval_users"]
  assert got == pytest.approx(expected, rel=1e-5, abs=1e-7)
  probe = rng.permutation(num_users)[: max(1, num_users // 2)]
  np.testing.assert_array_equal(evaluation.topk_items(users, items, data, probe, max(ks), batch_size=batch_size),
                                reference_topk(users, items, train, probe, max(ks)))


def test_csr_contains_matches_python_sets():
  rng = np.random.default_rng(5)
  train, _ = random_split(rng, 12, 20, 0.3)
  csr = make_data(train, {}, 12, 20).train
  users = np.array([3, 0, 11, 3, 7])
  items = rng.integers(-1, 20, size=(5, 9))
  got = evaluation.csr_contains(csr, users, items)
  want = [[i >= 0 and i in set(train.get(u, [])) for i in row] for u, row in zip(users, items)]
  np.testing.assert_array_equal(got, want)
  empty = make_data({}, {}, 12, 20).train
  assert not evaluation.csr_contains(empty, users, items).any()


# ----------------------------------------------------------------------------------------------------------
# Quantized representations (needs hq_jax.retrieval.ranking_scores)
# ----------------------------------------------------------------------------------------------------------

QUANTIZED_CASES = [
    # name, bits, scale, offset; powers of two so that dequantized scores are exact (ties are real ties)
    ("sign_1bit", 1, 0.5, 0.0),
    ("uniform_2bit", 2, 0.25, -0.5),
    ("uniform_4bit", 4, 0.125, -1.0),
]


@pytest.mark.parametrize("name,bits,scale,offset", QUANTIZED_CASES, ids=[c[0] for c in QUANTIZED_CASES])
def test_quantized_ranks_like_dequantized_reference(name, bits, scale, offset):
  del name
  retrieval = pytest.importorskip("hq_jax.retrieval", reason="hq_jax.retrieval not written yet")
  if not hasattr(retrieval, "ranking_scores"):
    pytest.skip("hq_jax.retrieval.ranking_scores not written yet")
  rng = np.random.default_rng(7)
  num_users, num_items, dim, ks = 21, 45, 8, (5, 20)
  train, test = random_split(rng, num_users, num_items, 0.25)
  data = make_data(train, test, num_users, num_items)

  def random_qm(n):
    if bits == 1:
      codes = np.where(rng.random((n, dim)) < 0.5, -1, 1).astype(np.int8)
    else:
      codes = rng.integers(0, 2**bits, size=(n, dim)).astype(np.uint8)
    return QuantizedMatrix(codes=jnp.asarray(codes), scale=jnp.float32(scale), offset=jnp.float32(offset),
                           bits=bits)

  user_qm, item_qm = random_qm(num_users), random_qm(num_items)
  got = evaluation.evaluate(user_qm, item_qm, data, ks=ks, batch_size=8)
  user_f, item_f = np.asarray(dequantize(user_qm)), np.asarray(dequantize(item_qm))
  assert got == pytest.approx(reference_evaluate(user_f, item_f, train, test, ks), rel=1e-5, abs=1e-7)


def _codes(rng, n, d, bits):
  if bits == 1:
    return np.where(rng.random((n, d)) < 0.5, -1, 1).astype(np.int8)
  return rng.integers(0, 2**bits, size=(n, d)).astype(np.uint8)


WIDE_CASES = [  # name, bits, d: short-mantissa dyadic scales and offsets, so float64 scores are exact
    ("1bit_d64", 1, 64), ("2bit_d64", 2, 64), ("3bit_d64", 3, 64), ("4bit_d64", 4, 64),
    ("8bit_d64", 8, 64), ("8bit_d300", 8, 300), pytest.param("8bit_d1024", 8, 1024, marks=pytest.mark.slow),
    pytest.param("8bit_d4096", 8, 4096, marks=pytest.mark.slow),  # make test-all only
]


@pytest.mark.parametrize("name,bits,d", WIDE_CASES, ids=[getattr(c, "values", c)[0] for c in WIDE_CASES])
def test_quantized_every_width_and_dim_matches_float64_reference(name, bits, d):
  """8 bits past one exact float32 matmul (d * 255^2 >= 2^24 from d = 259): still the exact ranking."""
  rng = np.random.default_rng(d + bits)
  num_users, num_items, ks = 12, 80, (5, 20)
  train, test = random_split(rng, num_users, num_items, 0.2)
  data = make_data(train, test, num_users, num_items)
  off = (0.0, 0.0) if bits == 1 else (-1741 / 1024, -1434 / 1024)
  user_qm = QuantizedMatrix(_codes(rng, num_users, d, bits), np.float32(13 / 1024), np.float32(off[0]), bits)
  item_qm = QuantizedMatrix(_codes(rng, num_items, d, bits), np.float32(11 / 1024), np.float32(off[1]), bits)
  got = evaluation.evaluate(user_qm, item_qm, data, ks=ks, batch_size=8)
  scores = ref.float64_scores(user_qm, item_qm)
  assert got == pytest.approx(reference_evaluate_scores(scores, train, test, ks), rel=1e-6, abs=1e-9)
  probe = np.arange(num_users)
  want = np.stack([ref.ranked(scores[u], 20, train.get(u, ())) for u in probe])
  np.testing.assert_array_equal(evaluation.topk_items(user_qm, item_qm, data, probe, 20, batch_size=5), want)


def _row_scaled(rng, n, d, scale_bits):
  x = rng.standard_normal((n, d)).astype(np.float32) * rng.uniform(0.3, 3, (n, 1)).astype(np.float32)
  return quantizer.quantize(x, 1, scale=quantizer.sign_scale(jnp.asarray(x), "row"), scale_bits=scale_bits)


NEW_REPS = [
    ("1bit_row_scales_float32", lambda r, n: _row_scaled(r, n, 32, 32)),
    ("1bit_row_scales_8bit", lambda r, n: _row_scaled(r, n, 32, 8)),
    ("layered_row8_bigear", lambda r, n: LayeredQuantized(tuple(_row_scaled(r, n, 16, 8) for _ in range(3)),
                                                          quantizer.layer_weights(3, "bigear"))),
    ("layered_mixed_mean", lambda r, n: LayeredQuantized(
        (_row_scaled(r, n, 16, 32), quantizer.quantize(r.standard_normal((n, 16)), 4)),
        quantizer.layer_weights(2, "mean"))),
]


@pytest.mark.parametrize("name,build", NEW_REPS, ids=[c[0] for c in NEW_REPS])
def test_new_representations_match_exact_reference(name, build):
  rng = np.random.default_rng(len(name))
  num_users, num_items, ks = 7, 60, (5, 20)
  train, test = random_split(rng, num_users, num_items, 0.25)
  data = make_data(train, test, num_users, num_items)
  user_rep, item_rep = build(rng, num_users), build(rng, num_items)
  got = evaluation.evaluate(user_rep, item_rep, data, ks=ks, batch_size=4)
  exact = ref.exact_scores(user_rep, item_rep)
  assert got == pytest.approx(reference_evaluate_scores(exact, train, test, ks), rel=1e-6, abs=1e-9)


def _dyadic_product_codes(rng, n, num_subspaces=4, bits=3, sub_dim=4, books=None):
  """Codewords k / 4 (exact float32 sums, many exact ties)."""
  if books is None:
    books = rng.integers(-4, 5, (num_subspaces, 1 << bits, sub_dim)).astype(np.float32) / 4
  codes = rng.integers(0, 1 << bits, (n, num_subspaces)).astype(np.uint8)
  return ProductCodes(codes=jnp.asarray(codes), codebooks=jnp.asarray(books), bits=bits)


PRODUCT_CODE_PAIRS = [
    ("pq_both_sides", lambda r, nu, ni: (_dyadic_product_codes(r, nu), _dyadic_product_codes(r, ni))),
    ("pq_items_float_users", lambda r, nu, ni: (r.integers(-4, 5, (nu, 16)).astype(np.float32) / 4,
                                                _dyadic_product_codes(r, ni, 8, 8, 2))),
]


@pytest.mark.parametrize("name,build", PRODUCT_CODE_PAIRS, ids=[c[0] for c in PRODUCT_CODE_PAIRS])
def test_product_codes_match_the_decoded_reference_exactly(name, build):
  """Ranked from the codes (their decoded rows), equal to the plain NumPy protocol on the decoded rows
  (exact: dyadic codewords), ties to the lower id, training items excluded; and equal to evaluating the
  decoded float32 matrices themselves."""
  rng = np.random.default_rng(len(name))
  num_users, num_items, ks = 9, 70, (5, 20)
  train, test = random_split(rng, num_users, num_items, 0.25)
  data = make_data(train, test, num_users, num_items)
  user_rep, item_rep = build(rng, num_users, num_items)
  got = evaluation.evaluate(user_rep, item_rep, data, ks=ks, batch_size=4)
  scores = ref.float64_scores(user_rep, item_rep)
  assert len(np.unique(scores)) < scores.size // 3  # exact ties decided by the id
  assert got == pytest.approx(reference_evaluate_scores(scores, train, test, ks), rel=1e-6, abs=1e-9)
  assert got == evaluation.evaluate(ref.float_rows(user_rep), ref.float_rows(item_rep), data, ks=ks, batch_size=4)
  probe = np.arange(num_users)
  want = np.stack([ref.ranked(scores[u], 20, train.get(u, ())) for u in probe])
  np.testing.assert_array_equal(evaluation.topk_items(user_rep, item_rep, data, probe, 20, batch_size=5), want)


def test_product_code_pairs_that_are_not_legal():
  rng = np.random.default_rng(0)
  data = make_data({0: [0]}, {0: [1]}, 2, 6)
  users, items = _dyadic_product_codes(rng, 2), _dyadic_product_codes(rng, 6)
  with pytest.raises(UserError, match="float users with ProductCodes items .*got user ProductCodes, item float"):
    evaluation.evaluate(users, np.ones((6, 16), np.float32), data, ks=(1,))
  with pytest.raises(UserError, match="item representation has 6 rows but dataset 'tiny' has 5 items"):
    evaluation.evaluate(users, items, make_data({0: [0]}, {0: [1]}, 2, 5), ks=(1,))
  bad = ProductCodes(codes=items.codes, codebooks=items.codebooks.at[0, 0, 0].set(jnp.nan), bits=3)
  with pytest.raises(UserError, match="item codebooks contain non-finite values"):
    evaluation.evaluate(users, bad, data, ks=(1,))


# ----------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------

ERROR_CASES = [
    # name, user shape, item shape, ks, message fragment
    ("k_larger_than_items", (2, 3), (5, 3), (2, 6), "K=6 is larger than the number of items (5)"),
    ("k_zero", (2, 3), (5, 3), (0,), "K=0 must be a positive integer"),
    ("no_ks", (2, 3), (5, 3), (), "at least one cutoff"),
    ("user_rows", (3, 3), (5, 3), (2,), "user representation has 3 rows but dataset 'tiny' has 2 users"),
    ("item_rows", (2, 3), (4, 3), (2,), "item representation has 4 rows but dataset 'tiny' has 5 items"),
    ("dims_differ", (2, 3), (5, 4), (2,), "user dim 3 differs from item dim 4"),
    ("one_dimensional", (2,), (5, 3), (2,), "must be 2-D"),
]


@pytest.mark.parametrize("name,user_shape,item_shape,ks,fragment", ERROR_CASES,
                         ids=[c[0] for c in ERROR_CASES])
def test_evaluate_rejects_bad_input(name, user_shape, item_shape, ks, fragment):
  del name
  data = make_data({0: [0]}, {0: [1], 1: [2]}, 2, 5)
  with pytest.raises(UserError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
    evaluation.evaluate(np.ones(user_shape, np.float32), np.ones(item_shape, np.float32), data, ks=ks)


def test_evaluate_rejects_non_finite_and_mixed_kinds():
  data = make_data({0: [0]}, {0: [1]}, 1, 3)
  items = np.ones((3, 2), np.float32)
  with pytest.raises(UserError, match="item embeddings contain non-finite"):
    evaluation.evaluate(np.ones((1, 2), np.float32), np.where(np.eye(3, 2) > 0, np.nan, items), data, ks=(1,))
  qm = QuantizedMatrix(codes=jnp.ones((1, 2), jnp.int8), scale=jnp.float32(1), offset=jnp.float32(0), bits=1)
  with pytest.raises(UserError, match="must be of one kind: both float arrays, both QuantizedMatrix"):
    evaluation.evaluate(qm, items, data, ks=(1,))
  layered = LayeredQuantized((qm,), (1.0,))
  with pytest.raises(UserError, match="got user LayeredQuantized, item QuantizedMatrix"):
    evaluation.evaluate(layered, QuantizedMatrix(jnp.ones((3, 2), jnp.int8), jnp.float32(1), jnp.float32(0), 1), data,
                        ks=(1,))
