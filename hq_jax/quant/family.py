"""Quantizer families: the one interface that every stored embedding representation implements (ours).

A family is one way of storing an (n, d) embedding matrix. Four exist; export, evaluation, retrieval and
the index reach every representation through its `Family` (`family_of(rep)`) instead of branching on types:

  kind      representation                decoded row x^[r]                            ranked by
  float     float32 array (n, d)          the row itself                               float32 inner products
  scalar    `quantizer.QuantizedMatrix`   offset + scale * codes[r]                    exact integer keys
  layered   `quantizer.LayeredQuantized`  [sqrt(w_0) x^_0[r] | ... | sqrt(w_K) x^_K[r]] exact integer keys
  pq        `pq.ProductCodes`             concat_m codebooks[m, codes[r, m]]           float32 inner products
                                                                                       of the decoded rows

What a family knows, for one side (users or items):
  * `quantize(x, **options)` / `dequantize(rep)` (float32 (n, d), the decoded rows above);
  * its export.npz arrays: `arrays(rep, side)` and `read(arrays, side, path)`, which validates them (every
    failure is one `UserError("<path>: ...")` naming the key), `required_keys(arrays, sides)`;
  * what it stores: `row_bytes(rep)` (codes, per-row and per-matrix scalars: what bits per node count) and
    `shared_bytes(rep)` (codebooks, reported beside bits per node); `bits_per_node(rep)` = 8 row_bytes / n;
  * how a pair is ranked (`ranking`): "integer" (`hq_jax.retrieval.scoring`'s exact integer keys from the
    codes of both sides) or "float" (the float path of `hq_jax.retrieval`: float32 inner products of the
    decoded rows; see `retrieval.scoring` for what that order is exactly).

Legal (user, item) pairs (`check_pair`): both of one family, or float users with product-code items ("items
coded, users float": the layout of FAISS's PQ / OPQ / SQ comparisons; a per-dimension scalar quantizer is a
product code with M = d one-dimensional subspaces). Scalar and layer-wise codes need codes on both sides:
their exact integer keys multiply user codes by item codes. A pair ranked by "float" ranks exactly like the
pair of its decoded float32 matrices, `(dequantize(users), dequantize(items))`: the same rows enter the same
search.

To add a family: a `Family` subclass here, registered in `FAMILIES` (its export keys documented in
`hq_jax.export`); if it ranks by "integer" keys, `layers` gives its `QuantizedMatrix` layers and weights.
"""

import abc
import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hq_jax.errors import UserError
from hq_jax.quant import pq as pq_lib
from hq_jax.quant import quantizer
from hq_jax.quant.pq import ProductCodes
from hq_jax.quant.quantizer import LayeredQuantized, QuantizedMatrix, ScaleCodes

SIDES = ("user", "item")


