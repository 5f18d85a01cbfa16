"""`QuantizedIndex`: the items of a training export, packed, with a checksummed file format.

What it stores is exactly what a search needs to read: per layer (one for a `QuantizedMatrix`, K + 1 for
`LayeredQuantized` codes) the packed item codes (uint32 words, see `packing`), the item scale (float32, or
the uint8 codes, minimum and step of `ScaleCodes`) and the item offset, plus the layer weights; for
`ProductCodes`, one layer of the uint8 codes (n, M) (one byte a code, whatever the bits: b = 8 is the
packed size) and the float32 codebooks (M, 2^b, d / M). `nbytes` is that byte count; the file adds a small
header. Which layers a representation has is chosen by its family (`hq_jax.quant.family`), and searching
the index's `to_rep()` ranks it as its family ranks (`hq_jax.retrieval.scoring`).

File format (little-endian, no pickle):
  magic b"HQJAXIDX" | version u32 | header length u32 | header (UTF-8 JSON) | payload (the raw arrays, in
  header order) | SHA-256 of everything before it (32 bytes).
  Version 3 header: {"num_items": n, "weights": [w_0, ...] or null (one matrix), "layers": [{"kind", "bits",
  "dim", "arrays": {name: {"dtype", "shape", "offset", "nbytes"}}}, ...]}; a "scalar" layer's arrays are
  `words` (<u4), `offset` (<f4), and `scale` (<f4) or `scale_codes` (|u1), `scale_min` and `scale_step`
  (<f4); a "pq" layer's are `codes` (|u1, (n, M)) and `codebooks` (<f4, (M, 2^bits, dim / M)); array
  offsets count from the start of the payload.
  Version 2 (still read): the same without "kind" (every layer "scalar").
  Version 1 (still read): {"bits", "dim", "num_items", "arrays": {"words", "scale", "offset"}}, one matrix
  (its scalars were stored with shape (1,)).
A file whose digest does not match, or that is truncated or malformed, raises a `UserError` naming it.
"""

import dataclasses
import hashlib
import json
import os
import struct

import jax.numpy as jnp
import numpy as np

from hq_jax import export as export_lib
from hq_jax import strict_json
from hq_jax.errors import UserError
from hq_jax.quant import family as family_lib
from hq_jax.quant.pq import ProductCodes
from hq_jax.quant.quantizer import LayeredQuantized, QuantizedMatrix, ScaleCodes
from hq_jax.retrieval import packing

MAGIC = b"HQJAXIDX"
VERSION = 3
_SCALARS = ("offset", "scale", "scale_min", "scale_step")
_DTYPES = {"words": "<u4", "scale": "<f4", "offset": "<f4", "scale_codes": "|u1", "scale_min": "<f4",
           "scale_step": "<f4", "codes": "|u1", "codebooks": "<f4"}


@dataclasses.dataclass(frozen=True)
class PackedLayer:
  """Packed codes of one item matrix.

  Invariant: `unpack_codes(words, bits, dim)` are the codes and `offset + scale * codes` the dequantized
  rows, as in `QuantizedMatrix` (scale: `scale`, or `scale_min + scale_step * scale_codes`).
  """

  words: np.ndarray  # (num_items, words_per_row(dim, bits)) uint32
  offset: np.ndarray  # () float32
  bits: int
  dim: int
  scale: np.ndarray | None = None  # () or (num_items, 1) float32
  scale_codes: np.ndarray | None = None  # (num_items, 1) uint8
  scale_min: np.ndarray | None = None  # () float32
  scale_step: np.ndarray | None = None  # () float32
  kind = "scalar"

  @property
  def num_rows(self) -> int:
    return int(self.words.shape[0])

  def check(self, num_items: int) -> str | None:
    """What is wrong with the stored arrays (None: nothing)."""
    if self.words.shape != (num_items, packing.words_per_row(self.dim, self.bits)):
      return f"packed codes of shape {self.words.shape} do not match the header"
    return None

  def arrays(self) -> dict[str, np.ndarray]:
    names = ("words", "offset") + (("scale",) if self.scale is not None else
                                   ("scale_codes", "scale_min", "scale_step"))
    return {name: getattr(self, name) for name in names}

  @property
  def nbytes(self) -> int:
    return int(sum(a.nbytes for a in self.arrays().values()))

  @classmethod
  def from_matrix(cls, qm: QuantizedMatrix) -> "PackedLayer":
    words = np.asarray(packing.pack_codes(jnp.asarray(qm.codes), qm.bits))
    common = dict(words=words, offset=np.asarray(qm.offset, np.float32), bits=qm.bits, dim=int(qm.codes.shape[1]))
    if isinstance(qm.scale, ScaleCodes):
      return cls(**common, scale_codes=np.asarray(qm.scale.codes, np.uint8),
                 scale_min=np.asarray(qm.scale.minimum, np.float32), scale_step=np.asarray(qm.scale.step, np.float32))
    return cls(**common, scale=np.asarray(qm.scale, np.float32))

  def to_matrix(self) -> QuantizedMatrix:
    codes = packing.unpack_codes(jnp.asarray(self.words), self.bits, self.dim)
    if self.scale is not None:
      scale = jnp.asarray(self.scale)
    else:
      scale = ScaleCodes(codes=jnp.asarray(self.scale_codes), minimum=jnp.asarray(self.scale_min),
                         step=jnp.asarray(self.scale_step))
    return QuantizedMatrix(codes=codes, scale=scale, offset=jnp.asarray(self.offset), bits=self.bits)

  to_rep = to_matrix


