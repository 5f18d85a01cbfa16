"""From an ml_collections config to what the HQ-GNN trainer runs: checked config, data, graph (on one device
or split over a mesh), model and optimizer (ours; the trainer, `hq_jax.hqgnn.train`, keeps only training).

Every config error is a `UserError` naming the key.
"""

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from hq_jax import evaluation
from hq_jax import parallel
from hq_jax.checkpoint import Checkpointer
from hq_jax.data.interactions import InteractionData, load_dataset, validation_split
from hq_jax.errors import UserError
from hq_jax.hqgnn import graph as graph_lib
from hq_jax.hqgnn import model as model_lib
from hq_jax.hqgnn import sharded
from hq_jax.quant import curvature
from hq_jax.quant import module as quant_module
from hq_jax.quant import pq
from hq_jax.quant import rotation


def _log(msg: str) -> None:
  print(msg, flush=True)


def validate_config(config: ml_collections.ConfigDict, data: InteractionData) -> model_lib.ModelConfig:
  """Checks values that config_flags cannot (choices, ranges); returns the model's config.

  Raises:
    UserError: naming the key.
  """
  if config.model.aggregation not in ("segment", "csr"):
    raise UserError(f"config.model.aggregation={config.model.aggregation!r}: expected 'segment' or 'csr'")
  for key in ("dim", "num_layers"):
    if int(config.model[key]) < (1 if key == "dim" else 0):
      raise UserError(f"config.model.{key}={config.model[key]} is out of range")
  if config.train.batch_size < 1 or config.train.epochs < 0:
    raise UserError("config.train.batch_size must be >= 1 and config.train.epochs >= 0")
  if config.train.lr_schedule not in LR_SCHEDULES:
    raise UserError(f"config.train.lr_schedule={config.train.lr_schedule!r}: expected one of {LR_SCHEDULES}")
  warmup = config.train.warmup_epochs
  if warmup and (config.train.lr_schedule != "cosine" or not 0 < warmup < max(config.train.epochs, 1)):
    raise UserError(f"config.train.warmup_epochs={warmup}: needs lr_schedule='cosine' and 0 < warmup_epochs < "
                    f"train.epochs={config.train.epochs}")
  if config.distill.weight < 0 or config.distill.top_r < 1 or config.distill.samples < 1:
    raise UserError("config.distill: weight must be >= 0, top_r and samples >= 1")
  if config.distill.weight > 0 and not (config.train.init_from or config.train.pretrain_epochs):
    raise UserError("config.distill.weight > 0 needs a teacher: set config.train.init_from to a trained run "
                    "(or config.train.pretrain_epochs)")
  if config.quant.rotation not in ROTATIONS:
    raise UserError(f"config.quant.rotation={config.quant.rotation!r}: expected one of {ROTATIONS}")
  if config.quant.rotation != "none" and (
      quantizer_config(config) is None or not (config.train.init_from or config.train.pretrain_epochs)):
    raise UserError(f"config.quant.rotation={config.quant.rotation!r} rotates a trained encoder before it is "
                    "quantized: it needs quant.bits and config.train.init_from (or config.train.pretrain_epochs)")
  _check_pq_config(config)
  if config.train.pretrain_epochs < 0:
    raise UserError(f"config.train.pretrain_epochs={config.train.pretrain_epochs} must be >= 0")
  evaluation.check_ks(config.eval.ks, data.num_items)
  delta_config(config)
  try:
    return model_lib.ModelConfig(
        num_users=data.num_users, num_items=data.num_items, dim=int(config.model.dim),
        num_layers=int(config.model.num_layers), init_std=config.model.init_std,
        aggregation=config.model.aggregation, quant=quantizer_config(config), codes=config.quant.codes,
        layer_weights=config.quant.layer_weights, drop_user_scales=bool(config.quant.drop_user_scales))
  except ValueError as e:
    q = config.quant
    raise UserError(f"config.quant (bits={q.bits!r}, one_bit_scale={q.one_bit_scale!r}, codes={q.codes!r}, "
                    f"layer_weights={q.layer_weights!r}, drop_user_scales={q.drop_user_scales!r}): {e}") from None


PQ_ROTATIONS = ("none", "opq")