class Family(abc.ABC):
  """One stored representation of an (n, d) matrix (module docstring). Instances are stateless."""

  kind: str  # the export's `kind` and the registry key
  title: str  # how messages name its exports ("quantized export is missing ...")
  ranking: str  # "integer" (exact keys from the codes) or "float" (float32 inner products of decoded rows)
  type_name: str  # how messages name its representation type
  per_layer_dims: bool = False  # dims() lists layers: messages name the layer
  shareable: tuple[str, ...] = ()  # per-side tables `{side}_X` that may be stored once as `X` when equal

  @abc.abstractmethod
  def accepts(self, rep: Any) -> bool:
    """Whether `rep` is of this family."""

  @abc.abstractmethod
  def quantize(self, x, **options):
    """A representation of the float (n, d) matrix x (options: the family's quantizer's arguments)."""

  @abc.abstractmethod
  def dequantize(self, rep) -> jax.Array:
    """The decoded (n, d) float32 rows."""

  def num_rows(self, rep) -> int:
    return int(rep.num_rows)

  def shape(self, rep) -> tuple[int, ...]:
    """The decoded matrix's shape (rows, d)."""
    return tuple(int(v) for v in rep.shape)

  def dims(self, rep) -> tuple[int, ...]:
    """The dimension of each layer (one entry unless layer-wise): what the other side must match."""
    return (self.shape(rep)[-1],)

  @abc.abstractmethod
  def describe(self, rep) -> str:
    """A few words for messages ("4 bits", "2-layer codes")."""

  @abc.abstractmethod
  def row_bytes(self, rep) -> int:
    """Bytes stored with the rows: codes (bit-packed, rows padded to whole bytes), per-row scalars and the
    per-matrix scalars of scalar codes: what bits per node count."""

  def shared_bytes(self, rep) -> int:
    """Bytes of tables shared by all rows (codebooks), counted in the stored bytes, not in bits per node."""
    del rep
    return 0

  def stored_bytes(self, rep) -> int:
    return self.row_bytes(rep) + self.shared_bytes(rep)

  def bits_per_node(self, rep) -> float:
    return 8.0 * self.row_bytes(rep) / self.num_rows(rep)

  def code_bits(self, rep) -> int:
    """Bits of one code (0 for float rows; layer-wise: the first layer's)."""
    del rep
    return 0

  def layers(self, rep) -> tuple[tuple[QuantizedMatrix, ...], tuple[float, ...]]:
    """(QuantizedMatrix layers, weights) of an "integer"-ranked family."""
    raise TypeError(f"{self.kind} representations have no integer code layers")

  def check_values(self, rep, side: str) -> None:
    """Raises `UserError` for values that would make a ranking meaningless (non-finite floats)."""
    del rep, side

  # export.npz arrays (format: `hq_jax.export`).
  @abc.abstractmethod
  def arrays(self, rep, side: str) -> dict[str, np.ndarray]:
    """This side's export arrays, with the keys it shares with the other side (`bits`, `layers`, ...)."""

  @abc.abstractmethod
  def required_keys(self, arrays: Mapping[str, np.ndarray], sides: Sequence[str], path: str) -> list[str]:
    """The keys `sides` need, in the order a missing-keys message lists them (`path` names the file when a
    key that says which keys are needed is itself invalid)."""

  @abc.abstractmethod
  def read(self, arrays: Mapping[str, np.ndarray], side: str, path: str):
    """This side's representation from export arrays, validated (`UserError` naming `path` and the key)."""


# ----------------------------------------------------------------------------------------------------------
# Shared validators (each failure: UserError("<path>: ...") naming the key)
# ----------------------------------------------------------------------------------------------------------


def int_scalar(arrays, path: str, key: str) -> int:
  x = arrays[key]
  if x.size != 1 or not np.issubdtype(x.dtype, np.integer):
    raise UserError(f"{path}: {key!r} must be one integer, got {x.dtype} of shape {x.shape}")
  return int(x.reshape(()))


def float_scalar(arrays, path: str, key: str) -> np.ndarray:
  x = arrays[key]
  if not np.issubdtype(x.dtype, np.floating):
    raise UserError(f"{path}: {key} must be a float, got dtype {x.dtype}")
  if x.shape != ():
    raise UserError(f"{path}: {key} must be a scalar, got shape {x.shape}")
  if not np.isfinite(x):
    raise UserError(f"{path}: {key} is not finite ({x})")
  return x.astype(np.float32)


def check_matrix_shape(path: str, key: str, x: np.ndarray) -> None:
  if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
    raise UserError(f"{path}: {key} must be a non-empty (n, d) matrix, got shape {x.shape}")


def _integer_codes(arrays, path: str, key: str, top: int, what: str) -> np.ndarray:
  """An integer (n, k) matrix with entries in [0, top], as uint8."""
  codes = arrays[key]
  check_matrix_shape(path, key, codes)
  if not np.issubdtype(codes.dtype, np.integer):
    raise UserError(f"{path}: {key} must be integers, got dtype {codes.dtype}")
  if codes.min() < 0 or codes.max() > top:
    raise UserError(f"{path}: {key} of {what} must lie in [0, {top}], found {codes.min()}..{codes.max()}")
  return codes.astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------