@dataclasses.dataclass(frozen=True)
class ProductLayer:
  """Product codes of one item matrix.

  Invariant: `ProductCodes(codes, codebooks, bits)` is the item representation: row r decodes to the
  concatenation over m of codebooks[m, codes[r, m]].
  """

  codes: np.ndarray  # (num_items, M) uint8, < 2^bits
  codebooks: np.ndarray  # (M, 2^bits, dim / M) float32
  bits: int
  dim: int
  kind = "pq"

  @property
  def num_rows(self) -> int:
    return int(self.codes.shape[0])

  def arrays(self) -> dict[str, np.ndarray]:
    return {"codes": self.codes, "codebooks": self.codebooks}

  @property
  def nbytes(self) -> int:
    return int(self.codes.nbytes + self.codebooks.nbytes)

  def check(self, num_items: int) -> str | None:
    """What is wrong with the stored arrays (None: nothing)."""
    m = self.codebooks.shape[0] if self.codebooks.ndim == 3 else -1
    if self.codebooks.ndim != 3 or self.codebooks.shape[1] != 1 << self.bits or m * self.codebooks.shape[2] != self.dim:
      return f"codebooks of shape {self.codebooks.shape} do not match {self.bits} bits and dim {self.dim}"
    if self.codes.shape != (num_items, m):
      return f"product codes of shape {self.codes.shape} do not match the header"
    if self.codes.size and int(self.codes.max()) >= 1 << self.bits:
      return f"product codes exceed {self.bits} bits"
    if not np.isfinite(self.codebooks).all():
      return "codebooks contain NaN or infinite values"
    return None

  @classmethod
  def from_rep(cls, pc: ProductCodes) -> "ProductLayer":
    codebooks = np.asarray(pc.codebooks, np.float32)
    return cls(codes=np.asarray(pc.codes).astype(np.uint8), codebooks=codebooks, bits=pc.bits,
               dim=int(codebooks.shape[0] * codebooks.shape[2]))

  def to_rep(self) -> ProductCodes:
    return ProductCodes(codes=jnp.asarray(self.codes), codebooks=jnp.asarray(self.codebooks), bits=self.bits)


_LAYER_TYPES = {"scalar": PackedLayer, "pq": ProductLayer}  # a file layer's "kind" -> its class
_BUILDERS = {  # a representation's family (`hq_jax.quant.family`) -> (index layers, weights or None)
    "scalar": lambda rep: ((PackedLayer.from_matrix(rep),), None),
    "layered": lambda rep: (tuple(PackedLayer.from_matrix(q) for q in rep.layers), tuple(rep.weights)),
    "pq": lambda rep: ((ProductLayer.from_rep(rep),), None),
}


