"""Flax NNX holder of the quantizer parameters of the final user and item embeddings.

A thin layer over `hq_jax.quant.estimators`: it owns the learnable range (bits >= 2: lower, upper) or
1-bit scale of each matrix, separately for users and items, and calls `fake_quant` / `to_quantized_matrix`.
The parameters are `QuantParam`s, a subclass of `nnx.Param`, so a trainer can give them their own (small)
learning rate by filtering on the type, e.g. `optax.multi_transform` with labels from
`nnx.map_state(lambda path, v: 'quant' if isinstance(v, QuantParam) else 'model', state)` or
`nnx.state(model, QuantParam)`.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from hq_jax.quant import estimators
from hq_jax.quant import quantizer


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantizerConfig:
  """The quantizer of the final embeddings (HQ-GNN spec, "Quantizer" and "Gradient estimators")."""

  bits: int = 1  # 1, 2, 3, 4 or 8; 1 = sign codes {-1, +1} with a scale, else uniform on a learned range
  estimator: estimators.Estimator = "gste"  # 'ste' or 'gste' (GSTE with delta = 0 is the STE)
  one_bit_scale: quantizer.ScaleMode = "matrix"  # bits == 1: one scale per matrix, or one per row (BiGeaR)
  one_bit_clip: float | None = None  # bits == 1: zero dL/dx where |x| > this (None: never)
  init_num_std: float = 3.0  # bits >= 2: initial range mean -+ this many std of the initial embeddings

  def __post_init__(self):
    quantizer.check_bits(self.bits)
    if self.estimator not in estimators.ESTIMATORS:
      raise ValueError(f"unknown estimator {self.estimator!r}")
    if self.one_bit_scale not in ("matrix", "row"):
      raise ValueError(f"unknown one_bit_scale {self.one_bit_scale!r}")
    if self.one_bit_clip is not None and self.bits != 1:
      raise ValueError("one_bit_clip applies to bits == 1 only")


class QuantParam(nnx.Param):
  """A quantizer parameter (range end or 1-bit scale); its own type so it can get its own learning rate."""


class MatrixQuantizer(nnx.Module):
  """The quantizer parameters of one matrix: `scale` (bits == 1) or `lower` and `upper` (bits >= 2)."""

  def __init__(self, config: QuantizerConfig, x0: jax.Array):
    """Initialises from the matrix's initial values: scale = mean |x0| (per row if so configured),
    range = mean(x0) -+ init_num_std * std(x0)."""
    self.config = config
    qparams = estimators.init_qparams(x0, config.bits, one_bit_scale=config.one_bit_scale,
                                      num_std=config.init_num_std)
    if config.bits == 1:
      self.scale = QuantParam(qparams["scale"])
    else:
      self.lower = QuantParam(qparams["lower"])
      self.upper = QuantParam(qparams["upper"])

  def qparams(self) -> estimators.QParams:
    if self.config.bits == 1:
      return {"scale": self.scale[...]}
    return {"lower": self.lower[...], "upper": self.upper[...]}

  def __call__(self, x: jax.Array, delta: jax.Array | None = None) -> jax.Array:
    """x^ with the configured estimator (delta None = 0)."""
    c = self.config
    return estimators.fake_quant(x, self.qparams(), delta, bits=c.bits, estimator=c.estimator,
                                 clip=c.one_bit_clip)

  def quantized(self, x: jax.Array) -> quantizer.QuantizedMatrix:
    return estimators.to_quantized_matrix(x, self.qparams(), self.config.bits)


class EmbeddingQuantizer(nnx.Module):
  """Quantizes the final user and item embeddings, each matrix with its own parameters."""

  def __init__(self, config: QuantizerConfig, users_x0: jax.Array, items_x0: jax.Array):
    """Args: config; users_x0 (U, d) and items_x0 (I, d), the initial final embeddings (set the ranges)."""
    self.config = config
    self.users = MatrixQuantizer(config, jnp.asarray(users_x0))
    self.items = MatrixQuantizer(config, jnp.asarray(items_x0))

  def __call__(self, users_x: jax.Array, items_x: jax.Array, delta_users: jax.Array | None = None,
               delta_items: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(users x^, items x^); the deltas are the GSTE's (scalar or the matrix's shape; None = 0)."""
    return self.users(users_x, delta_users), self.items(items_x, delta_items)

  def quantized(self, users_x: jax.Array,
                items_x: jax.Array) -> tuple[quantizer.QuantizedMatrix, quantizer.QuantizedMatrix]:
    """The integer codes of both matrices for export and retrieval."""
    return self.users.quantized(users_x), self.items.quantized(items_x)