# float
# ----------------------------------------------------------------------------------------------------------


class FloatFamily(Family):
  """Full-precision rows, stored float32. Keys: `{side}_embeddings` (n, d) float, finite."""

  kind, title, ranking, type_name = "float", "float", "float", "float arrays"

  def accepts(self, rep) -> bool:
    return not any(f.accepts(rep) for f in FAMILIES.values() if f is not self)

  def quantize(self, x, **options):
    del options
    return np.asarray(x, np.float32)

  def dequantize(self, rep) -> jax.Array:
    return jnp.asarray(rep, jnp.float32)

  def num_rows(self, rep) -> int:
    return int(np.shape(rep)[0])

  def shape(self, rep) -> tuple[int, ...]:
    return tuple(int(v) for v in np.shape(rep))

  def describe(self, rep) -> str:
    return "float"

  def row_bytes(self, rep) -> int:
    return 4 * int(np.size(rep))

  def check_values(self, rep, side: str) -> None:
    if not jnp.issubdtype(rep.dtype, jnp.floating):
      raise UserError(f"{side} embeddings must be floating point, got {rep.dtype}")
    if not np.isfinite(np.asarray(rep)).all():
      raise UserError(f"{side} embeddings contain non-finite values")

  def arrays(self, rep, side: str) -> dict[str, np.ndarray]:
    return {f"{side}_embeddings": np.asarray(rep, np.float32)}

  def required_keys(self, arrays, sides, path) -> list[str]:
    return [f"{side}_embeddings" for side in sides]

  def read(self, arrays, side: str, path: str) -> np.ndarray:
    key = f"{side}_embeddings"
    x = arrays[key]
    check_matrix_shape(path, key, x)
    if not np.issubdtype(x.dtype, np.floating):
      raise UserError(f"{path}: {key} must be floats, got dtype {x.dtype}")
    if not np.isfinite(x).all():
      raise UserError(f"{path}: {key} contains NaN or infinite values")
    return x.astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# scalar: one QuantizedMatrix per side
# ----------------------------------------------------------------------------------------------------------


def _matrix_arrays(qm: QuantizedMatrix, side: str, suffix: str) -> dict[str, np.ndarray]:
  out = {f"{side}_codes{suffix}": np.asarray(qm.codes).astype(np.int8 if qm.bits == 1 else np.uint8),
         f"{side}_offset{suffix}": np.asarray(qm.offset, np.float32)}
  if isinstance(qm.scale, ScaleCodes):
    out[f"{side}_scale_codes{suffix}"] = np.asarray(qm.scale.codes).astype(np.uint8)
    out[f"{side}_scale_min{suffix}"] = np.asarray(qm.scale.minimum, np.float32)
    out[f"{side}_scale_step{suffix}"] = np.asarray(qm.scale.step, np.float32)
  else:
    out[f"{side}_scale{suffix}"] = np.asarray(qm.scale, np.float32)
  return out


def _matrix_keys(arrays, sides: Sequence[str], suffix: str) -> list[str]:
  """Keys one quantized (layer's) pair needs, in the order missing keys are reported."""
  out = [f"bits{suffix}"]
  for side in sides:
    out.append(f"{side}_codes{suffix}")
  for side in sides:
    if f"{side}_scale_codes{suffix}" in arrays:
      out += [f"{side}_scale_codes{suffix}", f"{side}_scale_min{suffix}", f"{side}_scale_step{suffix}"]
    else:
      out.append(f"{side}_scale{suffix}")
    out.append(f"{side}_offset{suffix}")
  return out


def _bits(arrays, path: str, key: str) -> int:
  bits = int_scalar(arrays, path, key)
  if bits not in quantizer.SUPPORTED_BITS:
    raise UserError(f"{path}: unsupported {key}={bits} (supported: {', '.join(map(str, quantizer.SUPPORTED_BITS))})")
  return bits


