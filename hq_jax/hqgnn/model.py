"""The HQ-GNN model: a LightGCN encoder and the quantizer of its representations, one thin NNX module.

What is quantized (`ModelConfig.codes`):

* "final" (the HQ-GNN spec): the final embeddings E = mean_k E(k), k = 0..K, one (n, d) matrix per side;
  score(u, i) = <x^_u, x^_i>.
* "layerwise" (BiGeaR's layout, ours in JAX): every propagation layer E(k) with its own scale / range, a
  (K + 1, n, d) stack per side; score(u, i) = sum_k w_k <x^_uk, x^_ik> with w_k LightGCN's mean 1 / (K + 1)
  or BiGeaR's ((k + 1) / (K + 1))^2 (`hq_jax.quant.quantizer.layer_weights`).

Product codes (`quant.kind = 'pq'`, issue 22) quantize the final embeddings only: `quantize()` gives one
`hq_jax.quant.pq.ProductCodes` per side.

Rows enter every loss through `flat_rows`, which multiplies layer k by sqrt(w_k) and concatenates the layers,
so a plain inner product of flat rows is the score above and BPR / distillation are written once.

Shapes: users (U, d) / items (I, d) for "final", (K + 1, U, d) / (K + 1, I, d) for "layerwise"; float32.
"""

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from hq_jax.hqgnn import graph as graph_lib
from hq_jax.hqgnn import lightgcn
from hq_jax.quant import module as quant_module
from hq_jax.quant import quantizer

Codes = Literal["final", "layerwise"]
CODES = ("final", "layerwise")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  """LightGCN (spec, "Encoder") and what of it is quantized."""

  num_users: int
  num_items: int
  dim: int = 64  # d
  num_layers: int = 3  # K propagation layers
  init_std: float = 0.1  # E0 ~ N(0, init_std^2)
  aggregation: graph_lib.Aggregation = "csr"  # 'csr' (fast sparse kernel) or 'segment' (jraph)
  quant: quant_module.QuantizerConfig | None = None  # None: full precision
  codes: Codes = "final"  # 'final' (spec) or 'layerwise' (BiGeaR's layout)
  layer_weights: quantizer.WeightScheme = "mean"  # 'layerwise' scoring: 'mean' or 'bigear'
  num_rows: int | None = None  # rows of E0 when padded for a device mesh (`hq_jax.parallel.padded_rows`)
  # 1-bit final codes: users are evaluated and exported without their per-row scales (ranking-neutral,
  # `quantizer.without_row_scales`); training still learns them.
  drop_user_scales: bool = False

  def __post_init__(self):
    if self.codes not in CODES:
      raise ValueError(f"unknown codes {self.codes!r} (expected one of {CODES})")
    if self.codes == "layerwise" and self.quant is None:
      raise ValueError("layerwise codes need a quantizer (bits)")
    if self.is_pq and (self.codes != "final" or self.drop_user_scales):
      raise ValueError("product codes quantize the final embeddings (codes = 'final') and have no row scales "
                       "to drop")
    if self.drop_user_scales and (self.quant is None or self.quant.bits != 1 or self.quant.one_bit_scale != "row"
                                  or self.codes != "final"):
      raise ValueError("drop_user_scales needs 1-bit codes of the final embeddings with one scale per row "
                       "(bits = 1, one_bit_scale = 'row', codes = 'final'): layer-wise or b-bit codes need their "
                       "user scales for the ranking, and one scale per matrix has nothing to drop")
    quantizer.layer_weights(self.num_layers + 1, self.layer_weights)

  @property
  def is_pq(self) -> bool:
    """Whether the representations are product codes."""
    return self.quant is not None and self.quant.kind == "pq"

  @property
  def weights(self) -> tuple[float, ...] | None:
    """The per-layer score weights of layerwise codes, else None."""
    if self.codes != "layerwise":
      return None
    return quantizer.layer_weights(self.num_layers + 1, self.layer_weights)


def flat_rows(rows: jax.Array, weights: tuple[float, ...] | None) -> jax.Array:
  """Rows (B, d), or per-layer rows (L, B, d) -> (B, L d) = [sqrt(w_0) r_0 | ... ] (inner product = score)."""
  if weights is None:
    return rows
  scaled = rows * jnp.sqrt(jnp.asarray(weights, rows.dtype))[:, None, None]
  return jnp.moveaxis(scaled, 0, 1).reshape(rows.shape[1], -1)


