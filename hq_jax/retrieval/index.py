"""`QuantizedIndex`: the items of a training export, packed, with a checksummed file format.

What it stores is exactly what a search needs to read: the packed item codes (uint32 words, see
`packing`) and the item scale and offset. `nbytes` is that byte count; the file adds a small header.

File format (little-endian, no pickle):
  magic b"HQJAXIDX" | version u32 | header length u32 | header (UTF-8 JSON: bits, dim, num_items, and for
  each array its dtype, shape, byte offset and length in the payload) | payload (the raw arrays, in header
  order) | SHA-256 of everything before it (32 bytes).
A file whose digest does not match, or that is truncated or malformed, raises a `UserError` naming it.
"""

import dataclasses
import hashlib
import json
import os
import struct

import jax.numpy as jnp
import numpy as np

from hq_jax.errors import UserError
from hq_jax.quant.quantizer import QuantizedMatrix
from hq_jax.retrieval import export as export_lib
from hq_jax.retrieval import packing

MAGIC = b"HQJAXIDX"
VERSION = 1
_ARRAYS = ("words", "scale", "offset")
_DTYPES = {"words": "<u4", "scale": "<f4", "offset": "<f4"}


@dataclasses.dataclass(frozen=True)
class QuantizedIndex:
  """Packed item codes of one quantized item matrix.

  Invariant: `unpack_codes(words, bits, dim)` are the item codes and `offset + scale * codes` the
  dequantized items, as in `QuantizedMatrix`.
  """

  words: np.ndarray  # (num_items, words_per_row(dim, bits)) uint32
  scale: np.ndarray  # () or (num_items, 1) float32
  offset: np.ndarray  # () float32
  bits: int
  dim: int

  @property
  def num_items(self) -> int:
    return int(self.words.shape[0])

  @property
  def nbytes(self) -> int:
    """Exact bytes stored: packed codes plus the float32 scale and offset."""
    return int(self.words.nbytes + self.scale.nbytes + self.offset.nbytes)

  @classmethod
  def from_matrix(cls, qm: QuantizedMatrix) -> "QuantizedIndex":
    words = np.asarray(packing.pack_codes(jnp.asarray(qm.codes), qm.bits))
    return cls(words=words, scale=np.asarray(qm.scale, np.float32), offset=np.asarray(qm.offset, np.float32),
               bits=qm.bits, dim=int(qm.codes.shape[1]))

  @classmethod
  def from_export(cls, path: str) -> "QuantizedIndex":
    """Indexes the item side of a quantized training export."""
    _, items = export_lib.load_export(path)
    if not isinstance(items, QuantizedMatrix):
      raise UserError(f"{path}: a full-precision export has no codes to index (expected key 'bits')")
    return cls.from_matrix(items)

  def to_matrix(self) -> QuantizedMatrix:
    codes = packing.unpack_codes(jnp.asarray(self.words), self.bits, self.dim)
    return QuantizedMatrix(codes=codes, scale=jnp.asarray(self.scale), offset=jnp.asarray(self.offset),
                           bits=self.bits)

  # --------------------------------------------------------------------------------------------------------
  # Files
  # --------------------------------------------------------------------------------------------------------

  def to_bytes(self) -> bytes:
    arrays, entries, pos = [], {}, 0
    for name in _ARRAYS:
      a = np.ascontiguousarray(getattr(self, name), dtype=_DTYPES[name])
      entries[name] = {"dtype": _DTYPES[name], "shape": list(a.shape), "offset": pos, "nbytes": a.nbytes}
      arrays.append(a.tobytes())
      pos += a.nbytes
    header = json.dumps({"bits": self.bits, "dim": self.dim, "num_items": self.num_items,
                         "arrays": entries}, sort_keys=True).encode()
    body = MAGIC + struct.pack("<II", VERSION, len(header)) + header + b"".join(arrays)
    return body + hashlib.sha256(body).digest()

  def save(self, path: str) -> int:
    """Writes the index (atomically: a temporary file, then a rename); returns the file size in bytes."""
    data = self.to_bytes()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
    return len(data)

  @classmethod
  def from_bytes(cls, data: bytes, where: str = "<bytes>") -> "QuantizedIndex":
    fixed = len(MAGIC) + 8
    if len(data) < fixed + 32 or data[:len(MAGIC)] != MAGIC:
      raise UserError(f"{where}: not a QuantizedIndex file (bad magic or too short)")
    body, digest = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != digest:
      raise UserError(f"{where}: checksum mismatch: the index file is damaged")
    version, header_len = struct.unpack("<II", data[len(MAGIC):fixed])
    if version != VERSION:
      raise UserError(f"{where}: index format version {version} is not supported (expected {VERSION})")
    try:
      header = json.loads(body[fixed:fixed + header_len].decode())
      payload = body[fixed + header_len:]
      out = {}
      for name in _ARRAYS:
        e = header["arrays"][name]
        if e["dtype"] != _DTYPES[name] or e["offset"] + e["nbytes"] > len(payload):
          raise ValueError(f"array {name} out of bounds or of the wrong type")
        out[name] = np.frombuffer(payload, _DTYPES[name], count=int(np.prod(e["shape"], dtype=np.int64)),
                                  offset=e["offset"]).reshape(e["shape"]).copy()
      index = cls(bits=int(header["bits"]), dim=int(header["dim"]), **out)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
      raise UserError(f"{where}: malformed index header ({e})") from None
    if index.words.shape != (int(header["num_items"]), packing.words_per_row(index.dim, index.bits)):
      raise UserError(f"{where}: packed codes of shape {index.words.shape} do not match the header")
    return index

  @classmethod
  def load(cls, path: str) -> "QuantizedIndex":
    if not os.path.isfile(path):
      raise UserError(f"{path}: index file not found")
    with open(path, "rb") as f:
      return cls.from_bytes(f.read(), path)