def _read_matrix(arrays, path: str, side: str, bits: int, suffix: str) -> QuantizedMatrix:
  key = f"{side}_codes{suffix}"
  codes = arrays[key]
  check_matrix_shape(path, key, codes)
  if not np.issubdtype(codes.dtype, np.integer):
    raise UserError(f"{path}: {key} must be integers, got dtype {codes.dtype}")
  n = codes.shape[0]
  if bits == 1:
    if not np.isin(codes, (-1, 1)).all():
      raise UserError(f"{path}: {key} of 1-bit codes must be -1 or +1")
    codes = codes.astype(np.int8)
  else:
    codes = _integer_codes(arrays, path, key, (1 << bits) - 1, f"{bits}-bit codes")
  offset_key = f"{side}_offset{suffix}"
  offset = float_scalar(arrays, path, offset_key)
  if bits == 1 and offset != 0:
    raise UserError(f"{path}: {offset_key} of 1-bit codes must be 0, got {offset}")
  if f"{side}_scale_codes{suffix}" in arrays:
    scale = _read_scale_codes(arrays, path, side, suffix, n, bits)
  else:
    scale_key = f"{side}_scale{suffix}"
    scale = arrays[scale_key]
    if not np.issubdtype(scale.dtype, np.floating):
      raise UserError(f"{path}: {scale_key} must be floats, got dtype {scale.dtype}")
    allowed = ((), (n, 1)) if bits == 1 else ((),)
    if scale.shape not in allowed:
      raise UserError(f"{path}: {scale_key} must have shape {' or '.join(map(str, allowed))} for {bits}-bit "
                      f"codes, got {scale.shape}")
    scale = scale.astype(np.float32)
    if not (np.isfinite(scale).all() and (scale > 0).all()):
      raise UserError(f"{path}: {scale_key} must be positive and finite")
  return QuantizedMatrix(codes=codes, scale=scale, offset=offset, bits=bits)


def _read_scale_codes(arrays, path: str, side: str, suffix: str, n: int, bits: int) -> ScaleCodes:
  key = f"{side}_scale_codes{suffix}"
  if bits != 1:
    raise UserError(f"{path}: {key}: 8-bit per-row scales are for 1-bit codes, not {bits}-bit ones")
  codes = arrays[key]
  if not np.issubdtype(codes.dtype, np.integer):
    raise UserError(f"{path}: {key} must be integers, got dtype {codes.dtype}")
  if codes.shape != (n, 1):
    raise UserError(f"{path}: {key} must have shape ({n}, 1), got {codes.shape}")
  if codes.min() < 0 or codes.max() > 255:
    raise UserError(f"{path}: {key} must lie in [0, 255], found {codes.min()}..{codes.max()}")
  min_key, step_key = f"{side}_scale_min{suffix}", f"{side}_scale_step{suffix}"
  minimum = float_scalar(arrays, path, min_key)
  step = float_scalar(arrays, path, step_key)
  mant, _ = np.frexp(np.float64(step))
  if not (step > 0 and mant == 0.5):
    raise UserError(f"{path}: {step_key} must be a positive power of two, got {step}")
  base = np.float64(minimum) / np.float64(step)
  if not (0 <= base <= quantizer.SCALE_MAX_MULTIPLE and base == np.floor(base)):
    raise UserError(f"{path}: {min_key} must be an integer multiple of {step_key} in [0, 2^16 step], got "
                    f"{minimum} = {base} steps")
  if base == 0 and codes.min() == 0:
    raise UserError(f"{path}: {key}: every scale must be > 0 ({min_key} + {step_key} * code is 0)")
  return ScaleCodes(codes=codes.astype(np.uint8), minimum=minimum, step=step)


