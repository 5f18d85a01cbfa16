"""QuantizedIndex: exact byte counts, file round trip (every representation), old files, damage detection."""

import hashlib
import json
import struct

import jax.numpy as jnp
import numpy as np
import pytest
import retrieval_ref as ref

from hq_jax import export
from hq_jax.errors import UserError
from hq_jax.quant import quantizer
from hq_jax.quant.quantizer import LayeredQuantized, QuantizedMatrix, quantize
from hq_jax.retrieval import packing
from hq_jax.retrieval.index import QuantizedIndex
from hq_jax.retrieval.topk import topk


@pytest.mark.parametrize("bits, dim, per_row", [(1, 64, False), (1, 33, True), (2, 17, False), (4, 64, False),
                                                (8, 7, False)])
def test_round_trip_and_nbytes(tmp_path, bits, dim, per_row):
  rng = np.random.default_rng(bits + dim)
  x = rng.standard_normal((101, dim)).astype(np.float32)
  qm = quantize(x, bits, scale=np.abs(x).mean(1, keepdims=True)) if per_row else quantize(x, bits)
  index = QuantizedIndex.from_matrix(qm)
  scalars = 4 * (101 if per_row else 1) + 4
  assert index.nbytes == packing.packed_nbytes(101, dim, bits) + scalars
  size = index.save(str(tmp_path / "i.hqidx"))
  assert size == (tmp_path / "i.hqidx").stat().st_size
  loaded = QuantizedIndex.load(str(tmp_path / "i.hqidx"))
  np.testing.assert_array_equal(loaded.words, index.words)
  assert loaded.scale.shape == np.shape(qm.scale) and loaded.offset.shape == ()
  back = loaded.to_matrix()
  np.testing.assert_array_equal(np.asarray(back.codes), np.asarray(qm.codes))
  np.testing.assert_array_equal(np.asarray(back.dequantize()), np.asarray(qm.dequantize()))


def _row8(x):
  x = jnp.asarray(x, jnp.float32)
  return quantize(x, 1, scale=quantizer.sign_scale(x, "row"), scale_bits=8)


def _assert_same_rep(a, b):
  np.testing.assert_array_equal(np.asarray(a.dequantize()), np.asarray(b.dequantize()))
  assert type(a) is type(b) and a.nbytes_packed() == b.nbytes_packed()


def test_8bit_row_scales_round_trip_and_nbytes(tmp_path):
  qm = _row8(np.random.default_rng(0).standard_normal((101, 64)))
  index = QuantizedIndex.from_rep(qm)
  assert index.nbytes == 101 * 8 + 101 + 8 + 4 == qm.nbytes_packed()  # words, scale codes, min/step, offset
  index.save(str(tmp_path / "i.hqidx"))
  back = QuantizedIndex.load(str(tmp_path / "i.hqidx")).to_rep()
  assert isinstance(back.scale, quantizer.ScaleCodes)
  _assert_same_rep(back, qm)


def test_layered_round_trip(tmp_path):
  rng = np.random.default_rng(1)
  rep = LayeredQuantized((_row8(rng.standard_normal((50, 24))), quantize(rng.standard_normal((50, 16)), 4),
                          quantize(rng.standard_normal((50, 8)), 1)), quantizer.layer_weights(3, "bigear"))
  index = QuantizedIndex.from_rep(rep)
  packed = lambda d, b: packing.packed_nbytes(50, d, b)  # codes in whole uint32 words
  assert index.nbytes == (packed(24, 1) + 50 + 8 + 4) + (packed(16, 4) + 4 + 4) + (packed(8, 1) + 4 + 4)
  index.save(str(tmp_path / "i.hqidx"))
  loaded = QuantizedIndex.load(str(tmp_path / "i.hqidx"))
  assert loaded.weights == rep.weights and len(loaded.layers) == 3
  _assert_same_rep(loaded.to_rep(), rep)
  with pytest.raises(AttributeError, match="use .layers"):
    loaded.words


def _version1_bytes(index: QuantizedIndex) -> bytes:
  """An index file as the first format wrote it (one matrix, version 1 header)."""
  arrays, entries, pos = [], {}, 0
  for name, dtype in (("words", "<u4"), ("scale", "<f4"), ("offset", "<f4")):
    a = np.ascontiguousarray(getattr(index, name), dtype=dtype)
    entries[name] = {"dtype": dtype, "shape": list(a.shape), "offset": pos, "nbytes": a.nbytes}
    arrays.append(a.tobytes())
    pos += a.nbytes
  header = json.dumps({"bits": index.bits, "dim": index.dim, "num_items": index.num_items, "arrays": entries},
                      sort_keys=True).encode()
  body = b"HQJAXIDX" + struct.pack("<II", 1, len(header)) + header + b"".join(arrays)
  return body + hashlib.sha256(body).digest()


