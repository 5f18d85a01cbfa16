"""Training and evaluation of LightGCN (full precision) and HQ-GNN, driven by an ml_collections config.

Shape of the Flax examples: `create_model`, `create_optimizer`, `make_train_step`, `train_and_evaluate`.
The workdir holds `checkpoints/` (orbax, every `train.checkpoint_every` epochs), `metrics.jsonl` (one line
per evaluation), `results.json` and `export.npz` (the representations the final metrics were computed from).
Rerunning on a workdir resumes from its last checkpoint; the BPR sampler draws each epoch from
(seed, epoch), so a resumed run replays exactly the batches an uninterrupted run would have seen.
"""

import dataclasses
import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from hq_jax import evaluation
from hq_jax import export
from hq_jax.checkpoint import Checkpointer
from hq_jax.data.interactions import InteractionData, load_dataset, validation_split
from hq_jax.errors import UserError
from hq_jax.hqgnn import graph as graph_lib
from hq_jax.hqgnn import lightgcn
from hq_jax.hqgnn import model as model_lib
from hq_jax.hqgnn import sampling
from hq_jax.quant import curvature
from hq_jax.quant import module as quant_module
from hq_jax.workdir import RunDir, device_description, now_iso, progress


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
  if config.distill.weight < 0 or config.distill.top_r < 1 or config.distill.samples < 1:
    raise UserError("config.distill: weight must be >= 0, top_r and samples >= 1")
  if config.distill.weight > 0 and not (config.train.init_from or config.train.pretrain_epochs):
    raise UserError("config.distill.weight > 0 needs a teacher: set config.train.init_from to a trained run "
                    "(or config.train.pretrain_epochs)")
  if config.train.pretrain_epochs < 0:
    raise UserError(f"config.train.pretrain_epochs={config.train.pretrain_epochs} must be >= 0")
  evaluation.check_ks(config.eval.ks, data.num_items)
  delta_config(config)
  try:
    return model_lib.ModelConfig(
        num_users=data.num_users, num_items=data.num_items, dim=int(config.model.dim),
        num_layers=int(config.model.num_layers), init_std=config.model.init_std,
        aggregation=config.model.aggregation, quant=quantizer_config(config), codes=config.quant.codes,
        layer_weights=config.quant.layer_weights)
  except ValueError as e:
    raise UserError(f"config.quant (codes={config.quant.codes!r}, layer_weights={config.quant.layer_weights!r}): "
                    f"{e}") from None


def quantizer_config(config: ml_collections.ConfigDict) -> quant_module.QuantizerConfig | None:
  """The quantizer of `config.quant`, or None for full precision (`quant.bits = 'none'`)."""
  q = config.quant
  bits = str(q.bits).strip().lower()
  if bits in ("none", "fp", "32", ""):
    return None
  try:
    return quant_module.QuantizerConfig(
        bits=int(bits), estimator=q.estimator, one_bit_scale=q.one_bit_scale, scale_bits=int(q.scale_bits),
        gaussian_a=q.gaussian_a, init_num_std=q.init_num_std)
  except ValueError as e:
    raise UserError(f"config.quant (bits={q.bits!r}, estimator={q.estimator!r}): {e}; bits must be none, 1, 2, "
                    "3, 4 or 8 and estimator ste, gste or gaussian") from None


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
  """Everything about the data a training step needs, on device."""

  data: InteractionData
  graph: Any  # jraph.GraphsTuple
  adjacency: graph_lib.CSRAdjacency | None


def create_problem(config: ml_collections.ConfigDict, data: InteractionData) -> Problem:
  graph = graph_lib.bipartite_graph(data)
  adjacency = graph_lib.csr_adjacency(graph) if config.model.aggregation == "csr" else None
  return Problem(data=data, graph=graph, adjacency=adjacency)


