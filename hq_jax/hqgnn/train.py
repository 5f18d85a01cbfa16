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
from hq_jax.checkpoint import Checkpointer
from hq_jax.data.interactions import InteractionData, load_dataset, validation_split
from hq_jax.errors import UserError
from hq_jax.hqgnn import graph as graph_lib
from hq_jax.hqgnn import lightgcn
from hq_jax.hqgnn import sampling
from hq_jax.quant import curvature
from hq_jax.quant import module as quant_module
from hq_jax.quant.quantizer import QuantizedMatrix
from hq_jax.workdir import RunDir, device_description, now_iso, progress


def validate_config(config: ml_collections.ConfigDict, data: InteractionData) -> None:
  """Checks values that config_flags cannot (choices, ranges); raises UserError naming the key."""
  if config.model.aggregation not in ("segment", "csr"):
    raise UserError(f"config.model.aggregation={config.model.aggregation!r}: expected 'segment' or 'csr'")
  for key in ("dim", "num_layers"):
    if int(config.model[key]) < (1 if key == "dim" else 0):
      raise UserError(f"config.model.{key}={config.model[key]} is out of range")
  if config.train.batch_size < 1 or config.train.epochs < 0:
    raise UserError("config.train.batch_size must be >= 1 and config.train.epochs >= 0")
  if config.train.lr_schedule not in LR_SCHEDULES:
    raise UserError(f"config.train.lr_schedule={config.train.lr_schedule!r}: expected one of {LR_SCHEDULES}")
  evaluation.check_ks(config.eval.ks, data.num_items)
  quantizer_config(config)
  delta_config(config)


def quantizer_config(config: ml_collections.ConfigDict) -> quant_module.QuantizerConfig | None:
  """The quantizer of `config.quant`, or None for full precision (`quant.bits = 'none'`)."""
  bits = str(config.quant.bits).strip().lower()
  if bits in ("none", "fp", "32", ""):
    return None
  try:
    return quant_module.QuantizerConfig(
        bits=int(bits), estimator=config.quant.estimator, one_bit_scale=config.quant.one_bit_scale,
        init_num_std=config.quant.init_num_std)
  except ValueError as e:
    raise UserError(f"config.quant (bits={config.quant.bits!r}, estimator={config.quant.estimator!r}): {e}; "
                    "bits must be none, 1, 2, 3, 4 or 8 and estimator ste or gste") from None


def delta_config(config: ml_collections.ConfigDict) -> curvature.DeltaConfig:
  """How the GSTE's delta is set: from the Hessian trace (spec), its diagonal (ours), or fixed."""
  q = config.quant
  try:
    return curvature.DeltaConfig(mode=q.delta, fixed_delta=q.fixed_delta, every_epochs=q.delta_every,
                                 num_batches=q.delta_batches, max_samples=q.hutchinson_max_samples,
                                 rtol=q.hutchinson_rtol)
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


def create_model(config: ml_collections.ConfigDict, data: InteractionData, seed: int) -> lightgcn.LightGCN:
  return lightgcn.LightGCN(data.num_users, data.num_items, config.model.dim,
                           init_std=config.model.init_std, rngs=nnx.Rngs(params=seed))