def _check_pq_config(config: ml_collections.ConfigDict) -> None:
  """The product-code keys that `QuantizerConfig` cannot check: the rotation, and M dividing d."""
  q = config.quant
  if q.kind != "pq":
    if q.pq_rotation != "none":
      raise UserError(f"config.quant.pq_rotation={q.pq_rotation!r} needs config.quant.kind='pq'")
    return
  if q.pq_rotation not in PQ_ROTATIONS:
    raise UserError(f"config.quant.pq_rotation={q.pq_rotation!r}: expected one of {PQ_ROTATIONS}")
  if q.pq_rotation != "none" and not (config.train.init_from or config.train.pretrain_epochs):
    raise UserError(f"config.quant.pq_rotation={q.pq_rotation!r} rotates a trained encoder before it is quantized: "
                    "it needs config.train.init_from (or config.train.pretrain_epochs)")
  if q.rotation != "none":
    raise UserError(f"config.quant.rotation={q.rotation!r} is ITQ's, for sign codes; product codes take "
                    "config.quant.pq_rotation")
  if q.pq_learning_rate < 0:
    raise UserError(f"config.quant.pq_learning_rate={q.pq_learning_rate} must be >= 0")
  try:
    pq.check_pq_shape(int(config.model.dim), int(q.pq_subspaces), int(q.pq_bits))
  except ValueError as e:
    raise UserError(f"config.quant.pq_subspaces={q.pq_subspaces}, pq_bits={q.pq_bits}: {e}") from None


def quantizer_config(config: ml_collections.ConfigDict) -> quant_module.QuantizerConfig | None:
  """The quantizer of `config.quant`, or None for full precision (`quant.bits = 'none'` and kind 'scalar')."""
  q = config.quant
  bits = str(q.bits).strip().lower()
  if q.kind == "pq":
    if bits not in ("none", "fp", "32", ""):
      raise UserError(f"config.quant.bits={q.bits!r} is for scalar codes; product codes (quant.kind='pq') take "
                      "config.quant.pq_subspaces and config.quant.pq_bits (leave quant.bits = none)")
    try:
      return quant_module.QuantizerConfig(
          kind="pq", estimator=q.estimator, pq_subspaces=int(q.pq_subspaces), pq_bits=int(q.pq_bits),
          pq_codebooks=q.pq_codebooks, pq_sides=q.pq_sides, pq_update=q.pq_update, pq_ema_decay=float(q.pq_ema_decay),
          pq_kmeans_iterations=int(q.pq_kmeans_iterations), pq_seed=int(config.seed))
    except ValueError as e:
      raise UserError(f"config.quant (kind='pq', estimator={q.estimator!r}): {e}") from None
  if q.kind != "scalar":
    raise UserError(f"config.quant.kind={q.kind!r}: expected one of {quant_module.KINDS}")
  if bits in ("none", "fp", "32", ""):
    return None
  supported = quant_module.quantizer.SUPPORTED_BITS
  if not (bits.isdigit() and int(bits) in supported):
    raise UserError(f"config.quant (bits={q.bits!r}): bits must be none (full precision) or one of "
                    f"{', '.join(map(str, supported))}")
  try:
    return quant_module.QuantizerConfig(
        bits=int(bits), estimator=q.estimator, one_bit_scale=q.one_bit_scale, scale_bits=int(q.scale_bits),
        gaussian_a=q.gaussian_a, init_num_std=q.init_num_std)
  except ValueError as e:
    hint = "; estimator must be ste, gste or gaussian" if "estimator" in str(e) else ""
    raise UserError(f"config.quant (bits={q.bits!r}, estimator={q.estimator!r}): {e}{hint}") from None


def delta_config(config: ml_collections.ConfigDict) -> curvature.DeltaConfig:
  """How the GSTE's delta is set: from the Hessian trace (spec), its diagonal (ours), or fixed."""
  q = config.quant
  try:
    return curvature.DeltaConfig(mode=q.delta, fixed_delta=q.fixed_delta, multiplier=q.delta_multiplier,
                                 every_epochs=q.delta_every, num_batches=q.delta_batches,
                                 max_samples=q.hutchinson_max_samples, rtol=q.hutchinson_rtol)
  except ValueError as e:
    raise UserError(f"config.quant.delta={q.delta!r}: {e} (expected trace, diagonal or fixed)") from None


EVAL_SPLITS = ("test", "valid")
ROTATIONS = ("none", "itq")


def load_training_data(config: ml_collections.ConfigDict) -> InteractionData:
  """The dataset of `config.data_dir`; with `eval.split = 'valid'`, train minus a validation split carved
  from it (`eval.valid_fraction` of each user's items, drawn from `eval.valid_seed`), evaluated on that."""
  if config.eval.split not in EVAL_SPLITS:
    raise UserError(f"config.eval.split={config.eval.split!r}: expected one of {EVAL_SPLITS}")
  data = load_dataset(config.data_dir)
  if config.eval.split == "valid":
    try:
      data = validation_split(data, config.eval.valid_fraction, config.eval.valid_seed)
    except ValueError as e:
      raise UserError(f"config.eval.valid_fraction={config.eval.valid_fraction}: {e}") from None
  return data