def read_encoder(source_workdir: str, embedding_shape: tuple[int, int]) -> np.ndarray:
  """E0 of the latest checkpoint in `source_workdir` (a trained run), checked against `embedding_shape`.

  Raises:
    UserError: no checkpoint there, or its E0 has another shape (dataset, split or dim changed).
  """
  directory = os.path.join(source_workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise UserError(f"train.init_from={source_workdir!r}: no checkpoints folder there")
  with Checkpointer(directory) as source:
    step = source.latest_step()
    if step is None:
      raise UserError(f"train.init_from={source_workdir!r}: no checkpoint in {directory}")
    saved = source.restore_as_saved(step)
  theirs = saved.get("params", {}).get("encoder", {}) if isinstance(saved, dict) else {}
  leaves = jax.tree.leaves(theirs)
  if len(leaves) != 1 or tuple(np.shape(leaves[0])) != tuple(embedding_shape):
    raise UserError(f"train.init_from={source_workdir!r}: its encoder {[np.shape(x) for x in leaves]} does not "
                    f"match this config's {tuple(embedding_shape)} (dataset, split or dim changed?)")
  _log(f"encoder initialised from {directory} step {step}")
  return np.asarray(leaves[0], np.float32)


def create_model(config: ml_collections.ConfigDict, model_config: model_lib.ModelConfig,
                 problem: Problem) -> model_lib.HQGNN:
  """The model of `config.seed`; with `train.init_from`, E0 from that run (then the quantizer's ranges are
  set from the trained embeddings). The sampler still draws epoch e from (seed, e): with the source run's
  seed the first epochs replay its BPR triples (results/foundation.md); give a warm start another seed."""
  model = model_lib.HQGNN(model_config, rngs=nnx.Rngs(params=config.seed))
  if config.train.init_from:
    model.encoder.embedding[...] = jnp.asarray(read_encoder(config.train.init_from,
                                                            model.encoder.embedding[...].shape))
  model.init_quantizer(problem.graph, problem.adjacency)
  return model


LR_SCHEDULES = ("constant", "cosine")


def encoder_learning_rate(config: ml_collections.ConfigDict, steps_per_epoch: int = 1) -> optax.ScalarOrSchedule:
  """`train.learning_rate`, constant or (`train.lr_schedule = 'cosine'`) decayed to 0 over `train.epochs`.

  The cosine schedule is a function of the step, which Adam's state counts, so it resumes exactly; a resumed
  run with a different `train.epochs` follows a different schedule.
  """
  if config.train.lr_schedule == "constant":
    return config.train.learning_rate
  return optax.cosine_decay_schedule(config.train.learning_rate, max(config.train.epochs * steps_per_epoch, 1))


def create_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int = 1) -> optax.GradientTransformation:
  """Adam on the encoder's parameters; Adam with `quant.range_learning_rate` on the `QuantParam`s (by type)."""
  def labels(params):
    return jax.tree.map(lambda v: "quant" if isinstance(v, quant_module.QuantParam) else "encoder", params,
                        is_leaf=lambda v: isinstance(v, nnx.Variable))
  return optax.multi_transform({"encoder": optax.adam(encoder_learning_rate(config, steps_per_epoch)),
                                "quant": optax.adam(config.quant.range_learning_rate)}, labels)


def make_train_step(graphdef, tx: optax.GradientTransformation, *, num_users: int, decay: float,
                    distill_weight: float):
  """The jitted `train_step(params, opt_state, deltas, batch, graph, adjacency) -> (params, opt_state, metrics)`.

  Loss = BPR of the representations + decay * L2 of the batch's E0 rows (+ distill_weight * distillation).
  `deltas` are the GSTE's (ignored by other estimators). `batch` as in `epoch_batches`, one step's slice.
  """
  def loss_fn(params, deltas, batch, graph, adjacency):
    model = nnx.merge(graphdef, params)
    users, items = model(graph, adjacency, deltas)
    xhats = {"users": users, "items": items}
    bpr = model_lib.bpr_of_representations(xhats, batch, model.config.weights)
    t = batch["triples"]
    e0 = model.encoder.embedding[...]
    reg = lightgcn.l2_regularizer(e0[t[:, 0]], e0[num_users + t[:, 1]], e0[num_users + t[:, 2]], batch["weights"])
    loss = bpr + decay * reg
    aux = {"bpr": bpr, "reg": reg}
    if distill_weight:
      aux["distill"] = model_lib.distillation_loss(xhats, batch, model.config.weights)
      loss = loss + distill_weight * aux["distill"]
    return loss, aux

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(params, opt_state, deltas, batch, graph, adjacency):
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, deltas, batch, graph, adjacency)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(params)}
    return params, opt_state, metrics

  return train_step