def warm_start_encoder(encoder_params, source_workdir: str):
  """The encoder parameters of the latest checkpoint in `source_workdir`, checked against ours.

  Used by `train.init_from`: quantized runs can start from a trained full-precision encoder (the quantizer's
  range is then initialised from the trained embeddings). Only the encoder's parameters are taken; the
  optimizer state starts fresh. The sampler still draws epoch e from (seed, e): with the source run's seed,
  the first epochs replay the source's BPR triples (on Gowalla the BPR loss rose ~70% at the first epoch
  past the source's, results/foundation.md); pass another `seed` for fresh triples.
  """
  directory = os.path.join(source_workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise UserError(f"train.init_from={source_workdir!r}: no checkpoints folder there")
  with Checkpointer(directory) as source:
    step = source.latest_step()
    if step is None:
      raise UserError(f"train.init_from={source_workdir!r}: no checkpoint in {directory}")
    saved = source.restore_as_saved(step)
  theirs = saved.get("params", {}).get("encoder") if isinstance(saved, dict) else None
  signature = lambda tree: [(jax.tree_util.keystr(path, simple=True, separator="/"), np.shape(x))
                            for path, x in jax.tree_util.tree_leaves_with_path(tree)]
  if theirs is None or signature(theirs) != signature(encoder_params):
    raise UserError(f"train.init_from={source_workdir!r}: its encoder does not match this config "
                    f"(dataset, dim or model changed?)")
  _log(f"encoder initialised from {directory} step {step}")
  leaves = [jnp.asarray(x, ours.dtype) for x, ours in
            zip(jax.tree.leaves(theirs), jax.tree.leaves(encoder_params))]
  return jax.tree.unflatten(jax.tree.structure(encoder_params), leaves)


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
  """Adam on the encoder; Adam with `quant.range_learning_rate` on the quantizer's range / scale."""
  def labels(params):
    return {name: jax.tree.map(lambda _: name, sub) for name, sub in params.items()}
  return optax.multi_transform({"encoder": optax.adam(encoder_learning_rate(config, steps_per_epoch)),
                                "quant": optax.adam(config.quant.range_learning_rate)}, labels)


def final_embeddings(graphdef, params, graph, adjacency, *, aggregation: str, num_layers: int):
  """(users (U, d), items (I, d)) after K propagation layers, averaged with layer 0."""
  model = nnx.merge(graphdef, params)
  aggregate = graph_lib.make_aggregate(graph, adjacency, aggregation)
  nodes = graph_lib.lightgcn_propagate(aggregate, model.embedding[...], num_layers)
  return model.split_nodes(nodes)


def quantized_embeddings(graphdefs, params, deltas, graph, adjacency, *, aggregation: str, num_layers: int):
  """The representations BPR scores: final embeddings, through the quantizer (x^) when there is one."""
  users, items = final_embeddings(graphdefs["encoder"], params["encoder"], graph, adjacency,
                                  aggregation=aggregation, num_layers=num_layers)
  if "quant" in params:
    quant = nnx.merge(graphdefs["quant"], params["quant"])
    users, items = quant(users, items, deltas["users"], deltas["items"])
  return users, items


def representations(graphdefs, params, graph, adjacency, *, aggregation: str, num_layers: int):
  """What evaluation ranks with and export stores: float embeddings, or the integer codes (QuantizedMatrix)."""
  users, items = final_embeddings(graphdefs["encoder"], params["encoder"], graph, adjacency,
                                  aggregation=aggregation, num_layers=num_layers)
  if "quant" in params:
    return nnx.merge(graphdefs["quant"], params["quant"]).quantized(users, items)
  return users, items


def bpr_of_representations(xhats, batch) -> jax.Array:
  """BPR loss of a batch as a function of the quantized matrices {'users', 'items'}: the curvature target."""
  users, items = xhats["users"], xhats["items"]
  triples, weights = batch
  return lightgcn.bpr_loss(users[triples[:, 0]], items[triples[:, 1]], items[triples[:, 2]], weights)


def make_train_step(graphdefs, tx: optax.GradientTransformation, *, aggregation: str, num_layers: int,
                    num_users: int, decay: float):
  """The jitted `train_step(params, opt_state, deltas, batch, weights, graph, adjacency)
  -> (params, opt_state, metrics)`; `deltas` are the GSTE's (ignored without a GSTE quantizer)."""

  def loss_fn(params, deltas, batch, weights, graph, adjacency):
    users, items = quantized_embeddings(graphdefs, params, deltas, graph, adjacency, aggregation=aggregation,
                                        num_layers=num_layers)
    bpr = bpr_of_representations({"users": users, "items": items}, (batch, weights))
    u, p, n = batch[:, 0], batch[:, 1], batch[:, 2]
    e0 = nnx.merge(graphdefs["encoder"], params["encoder"]).embedding[...]
    reg = lightgcn.l2_regularizer(e0[u], e0[num_users + p], e0[num_users + n], weights)
    return bpr + decay * reg, {"bpr": bpr, "reg": reg}

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(params, opt_state, deltas, batch, weights, graph, adjacency):
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, deltas, batch, weights, graph,
                                                                   adjacency)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads),
               "param_norm": optax.tree.norm(params)}
    return params, opt_state, metrics

  return train_step