@dataclasses.dataclass
class Problem:
  """Everything about the data a training step needs, on device (or on the mesh)."""

  data: InteractionData
  graph: Any  # jraph.GraphsTuple, or None when A~ is split over a mesh (not needed there)
  adjacency: Any  # graph.CSRAdjacency, sharded.ShardedCSR, or None (segment aggregation)
  num_rows: int  # rows of E0: U + I, padded on a mesh (hq_jax.parallel's padding rule)
  mesh: jax.sharding.Mesh | None = None  # None: one device, nothing sharded

  @property
  def graph_args(self) -> tuple:
    return self.graph, self.adjacency


def create_problem(config: ml_collections.ConfigDict, data: InteractionData,
                   mesh: jax.sharding.Mesh | None = None) -> Problem:
  """The graph on one device, or A~ split by node rows over `mesh` (when it has several devices or the table
  is padded by `config.mesh.row_multiple`)."""
  graph = graph_lib.bipartite_graph(data)
  n = data.num_users + data.num_items
  num_rows = parallel.padded_rows(n, mesh, config.mesh.row_multiple) if mesh is not None else n
  if mesh is not None and (mesh.size > 1 or num_rows != n):
    if config.model.aggregation != "csr":
      raise UserError("config.model.aggregation='segment' runs on one device only; use 'csr' on a mesh")
    return Problem(data=data, graph=None, num_rows=num_rows, mesh=mesh,
                   adjacency=sharded.sharded_csr_adjacency(graph, mesh, num_rows=num_rows))
  adjacency = graph_lib.csr_adjacency(graph) if config.model.aggregation == "csr" else None
  return Problem(data=data, graph=graph, adjacency=adjacency, num_rows=n)


