"""Blocked top-K equals a NumPy reference on the dequantized embeddings (ties by item id), under both searches
(`kernel`: the JAX search and the compiled kernel, tests/retrieval/conftest.py)."""

import jax.numpy as jnp
import numpy as np
import pytest
import retrieval_ref as ref

from hq_jax.errors import UserError
from hq_jax.quant import quantizer
from hq_jax.quant.quantizer import LayeredQuantized, QuantizedMatrix
from hq_jax.retrieval.topk import GROUP, TILE, block_size, exclusion_pairs, tile_size, topk

NU, NI, D, K = 37, 1000, 19, 8


def _exclusions(rng, nu, ni, max_len):
  lens = rng.integers(0, max_len, nu)
  lens[0] = ni - 3  # one user with only 3 eligible items: -1 padding in the result
  indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
  indices = np.concatenate([np.sort(rng.choice(ni, n, replace=False)) for n in lens]).astype(np.int32)
  return indptr, indices


def _rep(rng, n, bits, scale, offset, per_row=False, d=D):
  if bits == 0:  # small dyadic floats: the float32 matmul is exact, ties are real ties
    return (rng.integers(-4, 5, (n, d)) / 4).astype(np.float32)
  if bits == 1:
    codes = jnp.asarray(rng.choice([-1, 1], (n, d)), jnp.int8)
    s = rng.choice([0.25, 0.5, 0.75], (n, 1)) if per_row else scale
    return QuantizedMatrix(codes, jnp.asarray(s, jnp.float32), jnp.float32(0), 1)
  codes = jnp.asarray(rng.integers(0, 1 << bits, (n, d)), jnp.uint8)
  return QuantizedMatrix(codes, jnp.float32(scale), jnp.float32(offset), bits)


CASES = [  # name, bits, method, user (scale, offset), item (scale, offset), per-row item scale
    ("float", 0, "float", None, None, False),
    ("1bit_hamming", 1, "hamming", (0.5, 0), (0.25, 0), False),
    ("1bit_sign_matmul", 1, "sign_matmul", (0.5, 0), (0.25, 0), False),
    ("1bit_sign_int8", 1, "int8", (0.5, 0), (0.25, 0), False),
    ("1bit_hamming_row_scale", 1, "hamming", (0.5, 0), (0.25, 0), True),
    ("2bit", 2, "int_matmul", (0.125, -0.25), (0.25, -0.375), False),
    ("4bit_int8", 4, "int8", (0.0625, -0.4375), (0.03125, -0.25), False),
    ("8bit_int8", 8, "int8", (2.0**-7, -1.0), (2.0**-6, -2.0), False),
    ("8bit_matmul", 8, "int_matmul", (2.0**-7, -1.0), (2.0**-6, -2.0), False),
]


@pytest.mark.parametrize("name, bits, method, u, i, per_row", CASES, ids=[c[0] for c in CASES])
def test_matches_reference(kernel, name, bits, method, u, i, per_row):
  rng = np.random.default_rng(len(name))
  users = _rep(rng, NU, bits, *(u or (0, 0)))
  items = _rep(rng, NI, bits, *(i or (0, 0)), per_row=per_row)
  indptr, indices = _exclusions(rng, NU, NI, 60)
  query = np.array([5, 0, 3, 36, 3, 17, 9])  # a repeated user, unsorted
  # Small blocks and batches: several blocks (with a padded last one) and a padded last user batch.
  scores, items_out = topk(users, items, indptr, indices, query, K, block_items=96, batch_users=4,
                                    method=method)
  want = ref.reference_topk(ref.dyadic_scores(users, items), indptr, indices, query, K)
  np.testing.assert_array_equal(items_out, want)
  assert np.isneginf(scores[items_out == -1]).all() and np.isfinite(scores[items_out >= 0]).all()
  assert (scores[:, 1:] <= scores[:, :-1]).all()
  assert (items_out[1, 3:] == -1).all()  # user 0 has 3 eligible items


TILED = [c for c in CASES if c[0] in ("float", "1bit_sign_int8", "2bit", "8bit_int8")]


