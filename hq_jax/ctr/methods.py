"""The CTR embedding methods of the MPE comparison as objects behind one small interface (ours).

`METHODS[config.method]` is all the trainer (`train.py`) knows about a method; it never branches on the name.
A method builds its table, names its phases (MPE: search, then retrain), weighs the table's regulariser per
phase, sets a phase up from the best point of the previous one (`MPE.next_phase`: the selection rule, W reset
to W0, widths frozen) and exports the stored table with its exact bytes.

Adding a method = one `Method` subclass + one line in `METHODS`. The subclass overrides `create_embedding`,
and other hooks only where it differs from a single-phase float32 table. Its embedding needs `__call__(ids)`,
`regularizer()` and `post_update(rng)` (as `models.Embedding`, which row tables subclass); to train with the
sparse table optimizers (`sparse.py`) it must be a `models.Embedding`, else the class sets `row_table = False`
and the trainer refuses them with a `UserError`.
"""

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from hq_jax.ctr import baselines, lsq, models, mpe
from hq_jax.errors import UserError

Config = ml_collections.ConfigDict


def size_summary(num_features: int, dim: int, exact_bytes: int, mean_bits: float) -> dict:
  """The spec's sizes: fp32 table bytes, exact stored bytes, mean bits per feature and both ratios.

  A ratio that cannot be a number (32 / 0 bits when every feature is pruned) is None, with
  `<name>_reason` beside it saying why (results.json is strict JSON: no Infinity).
  """
  fp32_bytes = num_features * dim * 4
  sizes = {"fp32_table_bytes": fp32_bytes, "exact_bytes": int(exact_bytes), "mean_bits_per_feature": mean_bits,
           "compression_bits": 32.0 / mean_bits if mean_bits > 0 else None,
           "compression_bytes": fp32_bytes / exact_bytes if exact_bytes > 0 else None}
  if mean_bits <= 0:
    sizes["compression_bits_reason"] = "every feature pruned (0 bits)"
  if exact_bytes <= 0:
    sizes["compression_bytes_reason"] = "nothing stored (0 bytes)"
  return sizes


def code_export(emb: models.Embedding, widths: np.ndarray, alphas: dict[int, float],
                beta: np.ndarray | None) -> tuple[dict, dict]:
  """(sizes, arrays) of a quantized row table stored as `mpe.export_codes` (codes at `widths` (N,))."""
  arrays = mpe.export_codes(np.asarray(emb.table[...]), widths, alphas, beta)
  return size_summary(emb.num_features, emb.dim, mpe.export_bytes(arrays), float(np.mean(widths))), arrays


class Method:
  """One CTR embedding method: its table, its training phases and its stored form."""

  phases: tuple[str, ...] = ("train",)  # Trained in this order, each with its own early stopping.
  row_table: bool = True  # The embedding is a `models.Embedding`: the sparse table optimizers apply.

  def validate(self, config: Config) -> None:
    """Raises `UserError` for a setting this method cannot run."""

  def create_embedding(self, config: Config, num_features: int, counts: np.ndarray, rngs: nnx.Rngs) -> nnx.Module:
    """The embedding module for `num_features` features; `counts` (N,) are the train-split counts."""
    raise NotImplementedError

  def enter_phase(self, embedding: nnx.Module, phase: str) -> None:
    """Puts `embedding` in `phase` before the trainer splits a graph off it (one phase: nothing to do)."""

  def regularizer_weight(self, config: Config, phase: str) -> float:
    """The loss weight of `embedding.regularizer()` during `phase`."""
    return 0.0

  def next_phase(self, config: Config, embedding: nnx.Module, initial: nnx.Module) -> None:
    """Sets `embedding` (best point of the phase just finished) up for the next phase; `initial`: W0's."""
    raise NotImplementedError(f"{type(self).__name__} has a single phase")

  def phase_warning(self, embedding: nnx.Module, field_offsets: np.ndarray, field_names=None) -> str | None:
    """One line for the user about `embedding` as `next_phase` left it (e.g. everything pruned), or None."""
    return None

  def epoch_record(self, embedding: nnx.Module, phase: str, mean_regularizer: float) -> dict:
    """Extra fields of an epoch's metrics.jsonl record."""
    return {}

  def export(self, embedding: nnx.Module) -> tuple[dict, dict | None]:
    """(`size_summary`, arrays for export.npz or None): a float32 table by default."""
    n, d = embedding.num_features, embedding.dim
    return size_summary(n, d, n * d * 4, 32.0), None

  def results_extra(self, config: Config, embedding: nnx.Module, counts: np.ndarray,
                    phase_best_auc: np.ndarray) -> dict:
    """Extra fields of results.json; `phase_best_auc` (phases,) is each phase's best validation AUC."""
    return {}


class FullPrecision(Method):
  """The float32 table (the spec's baseline)."""

  def create_embedding(self, config, num_features, counts, rngs):
    return models.Embedding(num_features, config.model.dim, rngs=rngs)


