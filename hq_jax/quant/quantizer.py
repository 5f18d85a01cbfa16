"""Low-bit quantizers for embedding matrices (HQ-GNN spec, section "Quantizer" [ours]), and the quantized
representations that export, evaluation and retrieval share.

Two code families, both written as `x^ = offset + scale * codes` so that downstream code (retrieval, export,
evaluation) handles every width the same way:

* b = 1, sign codes: q = sign(x) in {-1, +1} (sign(0) = +1), x^ = s * q with one positive scale per matrix
  (default: mean |x| of the matrix; per row, BiGeaR style, as an option). offset = 0.
* b >= 2, uniform with a clipping range [l, u]:
  t = clip((x - l) / (u - l), 0, 1); q = round(t * (2^b - 1)) in {0..2^b-1};
  x^ = l + q * (u - l) / (2^b - 1), i.e. offset = l, scale = (u - l) / (2^b - 1).

Rounding is round-half-to-even (`jnp.round`). These functions carry no gradient rule of their own: the
straight-through estimators in `hq_jax.quant.estimators` wrap them.

Per-row scales stored in 8 bits (`ScaleCodes`, ours). A 1-bit matrix with one scale per row stores its
(n, 1) scales either as float32 (32 bits a row) or as uint8 codes with one float32 pair (min, step) per
matrix (8 bits a row + 8 bytes):

  scale_r = min + step * code_r,  code_r in {0..255},
  step = 2^e (a power of two), min = base * step with the integer base in [0, 2^16],

so every scale is the integer (base + code_r) times 2^e: exact in float32, and the dequantized scale used by
scoring is exactly what is stored. `quantize_scales` picks the smallest power-of-two step whose 255 steps
cover [min_r s_r, max_r s_r] (at most twice the step of an unconstrained (min, step) pair, i.e. one bit of
the eight), but never below max_r s_r / 2^15 (so base + code < 2^16 + 256), and rounds each scale to the
nearest multiple of the step (never to 0).

Layer-wise codes (`LayeredQuantized`, ours; the weighting is LightGCN's mean by default, BiGeaR's as an
option). One `QuantizedMatrix` per propagation layer k = 0..K, each with its own scale / range, and static
layer weights w_k > 0. The score of a user u and an item i is the weighted sum of the per-layer inner
products of the dequantized layers:

  score(u, i) = sum_k w_k <x^_uk, x^_ik>.

`dequantize()` returns the concatenation [sqrt(w_0) x^_0 | ... | sqrt(w_K) x^_K], whose plain inner product is
that score (sum_k (sqrt(w_k))^2 <x^_uk, x^_ik>). Note this is not LightGCN's score of the *mean* embedding
<mean_k u_k, mean_k i_k>: the cross-layer products are absent. Weights:
  * "mean" (default): w_k = 1 / (K + 1) (LightGCN's layer mean, applied to the per-layer products);
  * "bigear": w_k = ((k + 1) / (K + 1))^2. BiGeaR (Chen et al., "Learning Binarized Graph Representations with
    Multi-faceted Quantization Reinforcement for Top-K Recommendation", KDD 2022, arXiv 2206.02115; code
    yankai-chen/BiGeaR, `src/model.py`) multiplies layer k's binarised embedding of *both* users and items by
    lambda_k = (k + 1) / (K + 1) before concatenating them and scores by the inner product of the
    concatenations, so its per-layer weight on <q(u_k), q(i_k)> is lambda_k^2.
For exact ranking the weights are read as the rationals `Fraction(w).limit_denominator(2**16)` (so a stored
0.333... is exactly one third); only their ratios matter for a ranking.

Bytes (`nbytes_packed`, what an export stores): codes bit-packed with rows padded to whole bytes, plus the
scale (4 bytes per float32 value, or n + 8 bytes for `ScaleCodes`) and the float32 offset (4 bytes, also for
1 bit, where it is stored as 0). `bits_per_node` = 8 * stored bytes / rows.
"""

import dataclasses
import fractions
import math
from typing import Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np

SUPPORTED_BITS = (1, 2, 3, 4, 8)  # the one list of supported code widths in the library
SCALE_BITS = (32, 8)  # per-row 1-bit scales: float32, or `ScaleCodes`
SCALE_CODE_LEVELS = 255  # largest scale code
SCALE_MAX_MULTIPLE = 1 << 16  # base + code stays below this + 256
WEIGHT_DENOMINATOR_LIMIT = 1 << 16  # layer weights are read as rationals with denominators up to this
ScaleMode = Literal["matrix", "row"]
WeightScheme = Literal["mean", "bigear"]