def take_rows(x: jax.Array, ids: jax.Array, weights: tuple[float, ...] | None) -> jax.Array:
  """`flat_rows` of the rows `ids` (any shape S) of x: (S..., d) or (S..., L d)."""
  if weights is None:
    return x[ids]
  flat = flat_rows(x[:, ids.reshape(-1)], weights)
  return flat.reshape(ids.shape + flat.shape[-1:])


class HQGNN(nnx.Module):
  """Holds E0 (`encoder`, a `LightGCN`) and, when quantized, the `quantizer` (an `EmbeddingQuantizer`).

  The graph arrays are data, not state: every call takes `graph` (a `jraph.GraphsTuple`) and `adjacency` (its
  `CSRAdjacency`, or None for the segment aggregation).
  """

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.encoder = lightgcn.LightGCN(config.num_users, config.num_items, config.dim, init_std=config.init_std,
                                     rngs=rngs, num_rows=config.num_rows)
    self.quantizer = nnx.data(None)  # set by `init_quantizer`: EmbeddingQuantizer or ProductQuantizer

  def init_quantizer(self, graph, adjacency) -> None:
    """Builds the quantizer, its ranges / scales (or product-code codebooks, by k-means) set from the current
    (initial or warm-started) embeddings."""
    if self.config.quant is not None:
      users, items = self.embeddings(graph, adjacency)
      self.quantizer = quant_module.make_quantizer(self.config.quant, users, items)

  def rotate_encoder(self, rotation: jax.Array) -> None:
    """E0 <- E0 R for an orthogonal R (d, d): every layer and the final embeddings rotate by R (LightGCN is
    linear), so scores and the L2 penalty are unchanged; used before quantization (`quant.rotation`)."""
    self.encoder.embedding[...] = self.encoder.embedding[...] @ rotation.astype(self.encoder.embedding.dtype)

  def final_embeddings(self, graph, adjacency) -> tuple[jax.Array, jax.Array]:
    """LightGCN's float final embeddings mean_k E(k) (users (U, d), items (I, d)), whatever is quantized."""
    aggregate = graph_lib.make_aggregate(graph, adjacency, self.config.aggregation)
    e0 = self.encoder.embedding[...]
    return self.encoder.split_nodes(graph_lib.lightgcn_propagate(aggregate, e0, self.config.num_layers))

  def embeddings(self, graph, adjacency) -> tuple[jax.Array, jax.Array]:
    """The float representations that are quantized: final embeddings, or the per-layer stacks."""
    c = self.config
    if c.codes == "final":
      return self.final_embeddings(graph, adjacency)
    aggregate = graph_lib.make_aggregate(graph, adjacency, c.aggregation)
    return self.encoder.split_nodes(graph_lib.lightgcn_layers(aggregate, self.encoder.embedding[...], c.num_layers))

  def __call__(self, graph, adjacency, deltas: dict | None = None) -> tuple[jax.Array, jax.Array]:
    """What BPR scores: x^ (through the quantizer's estimator; `deltas` are the GSTE's) or float embeddings."""
    return self.represent(graph, adjacency, deltas)[1]

  def represent(self, graph, adjacency, deltas: dict | None = None):
    """((users x, items x), (users x^, items x^)): the float representations and what BPR scores (x^ = x at
    full precision)."""
    users, items = self.embeddings(graph, adjacency)
    if self.quantizer is None:
      return (users, items), (users, items)
    deltas = deltas or {}
    return (users, items), self.quantizer(users, items, deltas.get("users"), deltas.get("items"))

  def scored_rows(self, graph, adjacency, triples: jax.Array, deltas: dict | None = None,
                  weights: jax.Array | None = None):
    """Product codes only: BPR's (users x^, positives x^, negatives x^), each (B, d), quantizing just the
    distinct rows a batch scores (triples (B, 3): user, positive, negative), and those rows for the EMA
    codebook update: ((users x (B, d), items x (2B, d)), their weights) with weight = how many weighted
    (`weights`, 0 = padding) triples use the row, 0 for the filler rows that keep the shapes static.

    Product codes code each row on its own, so x^ of the distinct gathered rows, gathered back, is the rows
    of x^, and each distinct row gets the summed upstream gradient of its uses, as in the whole matrix (the
    GSTE is not linear in g, so rows are deduplicated rather than quantized per use): the gradients equal
    those of quantizing all U + I rows, for 3 B rows of encoding (LastFM: 6144 against 19,524).
    Element-wise GSTE deltas are gathered with their rows.
    """
    users, items = self.embeddings(graph, adjacency)
    deltas = deltas or {}
    b = triples.shape[0]
    w = jnp.ones((b,), jnp.float32) if weights is None else weights
    uid, uinv = jnp.unique(triples[:, 0], size=b, return_inverse=True)
    iid, iinv = jnp.unique(jnp.concatenate([triples[:, 1], triples[:, 2]]), size=2 * b, return_inverse=True)
    uinv, iinv = uinv.reshape(-1), iinv.reshape(-1)
    take = lambda d, ids: d[ids] if d is not None and jnp.ndim(d) == 2 else d
    xu, xi = users[uid], items[iid]
    hu, hi = self.quantizer(xu, xi, take(deltas.get("users"), uid), take(deltas.get("items"), iid))
    uses_u = jax.ops.segment_sum(w, uinv, num_segments=b)
    uses_i = jax.ops.segment_sum(jnp.concatenate([w, w]), iinv, num_segments=2 * b)
    return (hu[uinv], hi[iinv[:b]], hi[iinv[b:]]), ((xu, xi), (uses_u, uses_i))

  def quantize(self, graph, adjacency):
    """What evaluation ranks and export.npz stores: integer codes (`QuantizedMatrix`, or `LayeredQuantized`
    for layerwise codes, or `pq.ProductCodes`) per side, or the float final embeddings of a full-precision model. With
    `drop_user_scales` the users' codes carry one unit scale (same ranking, fewer stored bits)."""
    users, items = self.embeddings(graph, adjacency)
    if self.quantizer is None:
      return users, items
    if self.config.is_pq:
      return self.quantizer.quantized(users, items)
    out = []
    for q, x in ((self.quantizer.users, users), (self.quantizer.items, items)):
      mats = q.quantized(x)
      out.append(mats[0] if self.config.codes == "final" else
                 quantizer.LayeredQuantized(layers=tuple(mats), weights=self.config.weights))
    if self.config.drop_user_scales:
      out[0] = quantizer.without_row_scales(out[0])
    return tuple(out)


