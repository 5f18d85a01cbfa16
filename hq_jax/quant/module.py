"""Flax NNX holders of the quantizer parameters of the user and item representations (HQ-GNN, ours).

Thin layers over `hq_jax.quant.estimators`: a `MatrixQuantizer` owns the learnable range (bits >= 2: lower,
upper) or 1-bit scale of one matrix, or of a stack of L matrices (one per propagation layer, each with its
own parameters), and calls `fake_quant` (training) / `quantizer.quantize` (integer codes). The parameters
are `QuantParam`s, a subclass of `nnx.Param`, so a trainer gives them their own (small) learning rate by
filtering on the type (`nnx.All(nnx.Param, nnx.Not(QuantParam))` vs `QuantParam`).

Shapes: x is (n, d) or (L, n, d). The 1-bit scale is () / (L, 1, 1) per matrix, or (n, 1) / (L, n, 1) per
row; the range ends are () / (L, 1, 1).
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from hq_jax.quant import estimators
from hq_jax.quant import quantizer


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantizerConfig:
  """A quantizer of the representations (HQ-GNN spec, "Quantizer" and "Gradient estimators")."""

  bits: int = 1  # 1, 2, 3, 4 or 8; 1 = sign codes {-1, +1} with a scale, else uniform on a learned range
  estimator: estimators.Estimator = "gste"  # 'ste', 'gste' (GSTE with delta = 0 is the STE), 'gaussian'
  one_bit_scale: quantizer.ScaleMode = "matrix"  # bits == 1: one scale per matrix, or one per row (BiGeaR)
  scale_bits: int = 32  # bits == 1 with row scales: stored as float32 (32) or 8-bit `ScaleCodes` (8)
  one_bit_clip: float | None = None  # bits == 1: zero dL/dx where |x| > this (None: never)
  gaussian_a: float = 1.0  # estimator 'gaussian': BiGeaR's norm_a
  init_num_std: float = 3.0  # bits >= 2: initial range mean -+ this many std of the initial embeddings

  def __post_init__(self):
    quantizer.check_bits(self.bits)
    if self.estimator not in estimators.ESTIMATORS:
      raise ValueError(f"unknown estimator {self.estimator!r}")
    if self.estimator == "gaussian" and self.bits != 1:
      raise ValueError("the gaussian estimator (BiGeaR's) is for bits == 1")
    if self.one_bit_scale not in ("matrix", "row"):
      raise ValueError(f"unknown one_bit_scale {self.one_bit_scale!r}")
    if self.scale_bits not in quantizer.SCALE_BITS:
      raise ValueError(f"scale_bits must be one of {quantizer.SCALE_BITS}, got {self.scale_bits}")
    if self.scale_bits != 32 and (self.bits != 1 or self.one_bit_scale != "row"):
      raise ValueError("scale_bits = 8 applies to 1-bit codes with one_bit_scale = 'row' only")
    if self.one_bit_clip is not None and self.bits != 1:
      raise ValueError("one_bit_clip applies to bits == 1 only")


MIN_SCALE = 1e-12  # floor of |s| for the 1-bit scale


class QuantParam(nnx.Param):
  """A quantizer parameter (range end or 1-bit scale); its own type so it can get its own learning rate."""


def _init_qparams(x0: jax.Array, config: QuantizerConfig) -> estimators.QParams:
  """Initial parameters of an (n, d) matrix, or of each matrix of an (L, n, d) stack (shapes above)."""
  init = lambda x: estimators.init_qparams(x, config.bits, one_bit_scale=config.one_bit_scale,
                                           num_std=config.init_num_std)
  if x0.ndim == 2:
    return init(x0)
  return jax.tree.map(lambda p: p.reshape(p.shape + (1,) * (3 - p.ndim)), jax.vmap(init)(x0))


class MatrixQuantizer(nnx.Module):
  """The quantizer parameters of one matrix (or layer stack): `scale` (bits == 1) or `lower`, `upper`."""

  def __init__(self, config: QuantizerConfig, x0: jax.Array):
    """Initialises from the initial values x0, (n, d) or (L, n, d): scale = mean |x0| (per matrix or row),
    range = mean(x0) -+ init_num_std * std(x0), per matrix of the stack."""
    self.config = config
    qparams = _init_qparams(jnp.asarray(x0), config)
    if config.bits == 1:
      self.scale = QuantParam(qparams["scale"])
    else:
      self.lower = QuantParam(qparams["lower"])
      self.upper = QuantParam(qparams["upper"])

  def qparams(self) -> estimators.QParams:
    """The parameters as the quantizer uses them; the 1-bit scale as |s| (floored at 1e-12), so that a
    learned scale that crosses zero stays a valid positive scale (the quantizer's invariant)."""
    if self.config.bits == 1:
      return {"scale": jnp.maximum(jnp.abs(self.scale[...]), MIN_SCALE)}
    return {"lower": self.lower[...], "upper": self.upper[...]}

  def __call__(self, x: jax.Array, delta: jax.Array | None = None) -> jax.Array:
    """x^ with the configured estimator (delta None = 0); x has the shape the quantizer was built for."""
    c = self.config
    return estimators.fake_quant(x, self.qparams(), delta, bits=c.bits, estimator=c.estimator,
                                 clip=c.one_bit_clip, gaussian_a=c.gaussian_a)

  def quantized(self, x: jax.Array) -> list[quantizer.QuantizedMatrix]:
    """The integer codes of x: one `QuantizedMatrix` per matrix (one for (n, d), L for (L, n, d))."""
    c, qparams = self.config, self.qparams()
    stack = x[None] if x.ndim == 2 else x
    out = []
    for layer in range(stack.shape[0]):
      p = {k: (v[layer] if x.ndim == 3 else v) for k, v in qparams.items()}
      if c.bits == 1:
        scale = p["scale"].reshape(()) if c.one_bit_scale == "matrix" else p["scale"]
        out.append(quantizer.quantize(stack[layer], 1, scale=scale, scale_bits=c.scale_bits))
      else:
        out.append(quantizer.quantize(stack[layer], c.bits, lower=p["lower"].reshape(()),
                                      upper=p["upper"].reshape(())))
    return out


class EmbeddingQuantizer(nnx.Module):
  """Quantizes the user and item representations, each matrix (or layer stack) with its own parameters."""

  def __init__(self, config: QuantizerConfig, users_x0: jax.Array, items_x0: jax.Array):
    """Args: config; users_x0 (U, d) or (L, U, d) and items_x0 (I, d) or (L, I, d), the initial values."""
    self.config = config
    self.users = MatrixQuantizer(config, jnp.asarray(users_x0))
    self.items = MatrixQuantizer(config, jnp.asarray(items_x0))

  def __call__(self, users_x: jax.Array, items_x: jax.Array, delta_users: jax.Array | None = None,
               delta_items: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(users x^, items x^); the deltas are the GSTE's (scalar or the matrix's shape; None = 0)."""
    return self.users(users_x, delta_users), self.items(items_x, delta_items)
