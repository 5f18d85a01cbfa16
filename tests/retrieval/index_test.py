"""QuantizedIndex: exact byte counts, file round trip, damage detection."""

import numpy as np
import pytest

from hq_jax.errors import UserError
from hq_jax.quant.quantizer import quantize
from hq_jax.retrieval import packing
from hq_jax.retrieval.index import QuantizedIndex


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
  back = loaded.to_matrix()
  np.testing.assert_array_equal(np.asarray(back.codes), np.asarray(qm.codes))
  np.testing.assert_array_equal(np.asarray(back.dequantize()), np.asarray(qm.dequantize()))


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