def bpr_of_representations(xhats: dict, batch: dict, weights: tuple[float, ...] | None = None) -> jax.Array:
  """BPR loss of a batch as a function of the representations {'users', 'items'}: the curvature target.

  batch: {'triples': (B, 3) int32 (user, positive, negative), 'weights': (B,) float32, 0 = padding}.
  """
  users, items, t = xhats["users"], xhats["items"], batch["triples"]
  return lightgcn.bpr_loss(take_rows(users, t[:, 0], weights), take_rows(items, t[:, 1], weights),
                           take_rows(items, t[:, 2], weights), batch["weights"])


def distillation_loss(xhats: dict, batch: dict, weights: tuple[float, ...] | None = None) -> jax.Array:
  """mean over (user, teacher item) pairs of softplus(-score(u, t)) (ours, after BiGeaR's ranking
  distillation, arXiv 2206.02115, section 3.3).

  batch: {'triples': (B, 3), 'weights': (B,), 'teacher_items': (B, m) int32}: m items per BPR user, each drawn
  from the teacher's top-R list with probability proportional to exp(-lambda (r + 1)), so the expectation is
  BiGeaR's rank-weighted sum up to the constant sum_r exp(-lambda (r + 1)).
  """
  u = take_rows(xhats["users"], batch["triples"][:, 0], weights)  # (B, D)
  t = take_rows(xhats["items"], batch["teacher_items"], weights)  # (B, m, D)
  per_pair = jax.nn.softplus(-jnp.einsum("bd,bmd->bm", u, t))
  w = batch["weights"]
  return jnp.sum(jnp.mean(per_pair, axis=1) * w) / jnp.maximum(jnp.sum(w), 1.0)
