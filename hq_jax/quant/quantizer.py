"""Low-bit quantizers for embedding matrices (HQ-GNN spec, section "Quantizer" [ours]).

Two families, both written as `x^ = offset + scale * codes` so that downstream code (retrieval, export,
evaluation) handles every width the same way:

* b = 1, sign codes: q = sign(x) in {-1, +1} (sign(0) = +1), x^ = s * q with one positive scale per matrix
  (default: mean |x| of the matrix; per row, BiGeaR style, as an option). offset = 0.
* b >= 2, uniform with a clipping range [l, u]:
  t = clip((x - l) / (u - l), 0, 1); q = round(t * (2^b - 1)) in {0..2^b-1};
  x^ = l + q * (u - l) / (2^b - 1), i.e. offset = l, scale = (u - l) / (2^b - 1).

Rounding is round-half-to-even (`jnp.round`). These functions carry no gradient rule of their own: the
straight-through estimators in `hq_jax.quant.estimators` wrap them.
"""

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

SUPPORTED_BITS = (1, 2, 3, 4, 8)
ScaleMode = Literal["matrix", "row"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantizedMatrix:
  """A quantized (n, d) matrix.

  Invariant: `dequantize(qm) == qm.offset + qm.scale * qm.codes` (as float32), with
    * bits == 1: codes int8 in {-1, +1}, offset == 0, scale > 0 of shape () or (n, 1);
    * bits >= 2: codes uint8 in {0, ..., 2**bits - 1}, scale > 0 and offset of shape ().

  `bits` is static (pytree metadata), so a jitted function specialises on it.
  """

  codes: jax.Array  # (n, d) int8 (bits == 1) or uint8 (bits >= 2)
  scale: jax.Array  # () or (n, 1) float32, > 0
  offset: jax.Array  # () float32
  bits: int = dataclasses.field(metadata=dict(static=True))

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.codes.shape)

  def dequantize(self) -> jax.Array:
    return dequantize(self)

  def nbytes_packed(self) -> int:
    """Bytes to store this matrix with codes bit-packed (rows padded to whole bytes) plus its float32 scalars."""
    n, d = self.codes.shape
    code_bytes = n * ((d * self.bits + 7) // 8)
    return code_bytes + 4 * (int(np.size(self.scale)) + int(np.size(self.offset)))


def check_bits(bits: int) -> int:
  if bits not in SUPPORTED_BITS:
    raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")
  return bits


def levels(bits: int) -> int:
  """Largest code of the uniform b-bit quantizer, 2^b - 1."""
  return (1 << bits) - 1


# ----------------------------------------------------------------------------------------------------------
# b = 1: sign codes
# ----------------------------------------------------------------------------------------------------------


def sign_codes(x: jax.Array) -> jax.Array:
  """sign(x) in {-1, +1} with sign(0) = +1, as x's dtype."""
  return jnp.where(x >= 0, 1, -1).astype(x.dtype)


def sign_scale(x: jax.Array, mode: ScaleMode = "matrix") -> jax.Array:
  """The 1-bit scale that minimises |x - s * sign(x)|^2: mean |x| over the matrix, or per row."""
  if mode == "matrix":
    return jnp.mean(jnp.abs(x))
  if mode == "row":
    return jnp.mean(jnp.abs(x), axis=-1, keepdims=True)
  raise ValueError(f"unknown 1-bit scale mode {mode!r} (expected 'matrix' or 'row')")


def fake_quant_sign(x: jax.Array, scale: jax.Array) -> jax.Array:
  """x^ = scale * sign(x) (float)."""
  return scale * sign_codes(x)


# ----------------------------------------------------------------------------------------------------------
# b >= 2: uniform quantizer with a clipping range [lower, upper]
# ----------------------------------------------------------------------------------------------------------


def uniform_codes(x: jax.Array, lower: jax.Array, upper: jax.Array, bits: int) -> jax.Array:
  """q = round(clip((x - l) / (u - l), 0, 1) * (2^b - 1)), as x's dtype (integer valued)."""
  t = jnp.clip((x - lower) / (upper - lower), 0.0, 1.0)
  return jnp.round(t * levels(bits))


def uniform_step(lower: jax.Array, upper: jax.Array, bits: int) -> jax.Array:
  """Distance between adjacent levels, (u - l) / (2^b - 1)."""
  return (upper - lower) / levels(bits)


def fake_quant_uniform(x: jax.Array, lower: jax.Array, upper: jax.Array, bits: int) -> jax.Array:
  """x^ = l + q * (u - l) / (2^b - 1) (float)."""
  return lower + uniform_codes(x, lower, upper, bits) * uniform_step(lower, upper, bits)


def init_range(x: jax.Array, num_std: float = 3.0) -> tuple[jax.Array, jax.Array]:
  """Initial clipping range [mean - k std, mean + k std] (the spec says +-3 std of the embeddings)."""
  mean, std = jnp.mean(x), jnp.std(x)
  return mean - num_std * std, mean + num_std * std


# ----------------------------------------------------------------------------------------------------------
# Integer codes <-> QuantizedMatrix
# ----------------------------------------------------------------------------------------------------------


def quantize(x: jax.Array, bits: int, *, lower: jax.Array | None = None, upper: jax.Array | None = None,
             scale: jax.Array | None = None) -> QuantizedMatrix:
  """Quantizes `x` to integer codes.

  Args:
    x: (n, d) float matrix.
    bits: 1, 2, 3, 4 or 8.
    lower, upper: the clipping range, for bits >= 2 (default: `init_range(x)`).
    scale: the 1-bit scale, () or (n, 1) (default: mean |x|).
  """
  check_bits(bits)
  x = jnp.asarray(x, jnp.float32)
  if bits == 1:
    s = sign_scale(x) if scale is None else jnp.asarray(scale, jnp.float32)
    return QuantizedMatrix(codes=sign_codes(x).astype(jnp.int8), scale=s,
                           offset=jnp.zeros((), jnp.float32), bits=1)
  if lower is None or upper is None:
    lower, upper = init_range(x)
  lower = jnp.asarray(lower, jnp.float32)
  upper = jnp.asarray(upper, jnp.float32)
  codes = uniform_codes(x, lower, upper, bits).astype(jnp.uint8)
  return QuantizedMatrix(codes=codes, scale=uniform_step(lower, upper, bits), offset=lower, bits=bits)


def dequantize(qm: QuantizedMatrix) -> jax.Array:
  """offset + scale * codes, float32."""
  return qm.offset + qm.scale * qm.codes.astype(jnp.float32)