class ScalarFamily(Family):
  """One `QuantizedMatrix` per side. Keys: `bits` (shared), `{side}_codes`, `{side}_offset`, and
  `{side}_scale` or `{side}_scale_codes` / `_scale_min` / `_scale_step`."""

  kind, title, ranking, type_name = "scalar", "quantized", "integer", "QuantizedMatrix"

  def accepts(self, rep) -> bool:
    return isinstance(rep, QuantizedMatrix)

  def quantize(self, x, **options) -> QuantizedMatrix:
    """`quantizer.quantize(x, bits, lower=, upper=, scale=, scale_bits=)`."""
    return quantizer.quantize(x, **options)

  def dequantize(self, rep) -> jax.Array:
    return quantizer.dequantize(rep)

  def describe(self, rep) -> str:
    return f"{rep.bits} bits"

  def row_bytes(self, rep) -> int:
    return rep.nbytes_packed()

  def code_bits(self, rep) -> int:
    return rep.bits

  def layers(self, rep):
    return (rep,), (1.0,)

  def arrays(self, rep, side: str) -> dict[str, np.ndarray]:
    return {"bits": np.asarray(rep.bits, np.int32), **_matrix_arrays(rep, side, "")}

  def required_keys(self, arrays, sides, path) -> list[str]:
    return _matrix_keys(arrays, sides, "")

  def read(self, arrays, side: str, path: str) -> QuantizedMatrix:
    return _read_matrix(arrays, path, side, _bits(arrays, path, "bits"), "")


# ----------------------------------------------------------------------------------------------------------
# layered: one LayeredQuantized per side
# ----------------------------------------------------------------------------------------------------------


class LayeredFamily(Family):
  """`LayeredQuantized` codes. Keys: `layers`, `layer_weights` (shared) and per layer k the scalar keys
  with the suffix `_{k}` (`bits_{k}` shared)."""

  kind, title, ranking, type_name = "layered", "layer-wise", "integer", "LayeredQuantized"
  per_layer_dims = True

  def accepts(self, rep) -> bool:
    return isinstance(rep, LayeredQuantized)

  def quantize(self, x, **options) -> LayeredQuantized:
    """`quantizer.quantize_layers(xs, bits, scale_mode=, scale_bits=, weights=)`; x is the list of layers."""
    return quantizer.quantize_layers(x, **options)

  def dequantize(self, rep) -> jax.Array:
    return rep.dequantize()

  def dims(self, rep) -> tuple[int, ...]:
    return rep.dims

  def describe(self, rep) -> str:
    return f"{len(rep.layers)}-layer codes"

  def row_bytes(self, rep) -> int:
    return rep.nbytes_packed()

  def code_bits(self, rep) -> int:
    return rep.layers[0].bits

  def layers(self, rep):
    return tuple(rep.layers), tuple(rep.weights)

  def arrays(self, rep, side: str) -> dict[str, np.ndarray]:
    out = {"layers": np.asarray(len(rep.layers), np.int32), "layer_weights": np.asarray(rep.weights, np.float64)}
    for k, q in enumerate(rep.layers):
      out[f"bits_{k}"] = np.asarray(q.bits, np.int32)
      out.update(_matrix_arrays(q, side, f"_{k}"))
    return out

  def _num_layers(self, arrays, path: str) -> int:
    num_layers = int_scalar(arrays, path, "layers")
    if num_layers < 1:
      raise UserError(f"{path}: layers must be >= 1, got {num_layers}")
    return num_layers

  def required_keys(self, arrays, sides, path) -> list[str]:
    out = ["layers", "layer_weights"]
    for k in range(self._num_layers(arrays, path) if "layers" in arrays else 0):
      out += _matrix_keys(arrays, sides, f"_{k}")
    return out

  def read(self, arrays, side: str, path: str) -> LayeredQuantized:
    num_layers = self._num_layers(arrays, path)
    weights = arrays["layer_weights"]
    if not np.issubdtype(weights.dtype, np.floating):
      raise UserError(f"{path}: layer_weights must be floats, got dtype {weights.dtype}")
    if weights.shape != (num_layers,):
      raise UserError(f"{path}: layer_weights must have shape ({num_layers},), got {weights.shape}")
    if not (np.isfinite(weights).all() and (weights > 0).all()):
      raise UserError(f"{path}: layer_weights must be positive and finite")
    layers = tuple(_read_matrix(arrays, path, side, _bits(arrays, path, f"bits_{k}"), f"_{k}")
                   for k in range(num_layers))
    rows = sorted({int(q.codes.shape[0]) for q in layers})
    if len(rows) != 1:
      raise UserError(f"{path}: {side}_codes_k of the layers differ in rows ({rows})")
    return LayeredQuantized(layers=layers, weights=tuple(float(v) for v in weights))