@pytest.mark.parametrize("name, bits, method, u, i, per_row", TILED, ids=[c[0] for c in TILED])
def test_matches_reference_over_tiles(kernel, name, bits, method, u, i, per_row):
  """Blocks of several tiles (matmul kinds score a block tile by tile), the last block and tile padded."""
  rng = np.random.default_rng(len(name))
  num_items = 5000
  users = _rep(rng, NU, bits, *(u or (0, 0)))
  items = _rep(rng, num_items, bits, *(i or (0, 0)), per_row=per_row)
  indptr, indices = _exclusions(rng, NU, num_items, 400)
  query = np.array([0, 7, 36, 2])
  _, items_out = topk(users, items, indptr, indices, query, K, block_items=4160, batch_users=4, method=method)
  want = ref.reference_topk(ref.dyadic_scores(users, items), indptr, indices, query, K)
  np.testing.assert_array_equal(items_out, want)


@pytest.mark.parametrize("num_items, block_items", [(40981, 65536), (5000, 4160), (100, 64), (10**6, 65536)])
def test_block_is_whole_tiles(num_items, block_items):
  wanted = min(block_items, -(-num_items // GROUP) * GROUP)  # before rounding up to whole tiles
  for kind in ("float", "int8", "matmul"):
    block = block_size(num_items, block_items, kind)
    tile = tile_size(block, kind)
    assert block % tile == 0 and tile % GROUP == 0 and tile <= TILE
    assert wanted <= block < wanted + GROUP * (block // tile)  # at most one group of padding per tile
  hamming = block_size(num_items, block_items, "hamming")
  assert hamming == wanted and tile_size(hamming, "hamming") == hamming


def test_all_ties_come_in_id_order(kernel):
  users = np.ones((2, 4), np.float32)
  items = np.zeros((300, 4), np.float32)
  indptr, indices = np.array([0, 2, 2]), np.array([1, 40], np.int32)
  _, out = topk(users, items, indptr, indices, np.array([0, 1]), 5, block_items=64)
  np.testing.assert_array_equal(out, [[0, 2, 3, 4, 5], [0, 1, 2, 3, 4]])


@pytest.mark.parametrize("name, k, users, message", [
    ("k_too_large", 11, [0], "k=11 must be between 1 and the number of items"),
    ("k_zero", 0, [0], "k=0"),
    ("user_out_of_range", 3, [0, 2], r"user ids must lie in \[0, 2\)"),
])
def test_user_errors(name, k, users, message):
  x = np.ones((2, 3), np.float32)
  with pytest.raises(UserError, match=message):
    topk(x, np.ones((10, 3), np.float32), np.zeros(3, np.int64), np.zeros(0, np.int32),
                  np.array(users), k)


WIDE = [  # name, bits, d, method, user (scale, offset), item (scale, offset): short-mantissa dyadic values
    ("8bit_d64", 8, 64, "auto", (13 / 1024, -1741 / 1024), (11 / 1024, -1434 / 1024)),
    ("8bit_d300", 8, 300, "auto", (13 / 1024, -1741 / 1024), (11 / 1024, -1434 / 1024)),
    pytest.param("8bit_d1024_int8", 8, 1024, "auto", (13 / 1024, -1741 / 1024), (11 / 1024, -1434 / 1024),
                 marks=pytest.mark.slow),
    pytest.param("8bit_d4096_int8", 8, 4096, "auto", (13 / 1024, -1741 / 1024), (11 / 1024, -1434 / 1024),
                 marks=pytest.mark.slow),
    ("8bit_d4096_int_matmul_chunks", 8, 4096, "int_matmul", (13 / 1024, -1741 / 1024), (11 / 1024, -1434 / 1024)),
    ("3bit_d64", 3, 64, "auto", (0.375, -1.25), (0.625, -0.5)),
    ("2bit_d300", 2, 300, "auto", (0.375, -1.25), (0.625, -0.5)),
]


@pytest.mark.parametrize("name, bits, d, method, u, i", WIDE, ids=[getattr(c, "values", c)[0] for c in WIDE])
def test_wide_codes_match_float64_reference(kernel, name, bits, d, method, u, i):
  """8 bits up to d = 4096 (past one exact float32 matmul) and other widths: the exact top-K, exclusions on."""
  rng = np.random.default_rng(len(name) + d)
  users = _rep(rng, 9, bits, *u, d=d)
  items = _rep(rng, 700, bits, *i, d=d)
  items = QuantizedMatrix(items.codes.at[600].set(items.codes[100]), items.scale, items.offset, bits)  # a tie
  indptr, indices = _exclusions(rng, 9, 700, 50)
  query = np.arange(9)
  _, items_out = topk(users, items, indptr, indices, query, K, block_items=256, batch_users=4, method=method)
  want = ref.reference_topk(ref.float64_scores(users, items), indptr, indices, query, K)
  np.testing.assert_array_equal(items_out, want)


def _row_scaled(rng, n, d, scale_bits):
  x = jnp.asarray(rng.standard_normal((n, d)) * rng.uniform(0.2, 3.0, (n, 1)), jnp.float32)
  return quantizer.quantize(x, 1, scale=quantizer.sign_scale(x, "row"), scale_bits=scale_bits)


NEW_REPS = [  # name, builder(rng) -> (users, items)
    pytest.param("1bit_row_scales_float32", lambda r: (_row_scaled(r, 9, 40, 32), _row_scaled(r, 700, 40, 32)),
                 id="1bit_row_scales_float32"),
    pytest.param("1bit_row_scales_8bit", lambda r: (_row_scaled(r, 9, 40, 8), _row_scaled(r, 700, 40, 8)),
                 id="1bit_row_scales_8bit"),
    pytest.param("layered_1bit_row8_bigear", lambda r: tuple(
        LayeredQuantized(tuple(_row_scaled(r, n, 24, 8) for _ in range(3)), quantizer.layer_weights(3, "bigear"))
        for n in (9, 700)), id="layered_1bit_row8_bigear"),
    # make test-all only (25 s): tests/evaluation_test.py keeps a smaller mixed-width layered case in make test
    pytest.param("layered_mixed_mean", lambda r: tuple(
        LayeredQuantized((_row_scaled(r, n, 16, 8), quantizer.quantize(r.standard_normal((n, 16)), 4),
                          quantizer.quantize(r.standard_normal((n, 32)), 8)), quantizer.layer_weights(3, "mean"))
        for n in (9, 700)), marks=pytest.mark.slow, id="layered_mixed_mean"),
]


@pytest.mark.parametrize("name, build", NEW_REPS)
def test_new_representations_match_exact_reference(kernel, name, build):
  """Per-row scales (float32, 8-bit) and layer-wise codes: the exact rational top-K, exclusions on."""
  rng = np.random.default_rng(len(name))
  users, items = build(rng)
  indptr, indices = _exclusions(rng, 9, 700, 50)
  query = np.array([3, 0, 8, 3])
  scores, items_out = topk(users, items, indptr, indices, query, K, block_items=256, batch_users=3)
  exact = ref.exact_scores(jax_take(users, query), items)
  want = np.stack([ref.ranked(exact[r], K, indices[indptr[u]:indptr[u + 1]]) for r, u in enumerate(query)])
  np.testing.assert_array_equal(items_out, want)
  assert (scores[:, 1:] <= scores[:, :-1]).all()


def jax_take(rep, rows):
  """The rows of a quantized rep (per-row scales follow their rows)."""
  take = lambda v: v if np.ndim(v) == 0 else jnp.asarray(v)[rows]
  if isinstance(rep, LayeredQuantized):
    return LayeredQuantized(tuple(jax_take(q, rows) for q in rep.layers), rep.weights)
  scale = rep.scale
  if isinstance(scale, quantizer.ScaleCodes):
    scale = quantizer.ScaleCodes(jnp.asarray(scale.codes)[rows], scale.minimum, scale.step)
  else:
    scale = take(scale)
  return QuantizedMatrix(jnp.asarray(rep.codes)[rows], scale, rep.offset, rep.bits)


def test_exclusion_pairs_pad_to_power_of_two():
  rows, cols = exclusion_pairs(np.array([0, 2, 2, 5]), np.array([1, 4, 0, 2, 3], np.int32),
                                        np.array([2, 0]), batch=2, min_size=4)
  np.testing.assert_array_equal(rows, [0, 0, 0, 1, 1, 2, 2, 2])
  np.testing.assert_array_equal(cols[:5], [0, 2, 3, 1, 4])