def teacher_top_items(model: model_lib.HQGNN, problem: Problem, top_r: int, batch_size: int) -> np.ndarray:
  """(U, R) int32: each user's top-R non-training items by the full-precision final embeddings of `model`'s
  encoder (the distillation teacher), best first; users with fewer than R such items repeat their first."""
  fp = dataclasses.replace(model.config, quant=None, codes="final")
  teacher = model_lib.HQGNN(fp, rngs=nnx.Rngs(params=0))
  teacher.encoder.embedding[...] = model.encoder.embedding[...]
  users, items = jax.jit(lambda g, a: teacher(g, a))(problem.graph, problem.adjacency)
  top = evaluation.topk_items(np.asarray(users), np.asarray(items), problem.data,
                              np.arange(problem.data.num_users), top_r, batch_size=batch_size)
  return np.where(top >= 0, top, top[:, :1]).astype(np.int32)


def epoch_batches(data: InteractionData, seed: int, epoch: int, batch_size: int, teacher: np.ndarray | None = None,
                  distill: ml_collections.ConfigDict | None = None) -> dict:
  """One epoch's batches, a function of (seed, epoch) only (so a resumed run redraws them exactly):

    'triples' (steps, batch, 3) int32 BPR (user, positive, negative); 'weights' (steps, batch) float32,
    0 = padding; with a teacher, 'teacher_items' (steps, batch, m) int32: m = distill.samples items per row
    drawn from the user's teacher top-R with P(r) proportional to exp(-distill.decay * (r + 1)).
  """
  rng = sampling.epoch_rng(seed, epoch)
  triples = sampling.sample_bpr_epoch(data.train, data.num_items, rng)
  steps = -(-len(triples) // batch_size)
  pad = steps * batch_size - len(triples)
  weights = np.concatenate([np.ones(len(triples), np.float32), np.zeros(pad, np.float32)])
  triples = np.concatenate([triples, np.zeros((pad, 3), np.int32)])
  out = {"triples": triples.reshape(steps, batch_size, 3), "weights": weights.reshape(steps, batch_size)}
  if teacher is not None:
    p = np.exp(-distill.decay * (np.arange(teacher.shape[1]) + 1.0))
    ranks = rng.choice(teacher.shape[1], size=(len(triples), distill.samples), p=p / p.sum())
    out["teacher_items"] = teacher[triples[:, :1], ranks].reshape(steps, batch_size, distill.samples)
  return out


def _checkpoint_state(params, opt_state, deltas, epoch: int, seconds=(0.0, 0.0)) -> dict:
  """What a checkpoint holds; `seconds` = (training, curvature) seconds of all epochs so far."""
  return {"params": params, "opt_state": opt_state, "deltas": deltas, "epoch": np.asarray(epoch, np.int32),
          "seconds": np.asarray(seconds, np.float32)}


def _mean_of(tree) -> dict:
  return {name: float(jnp.mean(v)) for name, v in tree.items()}


def gradient_change(x: jax.Array, xhat: jax.Array, delta: jax.Array) -> dict:
  """Statistics of delta * |x - x^|, the relative change the GSTE makes to each gradient entry."""
  change = (jnp.asarray(delta) * jnp.abs(x - xhat)).reshape(-1)
  q = jnp.quantile(change, jnp.asarray([0.5, 0.99]))
  return {"mean": float(jnp.mean(change)), "median": float(q[0]), "p99": float(q[1]),
          "max": float(jnp.max(change)), "frac_above_1pct": float(jnp.mean(change > 0.01))}


def representation_bytes(users, items) -> int:
  """Bytes of the stored user + item representation: bit-packed codes + float32 scalars, or float32."""
  if hasattr(users, "nbytes_packed"):  # QuantizedMatrix or LayeredQuantized
    return users.nbytes_packed() + items.nbytes_packed()
  return 4 * (int(np.size(users)) + int(np.size(items)))


def _log(msg: str) -> None:
  print(msg, flush=True)


# Config keys that do not change the result: a rerun may change them (see `hq_jax.workdir.RunDir`).
RESULT_NEUTRAL_KEYS = ("train.log_every", "train.checkpoint_every", "train.stop_after_epochs", "eval.every",
                       "eval.batch_size")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, extend: bool = False) -> dict:
  """Trains per `config` in `workdir` (resuming it if it holds checkpoints); returns the results dict.

  Follows the run protocol of `hq_jax.workdir.RunDir`: a rerun with a config that differs in a key outside
  `RESULT_NEUTRAL_KEYS` stops with a `UserError`; `extend=True` allows a larger `train.epochs` (recorded).
  With `train.stop_after_epochs` > 0 the run stops once that many epochs are done and checkpointed (returns
  {'status': 'stopped', 'epoch': ...}, nothing final written): a deterministic stand-in for an interruption.
  """
  t_start = time.time()
  data = load_training_data(config)
  model_config = validate_config(config, data)
  run = RunDir(workdir, config, epochs_key="train.epochs", ignore=RESULT_NEUTRAL_KEYS, extend=extend)
  pretrained = None
  if config.train.pretrain_epochs:
    pretrained, config = pretrain(config, workdir)
    if pretrained.get("status") == "stopped":
      run.close()
      return pretrained
  dconfig = delta_config(config)
  problem = create_problem(config, data)
  graph_args = (problem.graph, problem.adjacency)

  # ------------------------------------------------------------------------------------------------------
  # Model, optimizer, steps.
  # ------------------------------------------------------------------------------------------------------
  model = create_model(config, model_config, problem)
  qconfig = model_config.quant
  teacher = (teacher_top_items(model, problem, config.distill.top_r, config.eval.batch_size)
             if config.distill.weight > 0 else None)
  graphdef, params = nnx.split(model)
  xhat_fn = jax.jit(lambda params, deltas, g, a: nnx.merge(graphdef, params)(g, a, deltas))
  if qconfig is not None:
    users0, items0 = model.embeddings(*graph_args)
    deltas = curvature.initial_deltas(dconfig, {"users": users0, "items": items0})
  else:
    deltas = {"users": jnp.zeros(()), "items": jnp.zeros(())}
  uses_curvature = qconfig is not None and qconfig.estimator == "gste" and dconfig.mode != "fixed"
  steps_per_epoch = -(-data.train.nnz // config.train.batch_size)
  tx = create_optimizer(config, steps_per_epoch)
  opt_state = tx.init(params)
  train_step = make_train_step(graphdef, tx, num_users=data.num_users, decay=config.train.decay,
                               distill_weight=float(config.distill.weight))
  float_fn = jax.jit(lambda params, g, a: nnx.merge(graphdef, params).embeddings(g, a))
  represent_fn = jax.jit(lambda params, g, a: nnx.merge(graphdef, params).quantize(g, a))
  curvature_loss = functools.partial(model_lib.bpr_of_representations, weights=model_config.weights)

  # ------------------------------------------------------------------------------------------------------
  # Checkpoint: resume from the newest one that restores.
  # ------------------------------------------------------------------------------------------------------
  start_epoch, seconds_before = 0, np.zeros(2)
  restored = run.restore(jax.eval_shape(lambda: _checkpoint_state(params, opt_state, deltas, 0)))
  if restored is not None:
    params, opt_state, deltas = restored["params"], restored["opt_state"], restored["deltas"]
    start_epoch, seconds_before = int(restored["epoch"]), np.asarray(restored["seconds"])
    _log(f"resumed from {run.checkpoints.directory} at epoch {start_epoch}")
  run.metrics.truncate_after(start_epoch if restored is not None else -1)

  # ------------------------------------------------------------------------------------------------------
  # Training loop.
  # ------------------------------------------------------------------------------------------------------
  epochs = config.train.epochs
  train_time = curvature_time = 0.0
  for epoch in range(start_epoch, epochs):
    t0 = time.time()
    batches = epoch_batches(data, config.seed, epoch, config.train.batch_size, teacher, config.distill)
    step_batch = lambda i: {k: v[i] for k, v in batches.items()}
    if uses_curvature and curvature.deltas_due(dconfig, epoch):
      t_delta = time.time()
      users_hat, items_hat = xhat_fn(params, deltas, *graph_args)
      xhats = {"users": users_hat, "items": items_hat}
      estimate = curvature.update_deltas(
          dconfig, curvature_loss, xhats,
          [step_batch(i) for i in range(min(dconfig.num_batches, steps_per_epoch))],
          jax.random.fold_in(jax.random.key(config.seed), epoch))
      deltas = jax.block_until_ready(estimate.deltas)
      delta_seconds = time.time() - t_delta
      curvature_time += delta_seconds
      xs = dict(zip(("users", "items"), float_fn(params, *graph_args)))
      run.metrics.append({"step": epoch, "epoch": epoch, "event": "delta", "delta": _mean_of(deltas),
                          "seconds": delta_seconds,
                          "curvature_per_element": _mean_of(estimate.curvature),
                          "curvature_stderr": _mean_of(estimate.stderr),
                          "hutchinson_samples": _mean_of(estimate.num_samples),
                          "grad_std": _mean_of(estimate.grad_std),
                          "gradient_change": {k: gradient_change(xs[k], xhats[k], deltas[k]) for k in xs}})
    losses = []
    for i in progress(range(steps_per_epoch), steps_per_epoch, f"epoch {epoch + 1}/{epochs}"):
      params, opt_state, metrics = train_step(params, opt_state, deltas, step_batch(i), *graph_args)
      losses.append(metrics["loss"])
    losses = np.asarray(jnp.stack(losses))
    run.check_finite(losses, epoch=epoch, first_step=epoch * steps_per_epoch)
    dt = time.time() - t0
    train_time += dt
    done = epoch + 1
    if done % config.train.log_every == 0 or done == epochs:
      extra = f"  delta {_mean_of(deltas)}" if uses_curvature else ""
      extra += f"  distill {float(metrics['distill']):.5f}" if "distill" in metrics else ""
      _log(f"epoch {done}/{epochs}  loss {losses.mean():.5f}  bpr {float(metrics['bpr']):.5f}  "
           f"grad_norm {float(metrics['grad_norm']):.4f}  {dt:.2f} s/epoch{extra}")
    record = None
    if config.eval.every and (done % config.eval.every == 0) and done != epochs:
      users, items = represent_fn(params, *graph_args)
      record = {"step": done, "epoch": done, "loss": float(losses.mean()),
                **evaluation.evaluate(users, items, data, ks=tuple(config.eval.ks),
                                      batch_size=config.eval.batch_size)}
      if qconfig is not None:
        record["delta"] = _mean_of(deltas)
      _log("  eval " + "  ".join(f"{k} {v:.4f}" for k, v in record.items() if "@" in k))
    if done % config.train.checkpoint_every == 0 or done == epochs:
      run.save(done, _checkpoint_state(params, opt_state, deltas, done,
                                       seconds_before + (train_time, curvature_time)))
    if record is not None:  # logged after the checkpoint that covers it, so a resume never duplicates it
      run.metrics.append(record)
    if config.train.stop_after_epochs and done >= config.train.stop_after_epochs and done < epochs:
      if run.latest_step() == done:
        run.close()
        return {"status": "stopped", "epoch": done}
  run.close()

  # ------------------------------------------------------------------------------------------------------
  # Final evaluation and export: the metrics are computed from exactly what export.npz stores.
  # ------------------------------------------------------------------------------------------------------
  users, items = jax.device_get(represent_fn(params, *graph_args))
  final = evaluation.evaluate(users, items, data, ks=tuple(config.eval.ks), batch_size=config.eval.batch_size)
  run.write_export(export.export_arrays(users, items))
  run.metrics.set_final({"step": epochs, "epoch": epochs, **final})
  stored = representation_bytes(users, items)
  results = {
      "config": config.to_dict(),
      "dataset": data.summary,
      "model": model_name(model_config),
      "metrics": final,
      "representation_bytes": stored,
      "bits_per_node": 8 * stored / (data.num_users + data.num_items),
      "compression_ratio": 4 * (data.num_users + data.num_items) * config.model.dim / stored,
      "epochs": epochs,
      "resumed_from_epoch": start_epoch,
      "train_seconds_this_run": train_time,
      "curvature_seconds_this_run": curvature_time,  # delta updates (included in train_seconds_this_run)
      # All epochs, over every run that trained this workdir (kept in the checkpoints):
      "train_seconds": float(seconds_before[0] + train_time),
      "curvature_seconds": float(seconds_before[1] + curvature_time),
      "seconds_per_epoch": float(seconds_before[0] + train_time) / max(epochs, 1),
      "wall_seconds_this_run": time.time() - t_start,
      "device": device_description(),
      "finished": now_iso(),
      "export": "export.npz",
  }
  if qconfig is not None:
    results["final_delta"] = _mean_of(deltas)
  if pretrained is not None:
    results["pretrain"] = {"workdir": config.train.init_from, "metrics": pretrained["metrics"],
                           "epochs": pretrained["epochs"], "train_seconds": pretrained["train_seconds"]}
  return run.write_results(results)


PRETRAIN_SEED_OFFSET = 1_000_003


def pretrain(config: ml_collections.ConfigDict, workdir: str) -> tuple[dict, ml_collections.ConfigDict]:
  """`train.pretrain_epochs` (ours): first a full-precision run of that many epochs in `<workdir>/pretrain`
  (seed + PRETRAIN_SEED_OFFSET, so its BPR triples are not replayed afterwards), then `config` starts from it
  (`train.init_from`; it is also the distillation teacher). Both stages resume like any run.

  Returns:
    (the pretraining results, the config of the second stage).
  """
  if config.train.init_from:
    raise UserError("config.train.pretrain_epochs and config.train.init_from exclude each other")
  stage = config.copy_and_resolve_references()
  with stage.unlocked():
    stage.seed = config.seed + PRETRAIN_SEED_OFFSET
    stage.quant.bits = "none"
    stage.distill.weight = 0.0
    stage.train.epochs = config.train.pretrain_epochs
    stage.train.pretrain_epochs = 0
    stage.eval.every = 0
  _log(f"pretraining full precision for {stage.train.epochs} epochs in {os.path.join(workdir, 'pretrain')}")
  results = train_and_evaluate(stage, os.path.join(workdir, "pretrain"))
  second = config.copy_and_resolve_references()
  with second.unlocked():
    second.train.init_from = os.path.join(workdir, "pretrain")
  return results, second


def model_name(c: model_lib.ModelConfig) -> str:
  """'lightgcn', or e.g. 'hqgnn-1bit-gste', 'hqgnn-1bit-ste-row8-layerwise-bigear'."""
  if c.quant is None:
    return "lightgcn"
  q = c.quant
  name = f"hqgnn-{q.bits}bit-{q.estimator}"
  if q.bits == 1 and q.one_bit_scale == "row":
    name += f"-row{q.scale_bits}"
  if c.codes == "layerwise":
    name += f"-layerwise-{c.layer_weights}"
  return name


def results_table(runs: list[dict]) -> str:
  """A markdown table of final metrics, one row per results dict."""
  keys = [k for k in runs[0]["metrics"] if "@" in k]
  lines = ["| dataset | model | " + " | ".join(keys) + " | epochs | s/epoch |",
           "|---|---|" + "---|" * (len(keys) + 2)]
  for r in runs:
    m = r["metrics"]
    lines.append(f"| {r['dataset']['name']} | {r.get('model', 'lightgcn')} | "
                 + " | ".join(f"{m[k]:.4f}" for k in keys)
                 + f" | {r['epochs']} | {r['seconds_per_epoch']:.2f} |")
  return "\n".join(lines)