class LSQ(Method):
  """LSQ+ at one fixed width `config.lsq.bits` (6 in the authors' comparison)."""

  offset = True  # LSQ+ learns an offset beta; ALPT has none.

  def create_embedding(self, config, num_features, counts, rngs):
    return baselines.LSQEmbedding(num_features, config.model.dim, config.lsq.bits, rngs=rngs)

  def export(self, embedding):
    widths, step = np.full(embedding.num_features, embedding.bits), lsq.effective_step(embedding.alpha[...])
    beta = np.asarray(embedding.beta[...]) if self.offset else None
    return code_export(embedding, widths, {embedding.bits: float(step)}, beta)


class ALPT(LSQ):
  """ALPT: the table stored as `config.alpt.bits`-bit integers times a learnt step (exported as LSQ+'s)."""

  offset = False

  def create_embedding(self, config, num_features, counts, rngs):
    return baselines.ALPTEmbedding(num_features, config.model.dim, config.alpt.bits, rngs=rngs)


class QR(Method):
  """The quotient-remainder trick with `config.qr.ratio`: two float tables, no single row table."""

  row_table = False  # Two tables indexed by x // m and x mod m: the sparse optimizers are refused.

  def create_embedding(self, config, num_features, counts, rngs):
    return baselines.QREmbedding(num_features, config.model.dim, config.qr.ratio, rngs=rngs)

  def export(self, embedding):
    n, d, floats = embedding.num_features, embedding.dim, embedding.stored_floats()
    return size_summary(n, d, floats * 4, 32.0 * floats / (n * d)), None


class MPE(Method):
  """MPE: search widths per frequency group (bit regulariser weighted by `config.mpe.lam`), then retrain."""

  phases = ("search", "retrain")
  SELECTIONS = ("threshold", "sampling")  # The authors' rule; ours (`mpe.select_bits_sampling`).

  def validate(self, config):
    if config.mpe.selection not in self.SELECTIONS:
      raise UserError(f"config.mpe.selection: {config.mpe.selection!r} is neither 'threshold' nor 'sampling'")

  def create_embedding(self, config, num_features, counts, rngs):
    return mpe.MixedPrecisionEmbedding(num_features, config.model.dim, counts, rngs=rngs, tau=config.mpe.tau,
                                       num_groups=min(config.mpe.num_groups, num_features))

  def enter_phase(self, embedding, phase):
    embedding.phase = phase

  def regularizer_weight(self, config, phase):
    return float(config.mpe.lam) if phase == "search" else 0.0

  def next_phase(self, config, embedding, initial):
    """The spec's retrain: each group's width chosen by `config.mpe.selection` from its p_g, W reset to W0,
    widths frozen; alpha, beta and the dense layers stay at the best search point."""
    probs = np.asarray(embedding.probs())
    if config.mpe.selection == "threshold":
      bits = mpe.select_bits_threshold(probs, embedding.candidate_bits)
    else:
      bits = mpe.select_bits_sampling(probs, config.seed, embedding.candidate_bits)
    embedding.table[...] = initial.table[...]
    embedding.group_bits[...] = jnp.asarray(bits, jnp.int32)

  def phase_warning(self, embedding, field_offsets, field_names=None):
    return mpe.pruning_warning(np.asarray(embedding.group_bits[...]), embedding.feature_bits(), field_offsets,
                               field_names)

  def epoch_record(self, embedding, phase, mean_regularizer):
    if phase != "search":
      return {}
    bits = mpe.select_bits_threshold(np.asarray(embedding.probs()))
    return {"expected_reg": mean_regularizer,
            "mean_bits_if_selected_now": mpe.mean_bits_per_feature(bits, np.asarray(embedding.group_of[...]))}

  def export(self, embedding):
    steps = np.asarray(lsq.effective_step(embedding.alpha[...]))
    alphas = {b: float(a) for b, a in zip(embedding.candidate_bits, steps) if b > 0}
    return code_export(embedding, embedding.feature_bits(), alphas, np.asarray(embedding.beta[...]))

  def results_extra(self, config, embedding, counts, phase_best_auc):
    group_of = np.asarray(embedding.group_of[...])
    num_groups = embedding.gamma.shape[0]
    sizes = np.bincount(group_of, minlength=num_groups)
    totals = np.bincount(group_of, weights=counts, minlength=num_groups)
    return {"search_valid_auc": float(phase_best_auc[0]),
            "groups": {"bits": np.asarray(embedding.group_bits[...]).tolist(),
                       "mean_count": (totals / np.maximum(sizes, 1)).tolist(), "size": sizes.tolist(),
                       "selection": config.mpe.selection}}


METHODS: dict[str, Method] = {"fp": FullPrecision(), "lsq": LSQ(), "alpt": ALPT(), "qr": QR(), "mpe": MPE()}