# ----------------------------------------------------------------------------------------------------------
# Per-row scales in 8 bits
# ----------------------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ScaleCodes:
  """Positive per-row scales stored as uint8 codes: `scale_r = minimum + step * codes_r`, exactly.

  Invariant: step is a power of two, minimum = base * step for an integer 0 <= base <= 2^16, and every
  base + code_r >= 1, so each scale is a positive float32 integer multiple of step (see the module docstring).
  """

  codes: jax.Array  # (n, 1) uint8
  minimum: jax.Array  # () float32, an integer multiple of step, >= 0
  step: jax.Array  # () float32, a power of two

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.codes.shape)

  def values(self) -> jax.Array:
    """The (n, 1) float32 scales (exact: every term is an integer times the power of two `step`)."""
    return self.minimum + self.step * jnp.asarray(self.codes).astype(jnp.float32)

  def nbytes(self) -> int:
    """One byte a row plus the float32 minimum and step."""
    return int(np.shape(self.codes)[0]) + 8


def quantize_scales(scale: jax.Array) -> ScaleCodes:
  """Stores positive (n, 1) scales as `ScaleCodes` (jit-able).

  step = 2^max(ceil(log2((max - min) / 254)), floor(log2(max)) - 15); base = floor(min / step);
  code_r = clip(round(s_r / step) - base, max(1 - base, 0), 255). Then base + code_r <= 2^16 + 255 and
  |s_r - scale_r| <= step / 2 except where s_r < step / 2 (rounded up to step instead of to 0).

  Args:
    scale: (n, 1) float, every entry > 0 and finite (not checked under jit).
  """
  s = jnp.asarray(scale, jnp.float32)
  smax, smin = jnp.max(s), jnp.min(s)
  spread = (smax - smin) / (SCALE_CODE_LEVELS - 1)
  m, e = jnp.frexp(spread)  # spread = m 2^e, m in [0.5, 1): ceil(log2(spread)) = e - (m == 0.5)
  e_spread = jnp.where(spread > 0, e - (m == 0.5).astype(e.dtype), jnp.iinfo(jnp.int32).min)
  _, e_max = jnp.frexp(smax)  # floor(log2(smax)) = e_max - 1
  exponent = jnp.maximum(e_spread, e_max - 1 - 15)
  step = jnp.ldexp(jnp.float32(1), exponent)
  base = jnp.floor(smin / step)
  codes = jnp.clip(jnp.round(s / step) - base, jnp.maximum(1 - base, 0), SCALE_CODE_LEVELS)
  return ScaleCodes(codes=codes.astype(jnp.uint8), minimum=base * step, step=step)


def scale_values(scale) -> jax.Array:
  """The float32 scale of a `QuantizedMatrix` (`()` or `(n, 1)`), whichever way it is stored."""
  if isinstance(scale, ScaleCodes):
    return scale.values()
  return jnp.asarray(scale, jnp.float32)