def test_version_1_files_still_load(tmp_path):
  qm = quantize(np.random.default_rng(2).standard_normal((40, 33)), 2)
  (tmp_path / "old.hqidx").write_bytes(_version1_bytes(QuantizedIndex.from_rep(qm)))
  loaded = QuantizedIndex.load(str(tmp_path / "old.hqidx"))
  assert loaded.scale.shape == () and loaded.offset.shape == ()  # version 1 stored them as (1,)
  _assert_same_rep(loaded.to_rep(), qm)


def test_version_2_files_still_load(tmp_path):
  """Version 2 headers had no layer "kind": every layer is packed scalar codes."""
  rep = quantizer.quantize_layers([np.random.default_rng(3).standard_normal((40, 16))] * 2, 1, scale_mode="row",
                                  scale_bits=8)
  data = QuantizedIndex.from_rep(rep).to_bytes()
  fixed = 8 + 8
  _, header_len = struct.unpack("<II", data[8:fixed])
  header = json.loads(data[fixed:fixed + header_len])
  for layer in header["layers"]:
    assert layer.pop("kind") == "scalar"
  new_header = json.dumps(header, sort_keys=True).encode()
  body = b"HQJAXIDX" + struct.pack("<II", 2, len(new_header)) + new_header + data[fixed + header_len:-32]
  (tmp_path / "v2.hqidx").write_bytes(body + hashlib.sha256(body).digest())
  _assert_same_rep(QuantizedIndex.load(str(tmp_path / "v2.hqidx")).to_rep(), rep)


def test_from_export(tmp_path):
  rng = np.random.default_rng(0)
  u, i = quantize(rng.standard_normal((3, 64)), 1), quantize(rng.standard_normal((40981, 64)), 1)
  np.savez(tmp_path / "e.npz", bits=np.int64(1), user_codes=u.codes, item_codes=i.codes, user_scale=u.scale,
           user_offset=u.offset, item_scale=i.scale, item_offset=i.offset)
  index = QuantizedIndex.from_export(str(tmp_path / "e.npz"))
  assert index.nbytes == 40981 * 8 + 8  # 2 words per item, scale and offset
  np.savez(tmp_path / "f.npz", user_embeddings=np.ones((2, 3)), item_embeddings=np.ones((4, 3)))
  with pytest.raises(UserError, match="no codes to index"):
    QuantizedIndex.from_export(str(tmp_path / "f.npz"))
  layered = quantizer.quantize_layers([rng.standard_normal((30, 8))] * 2, 1, scale_mode="row", scale_bits=8)
  export.save_export(str(tmp_path / "l.npz"), layered, layered)
  _assert_same_rep(QuantizedIndex.from_export(str(tmp_path / "l.npz")).to_rep(), layered)


@pytest.mark.parametrize("name, damage, message", [
    ("flipped_payload_bit", lambda b: b[:200] + bytes([b[200] ^ 1]) + b[201:], "checksum mismatch"),
    ("truncated", lambda b: b[:-5], "checksum mismatch"),
    ("wrong_magic", lambda b: b"NOTANIDX" + b[8:], "not a QuantizedIndex file"),
    ("too_short", lambda b: b[:10], "not a QuantizedIndex file"),
])
def test_damaged_files(tmp_path, name, damage, message):
  index = QuantizedIndex.from_matrix(quantize(np.random.default_rng(1).standard_normal((50, 16)), 4))
  path = tmp_path / "i.hqidx"
  path.write_bytes(damage(index.to_bytes()))
  with pytest.raises(UserError, match=message):
    QuantizedIndex.load(str(path))


def test_search_from_index_is_the_exact_ranking(tmp_path):
  """8-bit codes past one exact float32 matmul, stored in an index file and searched from it, rank exactly like
  their float64 dequantized scores (short-mantissa dyadic scales: the reference is exact)."""
  rng = np.random.default_rng(5)
  users = QuantizedMatrix(rng.integers(0, 256, (6, 1100)).astype(np.uint8), np.float32(13 / 1024),
                          np.float32(-1741 / 1024), 8)
  items = QuantizedMatrix(rng.integers(0, 256, (300, 1100)).astype(np.uint8), np.float32(11 / 1024),
                          np.float32(-1434 / 1024), 8)
  QuantizedIndex.from_rep(items).save(str(tmp_path / "i.hqidx"))
  stored = QuantizedIndex.load(str(tmp_path / "i.hqidx")).to_rep()
  indptr, indices = np.zeros(7, np.int64), np.zeros(0, np.int32)
  _, got = topk(users, stored, indptr, indices, np.arange(6), 20, block_items=128)
  want = ref.reference_topk(ref.float64_scores(users, items), indptr, indices, np.arange(6), 20)
  np.testing.assert_array_equal(got, want)