def read_encoder(source_workdir: str, embedding_shape: tuple[int, int], *, what: str = "train.init_from") -> np.ndarray:
  """E0 of the latest checkpoint in `source_workdir` (a trained run), checked against `embedding_shape`
  (U + I, d); rows a mesh padded it with (all zero: no edge or triple reaches them) are dropped.

  Args:
    what: how error messages name `source_workdir` (the config key or flag that gave it).

  Raises:
    UserError: no checkpoint there, or its E0 has another shape: another dim, fewer rows, or more rows that
      are not the zero padding of a mesh (dataset, split or dim changed).
  """
  directory = os.path.join(source_workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise UserError(f"{what}={source_workdir!r}: no checkpoints folder there")
  with Checkpointer(directory) as source:
    step = source.latest_step()
    if step is None:
      raise UserError(f"{what}={source_workdir!r}: no checkpoint in {directory}")
    saved = source.restore_as_saved(step)
  theirs = saved.get("params", {}).get("encoder", {}) if isinstance(saved, dict) else {}
  leaves = [np.asarray(x) for x in jax.tree.leaves(theirs)]
  rows, dim = embedding_shape
  e0 = leaves[0] if len(leaves) == 1 else None
  if e0 is None or e0.ndim != 2 or e0.shape[1] != dim or e0.shape[0] < rows or np.any(e0[rows:]):
    raise UserError(f"{what}={source_workdir!r}: its encoder {[np.shape(x) for x in leaves]} does not match this "
                    f"config's {tuple(embedding_shape)} (dataset, split or dim changed?)")
  _log(f"encoder initialised from {directory} step {step}")
  return np.asarray(e0[:rows], np.float32)


def model_factory(config: ml_collections.ConfigDict, model_config: model_lib.ModelConfig):
  """`make(graph, adjacency) -> HQGNN`: the model of `config.seed`; with `train.init_from`, E0 from that run
  (then the quantizer's ranges are set from the trained embeddings). Pure, so it can run under jit with
  `out_shardings` (state created already sharded). The sampler still draws epoch e from (seed, e): with the
  source run's seed the first epochs replay its BPR triples (results/foundation.md); give it another seed.
  With `quant.rotation = 'itq'`, the loaded E0 is rotated by ITQ's rotation of its final embeddings
  (`hq_jax.quant.rotation`; scores unchanged) before the quantizer is set from them; with product codes and
  `quant.pq_rotation = 'opq'`, by OPQ's rotation (`pq.opq_rotation`). Product-code codebooks start from a
  k-means of the (rotated) embeddings seeded by `config.seed`."""
  e0 = None
  if config.train.init_from:
    e0 = read_encoder(config.train.init_from, (model_config.num_users + model_config.num_items, model_config.dim))
  rotate = config.quant.rotation == "itq"
  opq = config.quant.kind == "pq" and config.quant.pq_rotation == "opq"

  def make(graph, adjacency) -> model_lib.HQGNN:
    model = model_lib.HQGNN(model_config, rngs=nnx.Rngs(params=config.seed))
    if e0 is not None:
      model.encoder.embedding[...] = parallel.pad_rows(jnp.asarray(e0), model.encoder.embedding.shape[0])
      if rotate:
        users, items = model.final_embeddings(graph, adjacency)
        model.rotate_encoder(rotation.itq_rotation(jnp.concatenate([users, items]), jax.random.key(config.seed),
                                                   int(config.quant.itq_iterations)))
      if opq:  # one R for both sides (scores unchanged), from users and items stacked
        users, items = model.final_embeddings(graph, adjacency)
        q = model_config.quant
        r, _ = pq.opq_rotation(jnp.concatenate([users, items]), q.pq_subspaces, q.pq_bits,
                               jax.random.key(config.seed), iterations=int(config.quant.pq_opq_iterations),
                               kmeans_iterations=q.pq_kmeans_iterations)
        model.rotate_encoder(r)
    model.init_quantizer(graph, adjacency)
    return model

  return make


def create_model(config: ml_collections.ConfigDict, model_config: model_lib.ModelConfig,
                 problem: Problem) -> model_lib.HQGNN:
  """The model of `model_factory`, built eagerly on `problem`'s graph (benchmarks, notebooks)."""
  return model_factory(config, model_config)(*problem.graph_args)


LR_SCHEDULES = ("constant", "cosine")


def encoder_learning_rate(config: ml_collections.ConfigDict, steps_per_epoch: int = 1) -> optax.ScalarOrSchedule:
  """`train.learning_rate`, constant or (`train.lr_schedule = 'cosine'`) decayed to 0 over `train.epochs`.

  With `train.warmup_epochs = w > 0` the cosine schedule first rises linearly from 0 to the peak over w epochs
  (optax.warmup_cosine_decay_schedule; the decay then spans the remaining epochs). The schedule is a function
  of the step, which Adam's state counts, so it resumes exactly; a resumed run with a different
  `train.epochs` follows a different schedule.
  """
  if config.train.lr_schedule == "constant":
    return config.train.learning_rate
  total = max(config.train.epochs * steps_per_epoch, 1)
  warmup = config.train.warmup_epochs * steps_per_epoch
  if warmup == 0:
    return optax.cosine_decay_schedule(config.train.learning_rate, total)
  return optax.warmup_cosine_decay_schedule(0.0, config.train.learning_rate, warmup, max(total, warmup + 1))


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int = 1) -> optax.GradientTransformation:
  """Adam on the encoder's parameters; Adam with `quant.range_learning_rate` on the `QuantParam`s (by type),
  with `quant.pq_learning_rate` on product-code codebooks learned by gradient; EMA codebooks and their
  statistics (`EMAState`) are left to the trainer's EMA update."""
  def label(v):
    if isinstance(v, quant_module.CodebookParam):
      return "codebook"
    if isinstance(v, quant_module.EMAState):
      return "ema"
    return "quant" if isinstance(v, quant_module.QuantParam) else "encoder"

  def labels(params):
    return jax.tree.map(label, params, is_leaf=lambda v: isinstance(v, nnx.Variable))
  transforms = {"encoder": optax.adam(encoder_learning_rate(config, steps_per_epoch)),
                "quant": optax.adam(config.quant.range_learning_rate)}
  if config.quant.kind == "pq":  # only then, so that scalar-code checkpoints keep their optimizer state's layout
    transforms.update(codebook=optax.adam(config.quant.pq_learning_rate), ema=optax.set_to_zero())
  return optax.multi_transform(transforms, labels)


def model_name(c: model_lib.ModelConfig) -> str:
  """'lightgcn', or e.g. 'hqgnn-1bit-gste', 'hqgnn-1bit-ste-row8-layerwise-bigear'."""
  if c.quant is None:
    return "lightgcn"
  q = c.quant
  if q.kind == "pq":
    return (f"hqgnn-pq{q.pq_subspaces}x{q.pq_bits}-{q.estimator}-"
            + ("items" if q.pq_sides == "items" else q.pq_codebooks) + ("-ema" if q.pq_update == "ema" else ""))
  name = f"hqgnn-{q.bits}bit-{q.estimator}"
  if q.bits == 1 and q.one_bit_scale == "row":
    name += f"-row{q.scale_bits}"
  if c.drop_user_scales:
    name += "-itemscales"
  if c.codes == "layerwise":
    name += f"-layerwise-{c.layer_weights}"
  return name