def epoch_batches(data: InteractionData, seed: int, epoch: int, batch_size: int):
  """The epoch's BPR triples as (steps, batch, 3) int32 plus (steps, batch) weights (0 = padding)."""
  triples = sampling.sample_bpr_epoch(data.train, data.num_items, sampling.epoch_rng(seed, epoch))
  steps = -(-len(triples) // batch_size)
  pad = steps * batch_size - len(triples)
  weights = np.concatenate([np.ones(len(triples), np.float32), np.zeros(pad, np.float32)])
  triples = np.concatenate([triples, np.zeros((pad, 3), np.int32)])
  return triples.reshape(steps, batch_size, 3), weights.reshape(steps, batch_size)


def _checkpoint_state(params, opt_state, deltas, epoch: int) -> dict:
  return {"params": params, "opt_state": opt_state, "deltas": deltas, "epoch": np.asarray(epoch, np.int32)}


def _mean_of(tree) -> dict:
  return {name: float(jnp.mean(v)) for name, v in tree.items()}


def export_arrays(users, items) -> dict:
  """The export.npz arrays: float embeddings, or integer codes plus every scalar needed to dequantize."""
  if isinstance(users, QuantizedMatrix):
    out = {"bits": np.asarray(users.bits, np.int32)}
    for name, qm in (("user", users), ("item", items)):
      out[f"{name}_codes"] = np.asarray(qm.codes)
      out[f"{name}_scale"] = np.asarray(qm.scale, np.float32)
      out[f"{name}_offset"] = np.asarray(qm.offset, np.float32)
    return out
  return {"user_embeddings": np.asarray(users), "item_embeddings": np.asarray(items)}


def representation_bytes(users, items) -> int:
  """Bytes of the stored user + item representation: bit-packed codes + float32 scalars, or float32."""
  if isinstance(users, QuantizedMatrix):
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
  validate_config(config, data)
  run = RunDir(workdir, config, epochs_key="train.epochs", ignore=RESULT_NEUTRAL_KEYS, extend=extend)
  qconfig, dconfig = quantizer_config(config), delta_config(config)
  problem = create_problem(config, data)
  static = dict(aggregation=config.model.aggregation, num_layers=config.model.num_layers)

  # ------------------------------------------------------------------------------------------------------
  # Model (encoder + optional quantizer of its final embeddings) and optimizer.
  # ------------------------------------------------------------------------------------------------------
  encoder = create_model(config, data, config.seed)
  graphdefs, params = {}, {}
  graphdefs["encoder"], params["encoder"] = nnx.split(encoder)
  if config.train.init_from and run.latest_step() is None:
    params["encoder"] = warm_start_encoder(params["encoder"], config.train.init_from)
  if qconfig is not None:
    users0, items0 = jax.jit(functools.partial(final_embeddings, graphdefs["encoder"], **static))(
        params["encoder"], problem.graph, problem.adjacency)
    graphdefs["quant"], params["quant"] = nnx.split(quant_module.EmbeddingQuantizer(qconfig, users0, items0))
    deltas = curvature.initial_deltas(dconfig, {"users": users0, "items": items0})
  else:
    deltas = {"users": jnp.zeros(()), "items": jnp.zeros(())}
  uses_curvature = qconfig is not None and qconfig.estimator == "gste" and dconfig.mode != "fixed"
  steps_per_epoch = -(-data.train.nnz // config.train.batch_size)
  tx = create_optimizer(config, steps_per_epoch)
  opt_state = tx.init(params)
  train_step = make_train_step(graphdefs, tx, num_users=data.num_users, decay=config.train.decay, **static)
  xhat_fn = jax.jit(functools.partial(quantized_embeddings, graphdefs, **static))
  represent_fn = jax.jit(functools.partial(representations, graphdefs, **static))

  # ------------------------------------------------------------------------------------------------------
  # Checkpoint: resume from the newest one that restores.
  # ------------------------------------------------------------------------------------------------------
  start_epoch = 0
  restored = run.restore(jax.eval_shape(lambda: _checkpoint_state(params, opt_state, deltas, 0)))
  if restored is not None:
    params, opt_state, deltas = restored["params"], restored["opt_state"], restored["deltas"]
    start_epoch = int(restored["epoch"])
    _log(f"resumed from {run.checkpoints.directory} at epoch {start_epoch}")
  run.metrics.truncate_after(start_epoch if restored is not None else -1)

  # ------------------------------------------------------------------------------------------------------
  # Training loop.
  # ------------------------------------------------------------------------------------------------------
  epochs = config.train.epochs
  train_time = curvature_time = 0.0
  for epoch in range(start_epoch, epochs):
    t0 = time.time()
    batches, weights = epoch_batches(data, config.seed, epoch, config.train.batch_size)
    if uses_curvature and curvature.deltas_due(dconfig, epoch):
      t_delta = time.time()
      xhats = xhat_fn(params, deltas, problem.graph, problem.adjacency)
      estimate = curvature.update_deltas(
          dconfig, bpr_of_representations, {"users": xhats[0], "items": xhats[1]},
          [(batches[i], weights[i]) for i in range(min(dconfig.num_batches, len(batches)))],
          jax.random.fold_in(jax.random.key(config.seed), epoch))
      deltas = jax.block_until_ready(estimate.deltas)
      delta_seconds = time.time() - t_delta
      curvature_time += delta_seconds
      run.metrics.append({"step": epoch, "epoch": epoch, "event": "delta", "delta": _mean_of(deltas),
                          "seconds": delta_seconds,
                          "curvature_per_element": _mean_of(estimate.curvature),
                          "curvature_stderr": _mean_of(estimate.stderr),
                          "hutchinson_samples": _mean_of(estimate.num_samples),
                          "grad_std": _mean_of(estimate.grad_std)})
    losses = []
    for i in progress(range(batches.shape[0]), batches.shape[0], f"epoch {epoch + 1}/{epochs}"):
      params, opt_state, metrics = train_step(params, opt_state, deltas, batches[i], weights[i], problem.graph,
                                              problem.adjacency)
      losses.append(metrics["loss"])
    losses = np.asarray(jnp.stack(losses))
    run.check_finite(losses, epoch=epoch, first_step=epoch * steps_per_epoch)
    dt = time.time() - t0
    train_time += dt
    done = epoch + 1
    if done % config.train.log_every == 0 or done == epochs:
      extra = f"  delta {_mean_of(deltas)}" if uses_curvature else ""
      _log(f"epoch {done}/{epochs}  loss {losses.mean():.5f}  bpr {float(metrics['bpr']):.5f}  "
           f"grad_norm {float(metrics['grad_norm']):.4f}  {dt:.2f} s/epoch{extra}")
    record = None
    if config.eval.every and (done % config.eval.every == 0) and done != epochs:
      users, items = represent_fn(params, problem.graph, problem.adjacency)
      record = {"step": done, "epoch": done, "loss": float(losses.mean()),
                **evaluation.evaluate(users, items, data, ks=tuple(config.eval.ks),
                                      batch_size=config.eval.batch_size)}
      if qconfig is not None:
        record["delta"] = _mean_of(deltas)
      _log("  eval " + "  ".join(f"{k} {v:.4f}" for k, v in record.items() if "@" in k))
    if done % config.train.checkpoint_every == 0 or done == epochs:
      run.save(done, _checkpoint_state(params, opt_state, deltas, done))
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
  users, items = jax.device_get(represent_fn(params, problem.graph, problem.adjacency))
  final = evaluation.evaluate(users, items, data, ks=tuple(config.eval.ks), batch_size=config.eval.batch_size)
  run.write_export(export_arrays(users, items))
  run.metrics.set_final({"step": epochs, "epoch": epochs, **final})
  stored = representation_bytes(users, items)
  results = {
      "config": config.to_dict(),
      "dataset": data.summary,
      "model": "lightgcn" if qconfig is None else f"hqgnn-{qconfig.bits}bit-{qconfig.estimator}",
      "metrics": final,
      "representation_bytes": stored,
      "compression_ratio": 4 * (data.num_users + data.num_items) * config.model.dim / stored,
      "epochs": epochs,
      "resumed_from_epoch": start_epoch,
      "train_seconds_this_run": train_time,
      "curvature_seconds_this_run": curvature_time,  # delta updates (included in train_seconds_this_run)
      "seconds_per_epoch": train_time / max(epochs - start_epoch, 1),
      "wall_seconds_this_run": time.time() - t_start,
      "device": device_description(),
      "finished": now_iso(),
      "export": "export.npz",
  }
  if qconfig is not None:
    results["final_delta"] = _mean_of(deltas)
  return run.write_results(results)


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
