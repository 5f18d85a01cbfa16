"""Ranking keys order like the dequantized inner products (exact rationals / dyadic float64 references)."""

import jax.numpy as jnp
import numpy as np
import pytest
import retrieval_ref as ref

from hq_jax.errors import UserError
from hq_jax.quant.quantizer import QuantizedMatrix, quantize
from hq_jax.retrieval import scoring


def _order(row) -> list[int]:
  return sorted(range(len(row)), key=lambda i: (-row[i], i))


def _dyadic(rng, n, d, bits, scale, offset):
  if bits == 1:
    codes = jnp.asarray(rng.choice([-1, 1], (n, d)), jnp.int8)
  else:
    codes = jnp.asarray(rng.integers(0, 1 << bits, (n, d)), jnp.uint8)
  return QuantizedMatrix(codes, jnp.asarray(scale, jnp.float32), jnp.float32(offset), bits)


CASES = [  # name, bits, method, user (scale, offset), item (scale, offset)
    ("1bit_hamming", 1, "hamming", (0.5, 0.0), (0.25, 0.0)),
    ("1bit_sign_matmul", 1, "sign_matmul", (0.5, 0.0), (0.25, 0.0)),
    ("2bit_int_matmul", 2, "int_matmul", (0.125, -0.25), (0.25, -0.375)),
    ("2bit_int8", 2, "int8", (0.125, -0.25), (0.25, -0.375)),
    ("4bit_int_matmul", 4, "int_matmul", (0.0625, -0.4375), (0.03125, -0.25)),
    ("4bit_int8", 4, "int8", (0.0625, -0.4375), (0.03125, -0.25)),
    ("8bit_int8", 8, "int8", (2.0**-7, -1.0), (2.0**-6, -2.0)),
    ("8bit_float", 8, "float", (2.0**-7, -1.0), (2.0**-6, -2.0)),
]


@pytest.mark.parametrize("name, bits, method, u, i", CASES, ids=[c[0] for c in CASES])
def test_order_matches_dyadic_reference(name, bits, method, u, i):
  rng = np.random.default_rng(len(name))
  users = _dyadic(rng, 6, 13, bits, *u)
  items = _dyadic(rng, 300, 13, bits, *i)
  keys = np.asarray(scoring.ranking_scores(users, items, method))
  want = ref.dyadic_scores(users, items)
  for row in range(6):
    assert _order(keys[row]) == _order(want[row]), (name, row)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_order_matches_exact_rationals_for_real_quantizers(bits):
  """Scales from `quantize` are not dyadic: compare with the exact rational inner products."""
  rng = np.random.default_rng(bits)
  users = quantize(rng.standard_normal((3, 8)).astype(np.float32) + 0.3, bits)
  items = quantize(rng.standard_normal((150, 8)).astype(np.float32), bits)
  table = scoring.prepare_items(items, users, "int_matmul")
  assert table.exact, "the 24-bit key must suffice at d = 8"
  keys = np.asarray(scoring.ranking_scores(users, items))
  xu, xi = ref.exact_dequantized(users), ref.exact_dequantized(items)
  for row in range(3):
    exact = [sum(a * b for a, b in zip(xu[row], item)) for item in xi]
    assert _order(keys[row]) == _order(exact)


def test_1bit_keys_are_d_minus_twice_hamming():
  rng = np.random.default_rng(0)
  users, items = quantize(rng.standard_normal((4, 70)), 1), quantize(rng.standard_normal((9, 70)), 1)
  keys = np.asarray(scoring.ranking_scores(users, items, "hamming"))
  cu, ci = np.asarray(users.codes, np.int64), np.asarray(items.codes, np.int64)
  hamming = (cu[:, None, :] != ci[None, :, :]).sum(-1)
  np.testing.assert_array_equal(keys, 70 - 2 * hamming)


def test_8bit_at_d64_falls_back_to_inexact_key():
  rng = np.random.default_rng(0)
  x = quantize(rng.standard_normal((50, 64)), 8)
  assert not scoring.prepare_items(x, x).exact
  assert scoring.prepare_items(quantize(rng.standard_normal((50, 64)), 2), quantize(x.dequantize(), 2)).exact


@pytest.mark.parametrize("name, users, items, method, message", [
    ("bits_differ", lambda r: quantize(r, 1), lambda r: quantize(r, 2), "auto", "differ: 1 vs 2 bits"),
    ("float_vs_codes", lambda r: r, lambda r: quantize(r, 4), "auto", "differ: float vs 4 bits"),
    ("method_for_bits", lambda r: quantize(r, 4), lambda r: quantize(r, 4), "hamming", "does not apply"),
])
def test_user_errors(name, users, items, method, message):
  x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
  with pytest.raises(UserError, match=message):
    scoring.ranking_scores(users(x), items(x), method)
