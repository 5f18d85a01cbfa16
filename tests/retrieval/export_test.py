"""The export loader: both layouts, and one UserError per kind of bad file."""

import numpy as np
import pytest

from hq_jax.errors import UserError
from hq_jax.quant.quantizer import QuantizedMatrix, quantize
from hq_jax.retrieval.export import load_export


def _quantized_arrays(bits, n_users=4, n_items=6, d=5):
  rng = np.random.default_rng(bits)
  u, i = quantize(rng.standard_normal((n_users, d)), bits), quantize(rng.standard_normal((n_items, d)), bits)
  return {"bits": np.int64(bits), "user_codes": np.asarray(u.codes), "item_codes": np.asarray(i.codes),
          "user_scale": np.asarray(u.scale), "user_offset": np.asarray(u.offset),
          "item_scale": np.asarray(i.scale), "item_offset": np.asarray(i.offset)}


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_loads_quantized(tmp_path, bits):
  arrays = _quantized_arrays(bits)
  np.savez(tmp_path / "export.npz", **arrays)
  users, items = load_export(str(tmp_path / "export.npz"))
  assert isinstance(users, QuantizedMatrix) and users.bits == bits and items.bits == bits
  np.testing.assert_array_equal(np.asarray(items.codes), arrays["item_codes"])
  assert float(items.scale) == float(arrays["item_scale"])


def test_loads_float(tmp_path):
  u, i = np.ones((3, 4), np.float64), np.zeros((7, 4), np.float32)
  np.savez(tmp_path / "e.npz", user_embeddings=u, item_embeddings=i)
  users, items = load_export(str(tmp_path / "e.npz"))
  assert users.dtype == np.float32 and users.shape == (3, 4) and items.shape == (7, 4)


def _drop(key):
  return lambda a: {k: v for k, v in a.items() if k != key}


def _set(key, value):
  return lambda a: {**a, key: value}


@pytest.mark.parametrize("name, edit, message", [
    ("missing_item_scale", _drop("item_scale"), "missing key 'item_scale'"),
    ("codes_not_matrix", _set("user_codes", np.zeros(5, np.uint8)), r"user_codes must be a non-empty \(n, d\)"),
    ("unsupported_bits", _set("bits", np.int64(5)), "unsupported bits=5"),
    ("code_out_of_range", _set("item_codes", np.full((6, 5), 9, np.uint8)), r"must lie in \[0, 3\]"),
    ("vector_scale", _set("user_scale", np.ones(3, np.float32)), "must be scalars for 2 bits"),
    ("dims_differ", _set("item_codes", np.zeros((6, 4), np.uint8)), "dimensions differ"),
])
def test_bad_quantized_exports(tmp_path, name, edit, message):
  np.savez(tmp_path / "e.npz", **edit(_quantized_arrays(2)))
  with pytest.raises(UserError, match=message):
    load_export(str(tmp_path / "e.npz"))


def test_missing_and_damaged_files(tmp_path):
  with pytest.raises(UserError, match="not found"):
    load_export(str(tmp_path / "nope.npz"))
  (tmp_path / "bad.npz").write_bytes(b"not a zip at all")
  with pytest.raises(UserError, match="not a readable .npz"):
    load_export(str(tmp_path / "bad.npz"))
  np.savez(tmp_path / "other.npz", something=np.ones(3))
  with pytest.raises(UserError, match="neither a quantized export"):
    load_export(str(tmp_path / "other.npz"))