# ----------------------------------------------------------------------------------------------------------
# One quantized matrix
# ----------------------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QuantizedMatrix:
  """A quantized (n, d) matrix.

  Invariant: `dequantize(qm) == qm.offset + scale_values(qm.scale) * qm.codes` (as float32), with
    * bits == 1: codes int8 in {-1, +1}, offset == 0, scale > 0 of shape () or (n, 1), the latter as float32
      or as `ScaleCodes` (8 bits a row);
    * bits >= 2: codes uint8 in {0, ..., 2**bits - 1}, scale > 0 and offset of shape () float32.

  `bits` is static (pytree metadata), so a jitted function specialises on it.
  """

  codes: jax.Array  # (n, d) int8 (bits == 1) or uint8 (bits >= 2)
  scale: jax.Array | ScaleCodes  # () or (n, 1) float32, > 0; or ScaleCodes (bits == 1, per row)
  offset: jax.Array  # () float32
  bits: int = dataclasses.field(metadata=dict(static=True))

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.codes.shape)

  @property
  def num_rows(self) -> int:
    return int(self.codes.shape[0])

  @property
  def per_row_scale(self) -> bool:
    return isinstance(self.scale, ScaleCodes) or int(np.size(self.scale)) > 1 or np.ndim(self.scale) == 2

  @property
  def scale_bits(self) -> int:
    """8 for `ScaleCodes`, 32 for float32 scales."""
    return 8 if isinstance(self.scale, ScaleCodes) else 32

  def scale_values(self) -> jax.Array:
    return scale_values(self.scale)

  def dequantize(self) -> jax.Array:
    return dequantize(self)

  def nbytes_packed(self) -> int:
    """Bytes stored: bit-packed codes (rows padded to whole bytes), the scale, and the float32 offset."""
    n, d = self.codes.shape
    code_bytes = n * ((d * self.bits + 7) // 8)
    scale_bytes = self.scale.nbytes() if isinstance(self.scale, ScaleCodes) else 4 * int(np.size(self.scale))
    return code_bytes + scale_bytes + 4 * int(np.size(self.offset))


def check_bits(bits: int) -> int:
  if bits not in SUPPORTED_BITS:
    raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")
  return bits


def levels(bits: int) -> int:
  """Largest code of the uniform b-bit quantizer, 2^b - 1."""
  return (1 << bits) - 1


# ----------------------------------------------------------------------------------------------------------
# Layer-wise codes
# ----------------------------------------------------------------------------------------------------------


def layer_weights(num_layers: int, scheme: WeightScheme = "mean") -> tuple[float, ...]:
  """Weights w_0..w_K of the K + 1 = `num_layers` per-layer inner products (module docstring).

  "mean": 1 / (K + 1) each (LightGCN). "bigear": ((k + 1) / (K + 1))^2 (BiGeaR, arXiv 2206.02115).
  """
  if num_layers < 1:
    raise ValueError(f"num_layers must be >= 1, got {num_layers}")
  if scheme == "mean":
    return tuple(1.0 / num_layers for _ in range(num_layers))
  if scheme == "bigear":
    return tuple(((k + 1) / num_layers) ** 2 for k in range(num_layers))
  raise ValueError(f"unknown layer weight scheme {scheme!r} (expected 'mean' or 'bigear')")


def exact_weights(weights: Sequence[float]) -> tuple[fractions.Fraction, ...]:
  """The weights as the rationals ranking uses: `Fraction(w).limit_denominator(2**16)`."""
  return tuple(fractions.Fraction(float(w)).limit_denominator(WEIGHT_DENOMINATOR_LIMIT) for w in weights)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LayeredQuantized:
  """Layer-wise codes: one `QuantizedMatrix` per propagation layer k = 0..K, all with the same rows.

  Invariant: score(u, i) = sum_k weights[k] * <layers[k].dequantize()[u], item layers[k].dequantize()[i]>,
  and `dequantize()` = [sqrt(w_0) x^_0 | ... | sqrt(w_K) x^_K] (float32), whose inner products are those scores
  (up to float32 rounding). `weights` (static) are positive, one per layer.
  """

  layers: tuple[QuantizedMatrix, ...]
  weights: tuple[float, ...] = dataclasses.field(metadata=dict(static=True))

  def __post_init__(self):
    if len(self.weights) != len(self.layers) or not self.layers:
      raise ValueError(f"need one weight per layer and at least one layer, got {len(self.weights)} weights "
                       f"for {len(self.layers)} layers")
    if not all(math.isfinite(w) and w > 0 for w in self.weights):
      raise ValueError(f"layer weights must be positive and finite, got {self.weights}")

  @property
  def num_rows(self) -> int:
    return self.layers[0].num_rows

  @property
  def dims(self) -> tuple[int, ...]:
    return tuple(int(q.codes.shape[1]) for q in self.layers)

  @property
  def shape(self) -> tuple[int, ...]:
    """(rows, total dimension of the concatenation)."""
    return (self.num_rows, sum(self.dims))

  def dequantize(self) -> jax.Array:
    return jnp.concatenate([jnp.sqrt(jnp.float32(w)) * dequantize(q) for q, w in zip(self.layers, self.weights)],
                           axis=1)

  def nbytes_packed(self) -> int:
    return sum(q.nbytes_packed() for q in self.layers)


Representation = QuantizedMatrix | LayeredQuantized


def bits_per_node(rep: Representation) -> float:
  """Stored bits per row: code bits (rows padded to bytes) + per-row scale bits + the per-matrix scalars / n."""
  return 8.0 * rep.nbytes_packed() / rep.num_rows


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
# Integer codes <-> QuantizedMatrix / LayeredQuantized
# ----------------------------------------------------------------------------------------------------------


def quantize(x: jax.Array, bits: int, *, lower: jax.Array | None = None, upper: jax.Array | None = None,
             scale: jax.Array | None = None, scale_bits: int = 32) -> QuantizedMatrix:
  """Quantizes `x` to integer codes.

  Args:
    x: (n, d) float matrix.
    bits: 1, 2, 3, 4 or 8.
    lower, upper: the clipping range, for bits >= 2 (default: `init_range(x)`).
    scale: the 1-bit scale, () or (n, 1) (default: mean |x|).
    scale_bits: 32 (float32 scales) or 8 (`ScaleCodes`; only for a per-row 1-bit scale).

  Raises:
    ValueError: unsupported bits or scale_bits, or scale_bits=8 without a per-row 1-bit scale.
  """
  check_bits(bits)
  if scale_bits not in SCALE_BITS:
    raise ValueError(f"scale_bits must be one of {SCALE_BITS}, got {scale_bits}")
  x = jnp.asarray(x, jnp.float32)
  if bits == 1:
    s = sign_scale(x) if scale is None else jnp.asarray(scale, jnp.float32)
    if scale_bits == 8:
      if s.ndim != 2:
        raise ValueError("scale_bits=8 stores per-row 1-bit scales: pass scale of shape (n, 1)")
      s = quantize_scales(s)
    return QuantizedMatrix(codes=sign_codes(x).astype(jnp.int8), scale=s,
                           offset=jnp.zeros((), jnp.float32), bits=1)
  if scale_bits != 32:
    raise ValueError(f"scale_bits=8 applies to 1-bit per-row scales, not to {bits}-bit codes")
  if lower is None or upper is None:
    lower, upper = init_range(x)
  lower = jnp.asarray(lower, jnp.float32)
  upper = jnp.asarray(upper, jnp.float32)
  codes = uniform_codes(x, lower, upper, bits).astype(jnp.uint8)
  return QuantizedMatrix(codes=codes, scale=uniform_step(lower, upper, bits), offset=lower, bits=bits)


def without_row_scales(qm: QuantizedMatrix) -> QuantizedMatrix:
  """The same 1-bit codes with one unit scale instead of per-row scales (ours).

  For the query side of a ranking (users): a user's positive scale s_u multiplies every score
  s_u s_i <c_u, c_i> of that user, so neither the order of the items nor their ties change, and the user's
  stored scalars (4 or 1 byte a row) can be left out. The scores are no longer those of `dequantize(qm)`
  (each is divided by s_u). Also valid for a one-scale matrix (the scale becomes 1).

  Raises:
    ValueError: codes of more than 1 bit (their offset makes the scale matter).
  """
  if qm.bits != 1:
    raise ValueError(f"only 1-bit codes rank the same without their scale, got {qm.bits}-bit codes")
  return QuantizedMatrix(codes=qm.codes, scale=jnp.ones((), jnp.float32), offset=qm.offset, bits=1)


def quantize_layers(xs: Sequence[jax.Array], bits: int, *, scale_mode: ScaleMode = "matrix",
                    scale_bits: int = 32, weights: Sequence[float] | WeightScheme = "mean") -> LayeredQuantized:
  """Quantizes each layer's (n, d) matrix on its own (1 bit: scale per matrix or per row; b >= 2: range
  mean -+ 3 std of that layer).

  Args:
    xs: the K + 1 layer matrices E(0), ..., E(K), same rows.
    bits: code width of every layer.
    scale_mode: 1-bit scale per matrix or per row.
    scale_bits: 32 or 8 (per-row 1-bit scales only).
    weights: explicit positive weights, or "mean" / "bigear" (`layer_weights`).
  """
  if isinstance(weights, str):
    weights = layer_weights(len(xs), weights)
  layers = []
  for x in xs:
    x = jnp.asarray(x, jnp.float32)
    scale = sign_scale(x, scale_mode) if bits == 1 else None
    layers.append(quantize(x, bits, scale=scale, scale_bits=scale_bits))
  return LayeredQuantized(layers=tuple(layers), weights=tuple(float(w) for w in weights))


def dequantize(qm: QuantizedMatrix) -> jax.Array:
  """offset + scale * codes, float32."""
  return qm.offset + scale_values(qm.scale) * qm.codes.astype(jnp.float32)
