"""hq_jax.export: every layout round-trips, old files load, writes are atomic, and every kind of bad file is
one UserError line naming the file and the key (the tests of the two former readers, merged)."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from hq_jax import evaluation
from hq_jax import export
from hq_jax.errors import UserError
from hq_jax.quant import family, pq, quantizer
from hq_jax.quant.pq import ProductCodes
from hq_jax.quant.quantizer import LayeredQuantized, QuantizedMatrix, quantize


def _legacy_arrays(bits, n_users=4, n_items=6, d=5):
  """A quantized export as the trainer wrote it before format_version existed."""
  rng = np.random.default_rng(bits)
  u, i = quantize(rng.standard_normal((n_users, d)), bits), quantize(rng.standard_normal((n_items, d)), bits)
  return {"bits": np.int32(bits), "user_codes": np.asarray(u.codes), "item_codes": np.asarray(i.codes),
          "user_scale": np.asarray(u.scale), "user_offset": np.asarray(u.offset),
          "item_scale": np.asarray(i.scale), "item_offset": np.asarray(i.offset)}


def _row(x, scale_bits):
  x = jnp.asarray(x, jnp.float32)
  return quantize(x, 1, scale=quantizer.sign_scale(x, "row"), scale_bits=scale_bits)


def _layered(rng, n, scheme="mean"):
  return LayeredQuantized((_row(rng.standard_normal((n, 8)), 8), quantize(rng.standard_normal((n, 8)), 4),
                           quantize(rng.standard_normal((n, 16)), 1), _row(rng.standard_normal((n, 8)), 32)),
                          quantizer.layer_weights(4, scheme))


def _load(tmp_path, arrays, name="e.npz"):
  path = tmp_path / name
  np.savez(path, **arrays)
  return export.load_export(str(path))


# ----------------------------------------------------------------------------------------------------------
# Layouts that load
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_loads_version_1_quantized(tmp_path, bits):
  arrays = _legacy_arrays(bits)
  users, items = _load(tmp_path, arrays)
  assert isinstance(users, QuantizedMatrix) and users.bits == bits and items.bits == bits
  np.testing.assert_array_equal(np.asarray(items.codes), arrays["item_codes"])
  assert items.codes.dtype == (np.int8 if bits == 1 else np.uint8)
  assert float(items.scale) == float(arrays["item_scale"])


def test_loads_version_1_float_and_converts_to_float32(tmp_path):
  users, items = _load(tmp_path, {"user_embeddings": np.ones((3, 4), np.float64),
                                  "item_embeddings": np.zeros((7, 4), np.float32)})
  assert users.dtype == np.float32 and users.shape == (3, 4) and items.shape == (7, 4)


def test_loads_version_1_row_scales(tmp_path):
  rng = np.random.default_rng(0)
  u, i = _row(rng.standard_normal((3, 9)), 32), _row(rng.standard_normal((5, 9)), 32)
  users, items = _load(tmp_path, {"bits": np.int32(1), "user_codes": u.codes, "item_codes": i.codes,
                                  "user_scale": u.scale, "user_offset": u.offset, "item_scale": i.scale,
                                  "item_offset": i.offset})
  assert items.scale.shape == (5, 1)
  np.testing.assert_array_equal(np.asarray(items.dequantize()), np.asarray(i.dequantize()))


def _pq(rng, n, num_subspaces=4, bits=3, d=12, books=None):
  if books is None:
    books = rng.standard_normal((num_subspaces, 1 << bits, d // num_subspaces)).astype(np.float32)
  return pq.quantize(jnp.asarray(rng.standard_normal((n, d)), jnp.float32), jnp.asarray(books), bits)


def _round_trip_cases():
  rng = np.random.default_rng(7)
  x = lambda n, d=12: rng.standard_normal((n, d)).astype(np.float32)
  cases = [("float", x(4), x(9))]
  shared = rng.standard_normal((6, 256, 2)).astype(np.float32)
  cases += [("pq_separate", _pq(rng, 4), _pq(rng, 9)), ("pq_shared_8bit", _pq(rng, 4, 6, 8, books=shared),
                                                         _pq(rng, 9, 6, 8, books=shared)),
            ("pq_m_differs_5bit", _pq(rng, 4, 2, 5), _pq(rng, 9, 6, 5)), ("pq_float_users", x(4), _pq(rng, 9, 3, 1))]
  cases += [(f"{b}bit", quantize(x(4), b), quantize(x(9), b)) for b in quantizer.SUPPORTED_BITS]
  cases += [("1bit_row_float32", _row(x(4), 32), _row(x(9), 32)), ("1bit_row_8bit", _row(x(4), 8), _row(x(9), 8)),
            ("layered_mean", _layered(rng, 4), _layered(rng, 9)),
            ("layered_bigear", _layered(rng, 4, "bigear"), _layered(rng, 9, "bigear"))]
  return cases


ROUND_TRIPS = _round_trip_cases()


@pytest.mark.parametrize("name, users, items", ROUND_TRIPS, ids=[c[0] for c in ROUND_TRIPS])
def test_save_load_round_trip(tmp_path, name, users, items):
  path = str(tmp_path / "export.npz")
  export.save_export(path, users, items)
  assert sorted(os.listdir(tmp_path)) == ["export.npz"]  # no temporary file left behind
  assert int(np.load(path)["format_version"]) == export.FORMAT_VERSION
  got_u, got_i = export.load_export(path)
  for got, want in ((got_u, users), (got_i, items)):
    assert type(got) is type(want), name
    if isinstance(want, np.ndarray):
      np.testing.assert_array_equal(got, want)
      continue
    np.testing.assert_array_equal(np.asarray(got.dequantize()), np.asarray(want.dequantize()))
    assert got.nbytes_packed() == want.nbytes_packed()
    if isinstance(want, ProductCodes):
      np.testing.assert_array_equal(np.asarray(got.codes), np.asarray(want.codes))
      assert got.codes.dtype == np.uint8 and got.codebooks.dtype == np.float32 and got.bits == want.bits
    if isinstance(want, LayeredQuantized):
      assert got.weights == want.weights
      assert [q.scale_bits for q in got.layers] == [q.scale_bits for q in want.layers]


def test_product_code_keys_and_shared_codebooks_stored_once(tmp_path):
  rng = np.random.default_rng(2)
  books = rng.standard_normal((4, 16, 3)).astype(np.float32)
  users, items = _pq(rng, 5, 4, 4, books=books), _pq(rng, 7, 4, 4, books=books)
  export.save_export(str(tmp_path / "s.npz"), users, items)
  z = np.load(tmp_path / "s.npz")
  assert str(z["kind"]) == "pq" and int(z["format_version"]) == 3 and int(z["bits"]) == 4
  assert z["user_codes"].dtype == np.uint8 and z["item_codes"].shape == (7, 4)
  assert z["codebooks"].shape == (4, 16, 3) and "item_codebooks" not in z.files
  stored = family.storage(users, items)
  assert stored["codebook_bytes"] == books.nbytes  # once, shared
  assert stored["representation_bytes"] == 12 * 2 + books.nbytes  # 4 codes of 4 bits: 2 bytes a row
  assert stored["bits_per_node"] == 16.0 and stored["codebook_bits_per_node"] == 8 * books.nbytes / 12
  other = _pq(rng, 7, 4, 4)
  export.save_export(str(tmp_path / "p.npz"), users, other)
  z = np.load(tmp_path / "p.npz")
  assert z["user_codebooks"].shape == z["item_codebooks"].shape == (4, 16, 3) and "codebooks" not in z.files
  assert family.storage(users, other)["codebook_bytes"] == 2 * books.nbytes


def test_float_users_with_product_code_items(tmp_path):
  rng = np.random.default_rng(3)
  users, items = rng.standard_normal((5, 12)).astype(np.float32), _pq(rng, 8, 6, 8)
  export.save_export(str(tmp_path / "m.npz"), users, items)
  z = np.load(tmp_path / "m.npz")
  assert str(z["kind"]) == "pq" and "user_codes" not in z.files and z["user_embeddings"].dtype == np.float32
  stored = family.storage(users, items)
  assert stored["user_bits_per_node"] == 32 * 12 and stored["item_bits_per_node"] == 6 * 8
  assert stored["bits_per_node"] == (5 * 32 * 12 + 8 * 6 * 8) / 13
  with pytest.raises(UserError, match="float users with ProductCodes items"):
    export.save_export(str(tmp_path / "x.npz"), items, users)  # coded users, float items: not a layout


def test_scalar_export_records_its_kind(tmp_path):
  rng = np.random.default_rng(4)
  export.save_export(str(tmp_path / "q.npz"), quantize(rng.standard_normal((3, 5)), 2),
                     quantize(rng.standard_normal((4, 5)), 2))
  assert str(np.load(tmp_path / "q.npz")["kind"]) == "scalar"


def test_8bit_row_scale_keys(tmp_path):
  rng = np.random.default_rng(1)
  u, i = _row(rng.standard_normal((3, 16)), 8), _row(rng.standard_normal((5, 16)), 8)
  export.save_export(str(tmp_path / "e.npz"), u, i)
  z = np.load(tmp_path / "e.npz")
  assert z["item_scale_codes"].dtype == np.uint8 and z["item_scale_codes"].shape == (5, 1)
  assert z["item_scale_min"].dtype == np.float32 and z["item_scale_step"].shape == ()
  assert "item_scale" not in z.files


def test_write_is_atomic(tmp_path, monkeypatch):
  path = str(tmp_path / "export.npz")
  export.save_export(path, np.ones((2, 3), np.float32), np.ones((4, 3), np.float32))
  before = open(path, "rb").read()

  def broken_savez(f, **arrays):
    f.write(b"half a file")
    raise OSError("disk full")

  monkeypatch.setattr(np, "savez", broken_savez)
  with pytest.raises(OSError, match="disk full"):
    export.save_export(path, np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float32))
  assert open(path, "rb").read() == before and sorted(os.listdir(tmp_path)) == ["export.npz"]


def test_save_rejects_invalid_representations_and_writes_nothing(tmp_path):
  bad = QuantizedMatrix(np.ones((2, 3), np.int8), np.float32(-1.0), np.float32(0), 1)
  with pytest.raises(UserError, match=r"user_scale must be positive"):
    export.save_export(str(tmp_path / "e.npz"), bad, bad)
  assert os.listdir(tmp_path) == []


def test_evaluation_load_embeddings_is_this_reader(tmp_path):
  np.savez(tmp_path / "q.npz", **_legacy_arrays(2))
  a, b = evaluation.load_embeddings(str(tmp_path / "q.npz"))
  c, d = export.load_export(str(tmp_path / "q.npz"))
  np.testing.assert_array_equal(a.codes, c.codes)
  np.testing.assert_array_equal(b.dequantize(), d.dequantize())


# ----------------------------------------------------------------------------------------------------------
# Bad files: one UserError line that starts with the path and names the key
# ----------------------------------------------------------------------------------------------------------


def _drop(key):
  return lambda a: {k: v for k, v in a.items() if k != key}


def _set(key, value):
  return lambda a: {**a, key: value}


def _layered_arrays():
  rng = np.random.default_rng(3)
  return export.export_arrays(_layered(rng, 4), _layered(rng, 6))


def _pq_arrays(shared=False, float_users=False):
  rng = np.random.default_rng(5)
  books = rng.standard_normal((4, 8, 2)).astype(np.float32)
  users = rng.standard_normal((4, 8)).astype(np.float32) if float_users else _pq(rng, 4, 4, 3, 8, books)
  return export.export_arrays(users, _pq(rng, 6, 4, 3, 8, books if shared else None))


def _row8_arrays():
  rng = np.random.default_rng(4)
  return export.export_arrays(_row(rng.standard_normal((4, 5)), 8), _row(rng.standard_normal((6, 5)), 8))


BAD = [  # name, arrays builder, message fragment (a regex)
    ("missing_item_scale", lambda: _drop("item_scale")(_legacy_arrays(2)), "missing key\\(s\\) item_scale"),
    ("quantized_missing_keys", lambda: {"bits": np.int32(1), "user_codes": np.ones((2, 2), np.int8)},
     "quantized export is missing key\\(s\\) item_codes, user_scale, user_offset, item_scale, item_offset"),
    ("float_missing_item_key", lambda: {"user_embeddings": np.ones((2, 2))},
     "float export is missing key\\(s\\) item_embeddings"),
    ("neither_layout", lambda: {"something": np.ones(3)}, "neither a quantized export"),
    ("bits_not_integer", lambda: _set("bits", np.float32(1.0))(_legacy_arrays(1)), "'bits' must be one integer"),
    ("unsupported_bits", lambda: _set("bits", np.int64(5))(_legacy_arrays(2)), "unsupported bits=5"),
    ("codes_not_matrix", lambda: _set("user_codes", np.zeros(5, np.uint8))(_legacy_arrays(2)),
     "user_codes must be a non-empty \\(n, d\\)"),
    ("codes_empty", lambda: _set("user_codes", np.zeros((0, 5), np.uint8))(_legacy_arrays(2)),
     "user_codes must be a non-empty"),
    ("codes_float_dtype", lambda: _set("item_codes", np.zeros((6, 5), np.float32))(_legacy_arrays(2)),
     "item_codes must be integers, got dtype float32"),
    ("code_out_of_range", lambda: _set("item_codes", np.full((6, 5), 9, np.uint8))(_legacy_arrays(2)),
     "item_codes of 2-bit codes must lie in \\[0, 3\\]"),
    ("one_bit_code_zero", lambda: _set("user_codes", np.zeros((4, 5), np.int8))(_legacy_arrays(1)),
     "user_codes of 1-bit codes must be -1 or \\+1"),
    ("vector_scale_for_2_bits", lambda: _set("user_scale", np.ones(3, np.float32))(_legacy_arrays(2)),
     "user_scale must have shape \\(\\) for 2-bit codes"),
    ("row_scale_wrong_rows", lambda: _set("item_scale", np.ones((5, 1), np.float32))(_legacy_arrays(1)),
     "item_scale must have shape \\(\\) or \\(6, 1\\)"),
    ("scale_int_dtype", lambda: _set("user_scale", np.int32(1))(_legacy_arrays(4)), "user_scale must be floats"),
    ("scale_zero", lambda: _set("item_scale", np.float32(0))(_legacy_arrays(4)), "item_scale must be positive"),
    ("scale_negative_row", lambda: _set("item_scale", -np.ones((6, 1), np.float32))(_legacy_arrays(1)),
     "item_scale must be positive"),
    ("scale_inf", lambda: _set("user_scale", np.float32(np.inf))(_legacy_arrays(8)), "user_scale must be positive"),
    ("offset_nan", lambda: _set("item_offset", np.float32(np.nan))(_legacy_arrays(8)), "item_offset is not finite"),
    ("offset_not_scalar", lambda: _set("item_offset", np.zeros(2, np.float32))(_legacy_arrays(8)),
     "item_offset must be a scalar"),
    ("one_bit_offset", lambda: _set("user_offset", np.float32(0.5))(_legacy_arrays(1)),
     "user_offset of 1-bit codes must be 0"),
    ("dims_differ", lambda: _set("item_codes", np.zeros((6, 4), np.uint8))(_legacy_arrays(2)),
     "user and item dimensions differ \\(5 vs 4\\)"),
    ("embeddings_nan", lambda: {"user_embeddings": np.full((2, 2), np.nan), "item_embeddings": np.ones((3, 2))},
     "user_embeddings contains NaN or infinite values"),
    ("embeddings_int", lambda: {"user_embeddings": np.ones((2, 2), np.int32), "item_embeddings": np.ones((3, 2))},
     "user_embeddings must be floats"),
    ("embeddings_dims_differ", lambda: {"user_embeddings": np.ones((2, 2)), "item_embeddings": np.ones((3, 4))},
     "dimensions differ"),
    ("pickled_object_array", lambda: {"user_embeddings": np.array([{"a": 1}], dtype=object),
                                      "item_embeddings": np.ones((3, 2))}, "key 'user_embeddings' is not a plain"),
    ("unknown_format_version", lambda: _set("format_version", np.int32(9))(_legacy_arrays(2)),
     "format_version 9 is not supported"),
    ("scale_codes_wrong_shape", lambda: _set("item_scale_codes", np.ones((6, 2), np.uint8))(_row8_arrays()),
     "item_scale_codes must have shape \\(6, 1\\)"),
    ("scale_codes_out_of_range", lambda: _set("item_scale_codes", np.full((6, 1), 300, np.int32))(_row8_arrays()),
     "item_scale_codes must lie in \\[0, 255\\]"),
    ("scale_step_not_power_of_two", lambda: _set("user_scale_step", np.float32(0.3))(_row8_arrays()),
     "user_scale_step must be a positive power of two"),
    ("scale_min_not_multiple", lambda: _set("user_scale_min", np.float32(0.1234567))(_row8_arrays()),
     "user_scale_min must be an integer multiple of user_scale_step"),
    ("scale_codes_zero_scale", lambda: _set("user_scale_min", np.float32(0))(
        _set("user_scale_codes", np.zeros((4, 1), np.uint8))(_row8_arrays())), "every scale must be > 0"),
    ("scale_codes_missing_step", lambda: _drop("item_scale_step")(_row8_arrays()),
     "missing key\\(s\\) item_scale_step"),
    ("layered_missing_layer_key", lambda: _drop("item_codes_2")(_layered_arrays()),
     "layer-wise export is missing key\\(s\\) item_codes_2"),
    ("layered_weights_negative", lambda: _set("layer_weights", np.asarray([1.0, -1, 1, 1]))(_layered_arrays()),
     "layer_weights must be positive"),
    ("layered_weights_shape", lambda: _set("layer_weights", np.ones(3))(_layered_arrays()),
     "layer_weights must have shape \\(4,\\)"),
    ("layered_bits", lambda: _set("bits_1", np.int32(6))(_layered_arrays()), "unsupported bits_1=6"),
    ("layered_rows_differ", lambda: _set("user_codes_1", np.zeros((3, 8), np.uint8))(_layered_arrays()),
     "user_codes_k of the layers differ in rows"),
    ("layers_without_version", lambda: _drop("format_version")(_layered_arrays()),
     "'layers' needs format_version 2"),
    ("v3_without_kind", lambda: _drop("kind")(_layered_arrays()), "format_version 3 needs the key 'kind'"),
    ("unknown_kind", lambda: _set("kind", np.asarray("opq"))(_pq_arrays()), "'kind' must be one of"),
    ("kind_not_a_string", lambda: _set("kind", np.int32(3))(_pq_arrays()), "'kind' must be one of"),
    ("pq_missing_codebooks", lambda: _drop("item_codebooks")(_pq_arrays()),
     "product-code export is missing key\\(s\\) item_codebooks"),
    ("pq_float_users_missing_codes", lambda: _drop("item_codes")(_pq_arrays(float_users=True)),
     "float-user product-code export is missing key\\(s\\) item_codes"),
    ("pq_bits_9", lambda: _set("bits", np.int32(9))(_pq_arrays()), "unsupported bits=9 for product codes"),
    ("pq_code_out_of_range", lambda: _set("user_codes", np.full((4, 4), 8, np.uint8))(_pq_arrays()),
     "user_codes of 3-bit product codes must lie in \\[0, 7\\], found 8..8"),
    ("pq_codes_negative", lambda: _set("item_codes", -np.ones((6, 4), np.int16))(_pq_arrays()),
     "item_codes of 3-bit product codes must lie in \\[0, 7\\]"),
    ("pq_codes_float", lambda: _set("item_codes", np.zeros((6, 4), np.float32))(_pq_arrays()),
     "item_codes must be integers, got dtype float32"),
    ("pq_codebooks_wrong_k", lambda: _set("item_codebooks", np.zeros((4, 4, 2), np.float32))(_pq_arrays()),
     "item_codebooks must have shape \\(M, 2\\^bits = 8, d / M\\), got \\(4, 4, 2\\)"),
    ("pq_codebooks_2d", lambda: _set("item_codebooks", np.zeros((4, 8), np.float32))(_pq_arrays()),
     "item_codebooks must have shape"),
    ("pq_codebooks_nan", lambda: _set("codebooks", np.full((4, 8, 2), np.nan, np.float32))(_pq_arrays(shared=True)),
     "codebooks contains NaN or infinite values"),
    ("pq_codebooks_int", lambda: _set("user_codebooks", np.zeros((4, 8, 2), np.int32))(_pq_arrays()),
     "user_codebooks must be floats"),
    ("pq_codes_vs_subspaces", lambda: _set("item_codes", np.zeros((6, 3), np.uint8))(_pq_arrays()),
     "item_codes has 3 columns but item_codebooks has M = 4 subspaces"),
    ("pq_dims_differ", lambda: _set("user_codebooks", np.zeros((4, 8, 3), np.float32))(_pq_arrays()),
     "user and item dimensions differ \\(12 vs 8\\)"),
    ("pq_float_users_dims_differ", lambda: _set("user_embeddings", np.ones((4, 5), np.float32))(
        _pq_arrays(float_users=True)), "user and item dimensions differ \\(5 vs 8\\)"),
    ("pq_shared_and_own_codebooks", lambda: _set("user_codebooks", np.zeros((4, 8, 2), np.float32))(
        _pq_arrays(shared=True)), "both codebooks \\(shared\\) and user_codebooks"),
    ("scalar_with_float_users", lambda: _set("user_embeddings", np.ones((4, 5), np.float32))(
        export.export_arrays(quantize(np.ones((4, 5)), 2), quantize(np.ones((6, 5)), 2))),
     "user_embeddings \\(float users\\) go with kind 'pq' only"),
]


@pytest.mark.parametrize("name, build, message", BAD, ids=[c[0] for c in BAD])
def test_bad_files(tmp_path, name, build, message):
  path = tmp_path / f"{name}.npz"
  np.savez(path, **build())
  with pytest.raises(UserError, match=message) as e:
    export.load_export(str(path))
  assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)


@pytest.mark.parametrize("name, content, message", [
    ("not_a_zip", b"not a zip at all", "not a readable .npz file"),
    ("empty", b"", "empty file, not an .npz export"),
    ("truncated_zip", None, "not a readable .npz file"),
    ("npy_not_npz", "npy", "a single .npy array"),
])
def test_unreadable_files(tmp_path, name, content, message):
  path = tmp_path / f"{name}.npz"
  if content is None:
    np.savez(path, **_legacy_arrays(2))
    path.write_bytes(path.read_bytes()[:150])
  elif content == "npy":
    with open(path, "wb") as f:
      np.save(f, np.ones(3))
  else:
    path.write_bytes(content)
  with pytest.raises(UserError, match=message) as e:
    export.load_export(str(path))
  assert str(e.value).startswith(f"{path}: ")
  with pytest.raises(UserError, match="export file not found"):
    export.load_export(str(tmp_path / "absent.npz"))