# ----------------------------------------------------------------------------------------------------------
# pq: ProductCodes
# ----------------------------------------------------------------------------------------------------------


class ProductFamily(Family):
  """`pq.ProductCodes`. Keys: `bits` (shared, 1..8), `{side}_codes` uint8 (n, M) in [0, 2^bits - 1], and the
  codebooks float32 (M, 2^bits, d / M), finite: `{side}_codebooks` per side, or one `codebooks` shared by
  both sides (stored once)."""

  kind, title, ranking, type_name = "pq", "product-code", "float", "ProductCodes"
  shareable = ("codebooks",)

  def accepts(self, rep) -> bool:
    return isinstance(rep, ProductCodes)

  def quantize(self, x, **options) -> ProductCodes:
    """`pq.quantize(x, codebooks, bits)`: the nearest codeword per subspace."""
    return pq_lib.quantize(jnp.asarray(x, jnp.float32), **options)

  def dequantize(self, rep) -> jax.Array:
    return pq_lib.decode(jnp.asarray(rep.codes), jnp.asarray(rep.codebooks, jnp.float32))

  def describe(self, rep) -> str:
    return f"product codes (M = {rep.num_subspaces}, {rep.bits} bits)"

  def row_bytes(self, rep) -> int:
    return rep.code_bytes()

  def shared_bytes(self, rep) -> int:
    return rep.codebook_bytes()

  def code_bits(self, rep) -> int:
    return rep.bits

  def check_values(self, rep, side: str) -> None:
    if not np.isfinite(np.asarray(rep.codebooks)).all():
      raise UserError(f"{side} codebooks contain non-finite values")

  def arrays(self, rep, side: str) -> dict[str, np.ndarray]:
    return {"bits": np.asarray(rep.bits, np.int32), f"{side}_codes": np.asarray(rep.codes).astype(np.uint8),
            f"{side}_codebooks": np.asarray(rep.codebooks, np.float32)}

  def required_keys(self, arrays, sides, path) -> list[str]:
    out = ["bits"] + [f"{side}_codes" for side in sides]
    if "codebooks" not in arrays:
      out += [f"{side}_codebooks" for side in sides]
    return out

  def read(self, arrays, side: str, path: str) -> ProductCodes:
    bits = int_scalar(arrays, path, "bits")
    if not 1 <= bits <= pq_lib.MAX_PQ_BITS:
      raise UserError(f"{path}: unsupported bits={bits} for product codes (supported: 1..{pq_lib.MAX_PQ_BITS})")
    key = "codebooks" if "codebooks" in arrays else f"{side}_codebooks"
    if key == "codebooks" and f"{side}_codebooks" in arrays:
      raise UserError(f"{path}: both codebooks (shared) and {side}_codebooks are present: keep one")
    books = arrays[key]
    if not np.issubdtype(books.dtype, np.floating):
      raise UserError(f"{path}: {key} must be floats, got dtype {books.dtype}")
    if books.ndim != 3 or books.shape[0] == 0 or books.shape[2] == 0 or books.shape[1] != 1 << bits:
      raise UserError(f"{path}: {key} must have shape (M, 2^bits = {1 << bits}, d / M), got {books.shape}")
    if not np.isfinite(books).all():
      raise UserError(f"{path}: {key} contains NaN or infinite values")
    codes_key = f"{side}_codes"
    codes = _integer_codes(arrays, path, codes_key, (1 << bits) - 1, f"{bits}-bit product codes")
    if codes.shape[1] != books.shape[0]:
      raise UserError(f"{path}: {codes_key} has {codes.shape[1]} columns but {key} has M = {books.shape[0]} "
                      "subspaces")
    return ProductCodes(codes=codes, codebooks=books.astype(np.float32), bits=bits)