@dataclasses.dataclass(frozen=True)
class QuantizedIndex:
  """Item codes of one coded item representation: one `PackedLayer` (a `QuantizedMatrix`) or `ProductLayer`
  (`ProductCodes`), or several `PackedLayer`s with weights (`LayeredQuantized`)."""

  layers: tuple[PackedLayer | ProductLayer, ...]
  weights: tuple[float, ...] | None = None  # None: a single matrix

  @property
  def num_items(self) -> int:
    return self.layers[0].num_rows

  @property
  def nbytes(self) -> int:
    """Exact bytes stored: packed codes plus the scales and offsets of every layer (product codes: codes
    and codebooks)."""
    return sum(layer.nbytes for layer in self.layers)

  # One-matrix shorthands.
  def _single(self) -> PackedLayer:
    if self.weights is not None:
      raise AttributeError("a layer-wise index has one PackedLayer per layer: use .layers")
    return self.layers[0]

  words = property(lambda self: self._single().words)
  scale = property(lambda self: self._single().scale)
  offset = property(lambda self: self._single().offset)
  bits = property(lambda self: self._single().bits)
  dim = property(lambda self: self._single().dim)

  @classmethod
  def from_rep(cls, rep: QuantizedMatrix | LayeredQuantized | ProductCodes) -> "QuantizedIndex":
    kind = family_lib.family_of(rep).kind
    if kind not in _BUILDERS:
      raise UserError(f"{kind} embeddings have no codes to index")
    layers, weights = _BUILDERS[kind](rep)
    return cls(layers=layers, weights=weights)

  from_matrix = from_rep

  @classmethod
  def from_export(cls, path: str) -> "QuantizedIndex":
    """Indexes the item side of a quantized training export (`hq_jax.export.load_export`)."""
    _, items = export_lib.load_export(path)
    if family_lib.family_of(items).kind not in _BUILDERS:
      raise UserError(f"{path}: a full-precision export has no codes to index (expected key 'bits' or 'layers', "
                      "or kind 'pq')")
    return cls.from_rep(items)

  def to_rep(self) -> QuantizedMatrix | LayeredQuantized | ProductCodes:
    """The item representation, ready for `hq_jax.retrieval.topk` (ranked as its family ranks)."""
    if self.weights is None:
      return self.layers[0].to_rep()
    return LayeredQuantized(layers=tuple(layer.to_rep() for layer in self.layers), weights=self.weights)

  to_matrix = to_rep

  # --------------------------------------------------------------------------------------------------------
  # Files
  # --------------------------------------------------------------------------------------------------------

  def to_bytes(self) -> bytes:
    chunks, pos, layers = [], 0, []
    for layer in self.layers:
      entries = {}
      for name, value in layer.arrays().items():
        a = np.asarray(value, dtype=_DTYPES[name])  # not ascontiguousarray: it turns scalars into (1,)
        entries[name] = {"dtype": _DTYPES[name], "shape": list(a.shape), "offset": pos, "nbytes": a.nbytes}
        chunks.append(a.tobytes())
        pos += a.nbytes
      layers.append({"kind": layer.kind, "bits": layer.bits, "dim": layer.dim, "arrays": entries})
    header = strict_json.dumps({"num_items": self.num_items, "layers": layers,
                         "weights": None if self.weights is None else list(self.weights)}, sort_keys=True).encode()
    body = MAGIC + struct.pack("<II", VERSION, len(header)) + header + b"".join(chunks)
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
    if version not in (1, 2, VERSION):
      raise UserError(f"{where}: index format version {version} is not supported (expected 1, 2 or {VERSION})")
    try:
      header = json.loads(body[fixed:fixed + header_len].decode())
      payload = body[fixed + header_len:]
      if version == 1:
        header = {"num_items": header["num_items"], "weights": None,
                  "layers": [{"bits": header["bits"], "dim": header["dim"], "arrays": header["arrays"]}]}
      layers = []
      for entry in header["layers"]:
        arrays = {}
        for name, e in entry["arrays"].items():
          if name not in _DTYPES or e["dtype"] != _DTYPES[name] or e["offset"] + e["nbytes"] > len(payload):
            raise ValueError(f"array {name} out of bounds or of the wrong type")
          arrays[name] = np.frombuffer(payload, _DTYPES[name], count=int(np.prod(e["shape"], dtype=np.int64)),
                                       offset=e["offset"]).reshape(e["shape"]).copy()
          if name in _SCALARS and arrays[name].shape == (1,):  # version 1 stored scalars as (1,)
            arrays[name] = arrays[name].reshape(())
        layer_type = _LAYER_TYPES[entry.get("kind", "scalar")]
        if layer_type is PackedLayer and ("scale" in arrays) == ("scale_codes" in arrays):
          raise ValueError("a layer needs either 'scale' or 'scale_codes', 'scale_min' and 'scale_step'")
        layers.append(layer_type(bits=int(entry["bits"]), dim=int(entry["dim"]), **arrays))
      weights = header["weights"]
      index = cls(layers=tuple(layers), weights=None if weights is None else tuple(float(w) for w in weights))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
      raise UserError(f"{where}: malformed index header ({e})") from None
    for layer in index.layers:
      problem = layer.check(int(header["num_items"]))
      if problem:
        raise UserError(f"{where}: {problem}")
    return index

  @classmethod
  def load(cls, path: str) -> "QuantizedIndex":
    if not os.path.isfile(path):
      raise UserError(f"{path}: index file not found")
    with open(path, "rb") as f:
      return cls.from_bytes(f.read(), path)
