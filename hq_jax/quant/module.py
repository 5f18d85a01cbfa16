"""Flax NNX holders of the quantizer parameters of the user and item representations (HQ-GNN, ours).

Thin layers over `hq_jax.quant.estimators`: a `MatrixQuantizer` owns the learnable range (bits >= 2: lower,
upper) or 1-bit scale of one matrix, or of a stack of L matrices (one per propagation layer, each with its
own parameters), and calls `fake_quant` (training) / `quantizer.quantize` (integer codes). The parameters
are `QuantParam`s, a subclass of `nnx.Param`, so a trainer gives them their own (small) learning rate by
filtering on the type (`nnx.All(nnx.Param, nnx.Not(QuantParam))` vs `QuantParam`).

Product codes (`config.kind = 'pq'`, issue 22): `ProductQuantizer` owns the codebooks of both sides, one
stack (S, M, K, d / M) with S = 1 (shared by users and items) or 2 (users, items), initialised by seeded
k-means of the initial (or warm-started) embeddings. Learned by gradient (`CodebookParam`, a `QuantParam`
with its own learning rate) or by VQ-VAE's EMA k-means updates (`EMAState`: not touched by the optimizer;
the trainer calls `ema_update` after each step).

Shapes: x is (n, d) or (L, n, d). The 1-bit scale is () / (L, 1, 1) per matrix, or (n, 1) / (L, n, 1) per
row; the range ends are () / (L, 1, 1).
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from hq_jax.quant import estimators
from hq_jax.quant import pq
from hq_jax.quant import quantizer

KINDS = ("scalar", "pq")
PQ_CODEBOOKS = ("shared", "separate")
PQ_UPDATES = ("gradient", "ema")
PQ_SIDES = ("both", "items")


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
  kind: str = "scalar"  # 'scalar' (the fields above) or 'pq' (product codes, the pq_ fields; bits unused)
  pq_subspaces: int = 8  # M: subspaces of d / M dimensions (M divides d)
  pq_bits: int = 8  # b <= 8: 2^b codewords per subspace, so M * b code bits per row
  pq_codebooks: str = "separate"  # 'shared' by users and items, or 'separate' (one set per side)
  pq_sides: str = "both"  # 'both' coded, or 'items' (items coded, users float: asymmetric scoring, as FAISS's ADC)
  pq_update: str = "gradient"  # codebooks by 'gradient' (dL/dC through x^) or 'ema' (VQ-VAE's EMA k-means)
  pq_ema_decay: float = 0.99  # 'ema': the moving averages' decay per training step
  pq_kmeans_iterations: int = 25  # Lloyd iterations of the k-means initialisation
  pq_seed: int = 0  # k-means initialisation: the rows it starts from are drawn from this seed

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"unknown quantizer kind {self.kind!r} (expected one of {KINDS})")
    if self.kind == "pq":
      self._check_pq()
      return
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


  def _check_pq(self):
    if self.estimator not in ("ste", "gste"):
      raise ValueError(f"product codes take the ste or gste estimator, got {self.estimator!r}")
    if not 1 <= self.pq_bits <= pq.MAX_PQ_BITS:
      raise ValueError(f"pq_bits must be in 1..{pq.MAX_PQ_BITS}, got {self.pq_bits}")
    if self.pq_subspaces < 1:
      raise ValueError(f"pq_subspaces must be >= 1, got {self.pq_subspaces}")
    if self.pq_codebooks not in PQ_CODEBOOKS:
      raise ValueError(f"pq_codebooks must be one of {PQ_CODEBOOKS}, got {self.pq_codebooks!r}")
    if self.pq_sides not in PQ_SIDES:
      raise ValueError(f"pq_sides must be one of {PQ_SIDES}, got {self.pq_sides!r}")
    if self.pq_sides == "items" and self.pq_codebooks == "shared":
      raise ValueError("pq_sides='items' codes the items only: there is no second side to share codebooks with "
                       "(pq_codebooks must be 'separate')")
    if self.pq_update not in PQ_UPDATES:
      raise ValueError(f"pq_update must be one of {PQ_UPDATES}, got {self.pq_update!r}")
    if not 0.0 <= self.pq_ema_decay < 1.0:
      raise ValueError(f"pq_ema_decay must be in [0, 1), got {self.pq_ema_decay}")
    if self.pq_kmeans_iterations < 0:
      raise ValueError(f"pq_kmeans_iterations must be >= 0, got {self.pq_kmeans_iterations}")


MIN_SCALE = 1e-12  # floor of |s| for the 1-bit scale


class QuantParam(nnx.Param):
  """A quantizer parameter (range end or 1-bit scale); its own type so it can get its own learning rate."""


class CodebookParam(QuantParam):
  """Product-code codebooks learned by gradient; their own type for their own learning rate."""


class EMAState(nnx.Variable):
  """Product-code codebooks and statistics set by EMA k-means updates: no gradient, no optimizer."""


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


class ProductQuantizer(nnx.Module):
  """Product codes of the user and item representations (final embeddings, (U, d) and (I, d)).

  `codebooks`: (S, M, 2^b, d / M), S = 1 (shared: one k-means of users and items stacked; or items only,
  `pq_sides = 'items'`, users kept float) or 2 (users, items, each its own k-means); with `pq_update = 'ema'` also `ema_counts` (S, M, K) and `ema_sums` (S, M, K, d / M),
  started consistent with the k-means result (counts = rows per codeword, sums = codeword * count).
  """

  def __init__(self, config: QuantizerConfig, users_x0: jax.Array, items_x0: jax.Array):
    self.config = c = config
    users_x0, items_x0 = jnp.asarray(users_x0, jnp.float32), jnp.asarray(items_x0, jnp.float32)
    pq.check_pq_shape(users_x0.shape[-1], c.pq_subspaces, c.pq_bits)
    key = jax.random.key(c.pq_seed)
    sides = self._code_sets(users_x0, items_x0)
    books = jnp.stack([pq.init_codebooks(x, c.pq_subspaces, c.pq_bits, jax.random.fold_in(key, s),
                                         c.pq_kmeans_iterations) for s, x in enumerate(sides)])
    if c.pq_update == "gradient":
      self.codebooks = CodebookParam(books)
      return
    self.codebooks = EMAState(books)
    k = 1 << c.pq_bits
    counts = jnp.stack([pq.codeword_counts(pq.encode(x, b), k) for x, b in zip(sides, books)])
    self.ema_counts = EMAState(counts)
    self.ema_sums = EMAState(books * counts[..., None])

  def _code_sets(self, users, items):
    """The row sets that own one codebook set each, in codebook order: [users; items] stacked (shared),
    users then items (separate), or items alone (`pq_sides = 'items'`). Works on any per-row arrays."""
    if self.config.pq_sides == "items":
      return [items]
    return [jnp.concatenate([users, items])] if self.config.pq_codebooks == "shared" else [users, items]

  @property
  def codes_users(self) -> bool:
    """Whether users are coded (False: `pq_sides = 'items'`, users stay float)."""
    return self.config.pq_sides == "both"

  def side_codebooks(self, side: int) -> jax.Array:
    """(M, K, d / M) codebooks of side 0 (users) or 1 (items)."""
    books = self.codebooks[...]
    return books[min(side, books.shape[0] - 1)]

  def __call__(self, users_x: jax.Array, items_x: jax.Array, delta_users: jax.Array | None = None,
               delta_items: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(users x^, items x^) by `estimators.fake_quant_pq` (users x^ = x when only items are coded); EMA
    codebooks get no gradient."""
    out = []
    for side, (x, delta) in enumerate(((users_x, delta_users), (items_x, delta_items))):
      if side == 0 and not self.codes_users:
        out.append(x)
        continue
      books = self.side_codebooks(side)
      if self.config.pq_update == "ema":
        books = jax.lax.stop_gradient(books)
      out.append(estimators.fake_quant_pq(x, books, delta, estimator=self.config.estimator))
    return out[0], out[1]

  def quantized(self, users_x: jax.Array, items_x: jax.Array) -> tuple[pq.ProductCodes, pq.ProductCodes]:
    """The stored codes of both sides (`pq.ProductCodes`; with shared codebooks both hold the same ones); with
    `pq_sides = 'items'` the users are their float32 rows (n, d)."""
    items = pq.quantize(items_x, self.side_codebooks(1), self.config.pq_bits)
    if not self.codes_users:
      return jnp.asarray(users_x, jnp.float32), items
    return pq.quantize(users_x, self.side_codebooks(0), self.config.pq_bits), items

  def ema_update(self, users_x: jax.Array, items_x: jax.Array, user_weights: jax.Array | None = None,
                 item_weights: jax.Array | None = None) -> None:
    """One `pq.ema_codebooks` step per codebook set from rows (all, or a batch's: VQ-VAE's mini-batch
    update) encoded with the current codebooks; rows of weight 0 (padding) do not count."""
    c = self.config
    ones = lambda x: jnp.ones((x.shape[0],), jnp.float32)
    wu = ones(users_x) if user_weights is None else user_weights
    wi = ones(items_x) if item_weights is None else item_weights
    sides = list(zip(self._code_sets(users_x, items_x), self._code_sets(wu, wi)))
    books, counts, sums = self.codebooks[...], self.ema_counts[...], self.ema_sums[...]
    new = [pq.ema_codebooks(x, pq.encode(x, books[s]), counts[s], sums[s], decay=c.pq_ema_decay, weights=w)
           for s, (x, w) in enumerate(sides)]
    self.codebooks[...] = jnp.stack([n[0] for n in new])
    self.ema_counts[...] = jnp.stack([n[1] for n in new])
    self.ema_sums[...] = jnp.stack([n[2] for n in new])


def make_quantizer(config: QuantizerConfig, users_x0: jax.Array, items_x0: jax.Array):
  """The quantizer of `config.kind`: `EmbeddingQuantizer` (scalar codes) or `ProductQuantizer`."""
  if config.kind == "pq":
    return ProductQuantizer(config, users_x0, items_x0)
  return EmbeddingQuantizer(config, users_x0, items_x0)