# ----------------------------------------------------------------------------------------------------------
# Registry and pairs
# ----------------------------------------------------------------------------------------------------------

FAMILIES: dict[str, Family] = {f.kind: f for f in (ScalarFamily(), LayeredFamily(), ProductFamily(), FloatFamily())}
KINDS = tuple(FAMILIES)
# (user kind, item kind) pairs that may be ranked and stored, besides both sides of one family.
MIXED_PAIRS = (("float", "pq"),)


def family_of(rep) -> Family:
  """The family of a representation (anything that is not codes is float rows)."""
  for f in FAMILIES.values():
    if f.accepts(rep):
      return f
  raise AssertionError("unreachable: FloatFamily accepts the rest")


def family_named(kind: str) -> Family:
  if kind not in FAMILIES:
    raise KeyError(f"unknown representation kind {kind!r} (known: {', '.join(KINDS)})")
  return FAMILIES[kind]


def legal_pair(user_kind: str, item_kind: str) -> bool:
  return user_kind == item_kind or (user_kind, item_kind) in MIXED_PAIRS


@dataclasses.dataclass(frozen=True)
class Pair:
  """The families of a legal (users, items) pair and how it ranks."""

  user: Family
  item: Family

  @property
  def ranking(self) -> str:
    """"integer" when both sides rank by exact integer keys, else "float" (decoded rows)."""
    return "integer" if self.user.ranking == self.item.ranking == "integer" else "float"

  @property
  def kind(self) -> str:
    """The export's `kind`: the item side's family."""
    return self.item.kind


def check_pair(users, items) -> Pair:
  """The families of (users, items); `UserError` unless they are a legal pair (module docstring)."""
  fu, fi = family_of(users), family_of(items)
  if not legal_pair(fu.kind, fi.kind):
    raise UserError(
        "user and item representations must be of one kind: both float arrays, both QuantizedMatrix, both "
        "LayeredQuantized or both ProductCodes, or float users with ProductCodes items (got user "
        f"{fu.type_name}, item {fi.type_name}; they differ: {fu.describe(users)} vs {fi.describe(items)})")
  return Pair(fu, fi)


def storage(users, items) -> dict[str, float | int]:
  """What a (users, items) pair stores, for results.json and evaluation output.

  Returns:
    representation_bytes: row bytes of both sides plus their codebooks (a codebook that both sides share,
      the same array values, once);
    codebook_bytes: the codebooks' part of it;
    bits_per_node: 8 * row bytes / (users + items): codes plus per-row (and per-matrix) scalars;
    codebook_bits_per_node: 8 * codebook bytes / (users + items), shown beside bits_per_node;
    user_bits_per_node, item_bits_per_node: the same as bits_per_node, per side.
  """
  pair = check_pair(users, items)
  rows = pair.user.row_bytes(users) + pair.item.row_bytes(items)
  shared = pair.user.shared_bytes(users) + pair.item.shared_bytes(items)
  if shared_codebooks(users, items):
    shared = pair.item.shared_bytes(items)
  nodes = pair.user.num_rows(users) + pair.item.num_rows(items)
  return {"representation_bytes": rows + shared, "codebook_bytes": shared, "bits_per_node": 8.0 * rows / nodes,
          "codebook_bits_per_node": 8.0 * shared / nodes, "user_bits_per_node": pair.user.bits_per_node(users),
          "item_bits_per_node": pair.item.bits_per_node(items)}


def shared_codebooks(users, items) -> bool:
  """Whether both sides are product codes with the same codebooks (stored once as `codebooks`)."""
  if not (isinstance(users, ProductCodes) and isinstance(items, ProductCodes)):
    return False
  a, b = np.asarray(users.codebooks), np.asarray(items.codebooks)
  return a.shape == b.shape and np.array_equal(a, b)
