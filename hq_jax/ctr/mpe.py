"""MPE: mixed-precision embeddings searched per frequency group (`specs/mpe.md`).

Pieces, each one formula:
- `frequency_groups`: features sorted by train-split count, cut into G equal chunks; c_g = group total /
  smallest group total.
- `precision_probs`: p_g = softmax(gamma_g / tau) over the candidate widths B = {0, ..., 6}.
- `mixed_quantize`: e_x = sum_{b != 0} p_{g(x), b} Q_b(w_x) (search); `frozen_quantize`: Q_{b*_g(x)}(w_x),
  zero for b* = 0 (retrain).
- `bit_regularizer`: sum_g sum_b p_{g,b} * b / c_g (times lambda in the loss).
- `select_bits_threshold`: the authors' rule b*_g = max{b : p_{g,b} >= 1 / (2K)};
  `select_bits_sampling`: OURS, not the paper's: one draw per group from p_g.
- `export_codes` / `decode_export`: the memory-accurate export (codes bit-packed at each feature's width,
  a bit-packed width map, step sizes and offset) and its exact byte count.
`MixedPrecisionEmbedding` holds the table W, the steps alpha_b, the offset beta and the logits gamma.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hq_jax.ctr import lsq
from hq_jax.ctr.models import EMBEDDING_INIT_STD, Embedding, QuantParam, TableParam

CANDIDATE_BITS = (0, 1, 2, 3, 4, 5, 6)
DEFAULT_TAU = 3e-3


# ---------------------------------------------------------------------------------------------------------
# Frequency groups, probabilities, regulariser, selection.


def frequency_groups(counts: np.ndarray, num_groups: int) -> tuple[np.ndarray, np.ndarray]:
  """Groups features by train-split count.

  Features are sorted by count ascending (stable, so ties keep id order) and cut into `num_groups` chunks of
  equal size (sizes differ by at most one when G does not divide N, as `np.array_split`); group 0 is the
  rarest.

  Args:
    counts: (N,) occurrences of each feature in the training split.
    num_groups: G; must not exceed N.

  Returns:
    group_of: (N,) int32 group of each feature.
    group_totals: (G,) int64 total train count of each group.
  """
  counts = np.asarray(counts, dtype=np.int64)
  if not 1 <= num_groups <= counts.shape[0]:
    raise ValueError(f"num_groups must be in [1, {counts.shape[0]}], got {num_groups}")
  order = np.argsort(counts, kind="stable")
  group_of = np.empty(counts.shape[0], dtype=np.int32)
  for g, chunk in enumerate(np.array_split(order, num_groups)):
    group_of[chunk] = g
  group_totals = np.bincount(group_of, weights=counts, minlength=num_groups).astype(np.int64)
  return group_of, group_totals


def group_costs(group_totals: np.ndarray) -> np.ndarray:
  """c_g = total_g / min total, so c_g >= 1 and frequent groups pay less per bit.

  A group whose features never occur in the training split has total 0; totals are floored at 1 so that
  c_g stays finite (our choice: the spec's formula divides by zero there, and such groups are then the
  cheapest-to-prune ones, with c_g = 1).
  """
  totals = np.maximum(np.asarray(group_totals, dtype=np.float64), 1.0)
  return (totals / totals.min()).astype(np.float32)


def precision_probs(gamma: jax.Array, tau: float) -> jax.Array:
  """p_g = softmax(gamma_g / tau) over the candidate widths; (G, K)."""
  return jax.nn.softmax(gamma / tau, axis=-1)


def bit_regularizer(probs: jax.Array, costs: jax.Array,
                    candidate_bits=CANDIDATE_BITS) -> jax.Array:
  """sum_g sum_b p_{g,b} * b / c_g: expected bits per group, cheaper for frequent groups."""
  bits = jnp.asarray(candidate_bits, dtype=probs.dtype)
  return jnp.sum(probs @ bits / costs)


def select_bits_threshold(probs: np.ndarray, candidate_bits=CANDIDATE_BITS) -> np.ndarray:
  """The authors' rule: b*_g = max{b in B : p_{g,b} >= 1 / (2K)}.

  Some b always qualifies because the largest p_{g,b} is at least 1/K.
  """
  probs = np.asarray(probs, dtype=np.float64)
  k = probs.shape[-1]
  bits = np.asarray(candidate_bits)
  ok = probs >= 1.0 / (2 * k)
  return np.max(np.where(ok, bits[None, :], -1), axis=-1).astype(np.int32)


def select_bits_sampling(probs: np.ndarray, seed: int, candidate_bits=CANDIDATE_BITS) -> np.ndarray:
  """OURS (not the paper's, whose "sampling strategy" is undescribed): b_g drawn once from p_g.

  With the spec's tau = 3e-3 the p_g are nearly one-hot and this usually agrees with the threshold rule; it
  differs where a group is undecided, picking a width in proportion to its probability instead of the
  largest plausible one.
  """
  probs = np.asarray(probs, dtype=np.float64)
  probs = probs / probs.sum(axis=-1, keepdims=True)
  rng = np.random.default_rng(seed)
  u = rng.random(probs.shape[0])
  idx = np.minimum((np.cumsum(probs, axis=-1) < u[:, None]).sum(axis=-1), probs.shape[-1] - 1)
  return np.asarray(candidate_bits, dtype=np.int32)[idx]


def mean_bits_per_feature(bits_per_group: np.ndarray, group_of: np.ndarray) -> float:
  """Average code width over features (bits per embedding entry): the spec's "mean bits per feature"."""
  return float(np.mean(np.asarray(bits_per_group)[np.asarray(group_of)]))


def pruned_fields(feature_bits: np.ndarray, field_offsets: np.ndarray) -> np.ndarray:
  """The fields every feature of which has width 0 (sorted int indices): they embed as zero vectors only.

  Args:
    feature_bits: (N,) the width of every feature.
    field_offsets: (F + 1,) field f owns the ids [field_offsets[f], field_offsets[f + 1]).
  """
  field_offsets = np.asarray(field_offsets, np.int64)
  kept_before = np.concatenate([[0], np.cumsum(np.asarray(feature_bits) > 0)])  # kept features below each id
  kept = kept_before[field_offsets[1:]] - kept_before[field_offsets[:-1]]
  return np.flatnonzero((kept == 0) & (field_offsets[1:] > field_offsets[:-1])).astype(np.int64)


def pruning_warning(group_bits: np.ndarray, feature_bits: np.ndarray, field_offsets: np.ndarray,
                    field_names=None) -> str | None:
  """One line when the selected widths prune everything, or every feature of some fields; else None.

  A pruned table still trains and evaluates (its fields embed as zero vectors; with all of them pruned the
  model is a constant predictor: AUC 0.5), so this is a warning, not an error: lambda was too strong.

  Args:
    group_bits: (G,) the selected width of each group.
    feature_bits: (N,) the width of every feature (`MixedPrecisionEmbedding.feature_bits`).
    field_offsets: (F + 1,) the fields' id ranges.
    field_names: optional F names, used instead of the field numbers.
  """
  group_bits = np.asarray(group_bits)
  if not np.any(group_bits > 0):
    return (f"all {group_bits.size} groups selected 0 bits: the embedding table is empty (the model predicts a "
            "constant); lower mpe.lam")
  fields = pruned_fields(feature_bits, field_offsets)
  if fields.size == 0:
    return None
  names = [str(field_names[f]) if field_names is not None else str(f) for f in fields]
  shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
  return (f"every feature of {len(names)} of {len(field_offsets) - 1} fields ({shown}) selected 0 bits: those "
          "fields embed as zero vectors; lower mpe.lam to keep them")


# ---------------------------------------------------------------------------------------------------------
# Quantized forward passes on gathered rows.


def mixed_quantize(rows: jax.Array, row_probs: jax.Array, alphas: jax.Array, beta: jax.Array,
                   table_size: int, candidate_bits=CANDIDATE_BITS) -> jax.Array:
  """Search forward: sum_{b != 0} p_b Q_b(rows).

  Args:
    rows: (..., D) gathered embedding rows.
    row_probs: (..., K) the precision probabilities of each row's group.
    alphas: (K,) effective steps, indexed like `candidate_bits` (the entry for b = 0 is unused).
    beta: (D,) offset.
    table_size: N * D of the whole table (for the LSQ+ gradient scale).
    candidate_bits: the widths B.
  """
  nonzero = [k for k, b in enumerate(candidate_bits) if b > 0]  # b = 0 contributes the zero vector.
  bits = tuple(int(candidate_bits[k]) for k in nonzero)
  return lsq.lsq_mixture(rows, row_probs[..., jnp.asarray(nonzero)], alphas[jnp.asarray(nonzero)], beta,
                         bits, table_size)


def frozen_quantize(rows: jax.Array, row_bits: jax.Array, alphas: jax.Array, beta: jax.Array,
                    table_size: int, candidate_bits=CANDIDATE_BITS) -> jax.Array:
  """Retrain forward: Q_{b_x}(w_x) with each row's frozen width b_x (zero vector where b_x = 0)."""
  nonzero = [k for k, b in enumerate(candidate_bits) if b > 0]
  bits = tuple(int(candidate_bits[k]) for k in nonzero)
  # Index of each row's width among the non-zero widths; -1 for pruned rows.
  lookup = np.full(max(candidate_bits) + 1, -1, np.int32)
  lookup[list(bits)] = np.arange(len(bits))
  width_index = jnp.asarray(lookup)[row_bits]
  return lsq.lsq_quantize_rowwise(rows, width_index, alphas[jnp.asarray(nonzero)], beta, bits, table_size)


class MixedPrecisionEmbedding(Embedding):
  """Table W with per-width LSQ+ steps, one offset and per-group precision logits.

  `phase` is static: 'search' mixes all widths with p_g = softmax(gamma_g / tau); 'retrain' uses the frozen
  widths in `group_bits`. Both phases have the same state, so one checkpoint layout serves both.
  """

  def __init__(self, num_features: int, dim: int, counts: np.ndarray, *, num_groups: int = 128,
               tau: float = DEFAULT_TAU, candidate_bits=CANDIDATE_BITS, rngs: nnx.Rngs):
    self.num_features, self.dim, self.tau = num_features, dim, tau
    self.candidate_bits = tuple(int(b) for b in candidate_bits)
    self.phase = "search"
    w0 = EMBEDDING_INIT_STD * jax.random.normal(rngs.params(), (num_features, dim))
    self.table = TableParam(w0)
    raw = [lsq.init_step(w0, b) if b > 0 else jnp.ones(()) for b in self.candidate_bits]
    self.alpha = QuantParam(jnp.stack(raw))
    self.beta = QuantParam(jnp.zeros((dim,)))
    self.gamma = QuantParam(jnp.zeros((num_groups, len(self.candidate_bits))))
    group_of, totals = frequency_groups(counts, num_groups)
    self.group_of = nnx.Variable(jnp.asarray(group_of))
    self.costs = nnx.Variable(jnp.asarray(group_costs(totals)))
    self.group_bits = nnx.Variable(jnp.full((num_groups,), max(self.candidate_bits), jnp.int32))

  def probs(self) -> jax.Array:
    return precision_probs(self.gamma[...], self.tau)

  def embed_rows(self, rows: jax.Array, ids: jax.Array) -> jax.Array:
    groups = self.group_of[...][ids]
    alphas = lsq.effective_step(self.alpha[...])
    size = self.num_features * self.dim
    if self.phase == "search":
      return mixed_quantize(rows, self.probs()[groups], alphas, self.beta[...], size, self.candidate_bits)
    return frozen_quantize(rows, self.group_bits[...][groups], alphas, self.beta[...], size,
                           self.candidate_bits)

  def regularizer(self) -> jax.Array:
    """The bit regulariser during search (lambda is applied by the trainer); nothing in retrain."""
    if self.phase == "search":
      return bit_regularizer(self.probs(), self.costs[...], self.candidate_bits)
    return jnp.zeros(())

  def feature_bits(self) -> np.ndarray:
    """(N,) the frozen width of every feature."""
    return np.asarray(self.group_bits[...])[np.asarray(self.group_of[...])]


# ---------------------------------------------------------------------------------------------------------
# Memory-accurate export.


def pack_bits(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
  """Packs unsigned `values` (N, D) row by row, row n at `widths[n]` bits per entry, into uint8 bytes.

  Entry bits are written least significant first, rows in id order, with no padding between rows; only the
  last byte is padded. A row of width 0 takes no bits.
  """
  values = np.asarray(values, dtype=np.int64)
  widths = np.asarray(widths, dtype=np.int64)
  max_width = int(widths.max(initial=0))
  if max_width == 0:
    return np.zeros((0,), np.uint8)
  shifts = np.arange(max_width)
  bits = (values[..., None] >> shifts) & 1  # (N, D, max_width)
  keep = np.broadcast_to(shifts < widths[:, None, None], bits.shape)
  return np.packbits(bits[keep].astype(np.uint8), bitorder="little")


def unpack_bits(packed: np.ndarray, widths: np.ndarray, dim: int) -> np.ndarray:
  """Inverse of `pack_bits`: (N, dim) unsigned values (rows of width 0 come back as 0)."""
  widths = np.asarray(widths, dtype=np.int64)
  max_width = int(widths.max(initial=0))
  n = widths.shape[0]
  if max_width == 0:
    return np.zeros((n, dim), np.int64)
  shifts = np.arange(max_width)
  keep = np.broadcast_to(shifts < widths[:, None, None], (n, dim, max_width))
  stream = np.unpackbits(np.asarray(packed, np.uint8), bitorder="little")[:int(keep.sum())]
  bits = np.zeros((n, dim, max_width), np.int64)
  bits[keep] = stream
  return np.sum(bits << shifts, axis=-1)


def width_field_bits(max_width: int) -> int:
  """Bits needed to store one width in [0, max_width]."""
  return max(1, math.ceil(math.log2(max_width + 1)))


def export_codes(table: np.ndarray, widths: np.ndarray, alphas: dict[int, float],
                 beta: np.ndarray | None) -> dict[str, np.ndarray]:
  """Everything needed to rebuild the quantized table, and nothing else.

  Stored: `codes` (uint8: each row's D codes clip(round((w - beta) / alpha_b), lo_b, hi_b) - lo_b packed at
  its width b), `widths` (uint8: each row's width packed at `width_field_bits(max b)` bits; replaced by a
  one-element `uniform_width` when all rows share it), `alpha` (float32 step of widths 1..max b, index b - 1),
  `beta` (float32 (D,), absent when the quantizer has no offset) and `shape` (int64 [N, D]). The group map
  is stored as each feature's width: the group id itself is not needed to decode, and 3 bits per feature
  is less than ceil(log2 G).

  Args:
    table: (N, D) float rows W.
    widths: (N,) width of each row (0 = pruned).
    alphas: effective step for each width in use.
    beta: (D,) offset, or None.
  """
  table = np.asarray(table, np.float32)
  widths = np.asarray(widths, np.int64)
  n, d = table.shape
  max_width = int(widths.max(initial=0))
  offset = np.zeros((d,), np.float32) if beta is None else np.asarray(beta, np.float32)
  unsigned = np.zeros((n, d), np.int64)
  for b in np.unique(widths):
    if b == 0:
      continue
    rows = widths == b
    codes = np.asarray(lsq.quantize_codes(jnp.asarray(table[rows]), jnp.float32(alphas[int(b)]),
                                          jnp.asarray(offset), int(b)))
    unsigned[rows] = codes - lsq.int_range(int(b))[0]
  out = {"codes": pack_bits(unsigned, widths), "shape": np.array([n, d], np.int64)}
  if np.unique(widths).size == 1:
    out["uniform_width"] = np.array([max_width], np.uint8)
  else:
    wbits = width_field_bits(max_width)
    out["widths"] = pack_bits(widths[:, None], np.full(n, wbits))
  out["alpha"] = np.array([alphas.get(b, 0.0) for b in range(1, max_width + 1)], np.float32)
  if beta is not None:
    out["beta"] = offset
  return out


def export_bytes(export: dict[str, np.ndarray]) -> int:
  """The exact storage of an export: the sum of its arrays' bytes."""
  return int(sum(np.asarray(a).nbytes for a in export.values()))


def decode_export(export: dict[str, np.ndarray]) -> np.ndarray:
  """Rebuilds the (N, D) float32 quantized table: alpha_b * code + beta, zero rows for width 0."""
  n, d = (int(x) for x in export["shape"])
  if "uniform_width" in export:
    widths = np.full(n, int(export["uniform_width"][0]), np.int64)
  else:
    max_width = export["alpha"].shape[0]
    wbits = width_field_bits(max_width)
    widths = unpack_bits(export["widths"], np.full(n, wbits), 1)[:, 0]
  unsigned = unpack_bits(export["codes"], widths, d)
  beta = export.get("beta", np.zeros((d,), np.float32))
  out = np.zeros((n, d), np.float32)
  for b in np.unique(widths):
    if b == 0:
      continue
    rows = widths == b
    codes = unsigned[rows] + lsq.int_range(int(b))[0]
    out[rows] = export["alpha"][b - 1] * codes.astype(np.float32) + beta
  return out
