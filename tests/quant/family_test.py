"""hq_jax.quant.family: every family through the one interface (decode, bytes, arrays round trip), the legal
pairs, and the storage summary (golden byte counts)."""

import jax.numpy as jnp
import numpy as np
import pytest

from hq_jax.errors import UserError
from hq_jax.quant import family, pq, quantizer
from hq_jax.quant.pq import ProductCodes


def _reps():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((6, 8)).astype(np.float32)
  books = rng.standard_normal((4, 8, 2)).astype(np.float32)
  return [  # name, representation, kind, row bytes, shared bytes, decoded rows (NumPy)
      ("float", x, "float", 6 * 8 * 4, 0, x),
      ("scalar_2bit", quantizer.quantize(x, 2), "scalar", 6 * 2 + 8, 0, None),
      ("layered", quantizer.quantize_layers([x, x], 1), "layered", 2 * (6 + 8), 0, None),
      ("pq_3bit", pq.quantize(jnp.asarray(x), jnp.asarray(books), 3), "pq", 6 * 2, books.nbytes, None),
  ]


@pytest.mark.parametrize("name, rep, kind, row_bytes, shared_bytes, decoded", _reps(), ids=[c[0] for c in _reps()])
def test_one_interface_for_every_family(name, rep, kind, row_bytes, shared_bytes, decoded):
  fam = family.family_of(rep)
  assert fam.kind == kind and family.family_named(kind) is fam
  assert fam.row_bytes(rep) == row_bytes and fam.shared_bytes(rep) == shared_bytes
  assert fam.bits_per_node(rep) == 8 * row_bytes / 6 and fam.shape(rep) == (6, 8 if kind != "layered" else 16)
  rows = np.asarray(fam.dequantize(rep))
  if decoded is not None:
    np.testing.assert_array_equal(rows, decoded)
  elif kind != "pq":
    np.testing.assert_array_equal(rows, np.asarray(rep.dequantize()))
  else:
    picked = [np.asarray(rep.codebooks)[m][np.asarray(rep.codes)[:, m]] for m in range(4)]
    np.testing.assert_array_equal(rows, np.concatenate(picked, axis=1))
  arrays = fam.arrays(rep, "item")
  assert not [k for k in fam.required_keys(arrays, ("item",), "mem") if k not in arrays]
  back = fam.read(arrays, "item", "mem")
  np.testing.assert_array_equal(np.asarray(fam.dequantize(back)), rows)


def test_legal_pairs_and_how_they_rank():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((5, 8)).astype(np.float32)
  books = jnp.asarray(rng.standard_normal((2, 4, 4)), jnp.float32)
  codes = pq.quantize(jnp.asarray(x), books, 2)
  scalar = quantizer.quantize(x, 4)
  assert family.check_pair(x, x).ranking == "float"
  assert family.check_pair(scalar, scalar).ranking == "integer"
  assert family.check_pair(codes, codes).ranking == "float"
  assert family.check_pair(x, codes).kind == "pq"
  for users, items in ((codes, x), (x, scalar), (scalar, codes)):
    with pytest.raises(UserError, match="must be of one kind"):
      family.check_pair(users, items)


def test_storage_counts_codebooks_beside_bits_per_node():
  rng = np.random.default_rng(2)
  books = rng.standard_normal((8, 256, 4)).astype(np.float32)
  users = ProductCodes(codes=jnp.zeros((100, 8), jnp.uint8), codebooks=jnp.asarray(books), bits=8)
  items = ProductCodes(codes=jnp.zeros((300, 8), jnp.uint8), codebooks=jnp.asarray(books), bits=8)
  got = family.storage(users, items)
  assert got == {"representation_bytes": 400 * 8 + books.nbytes, "codebook_bytes": books.nbytes,
                 "bits_per_node": 64.0, "codebook_bits_per_node": 8 * books.nbytes / 400,
                 "user_bits_per_node": 64.0, "item_bits_per_node": 64.0}
  scalar = family.storage(quantizer.quantize(rng.standard_normal((100, 32)), 1),
                          quantizer.quantize(rng.standard_normal((300, 32)), 1))
  assert scalar["codebook_bytes"] == 0 and scalar["representation_bytes"] == 400 * 4 + 2 * 8
