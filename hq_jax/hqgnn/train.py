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
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from hq_jax import evaluation
from hq_jax import export
from hq_jax import parallel
from hq_jax.data.interactions import InteractionData
from hq_jax.errors import UserError
from hq_jax.hqgnn import lightgcn
from hq_jax.hqgnn import model as model_lib
from hq_jax.hqgnn import sampling
# The set-up (config -> data, graph, model, optimizer) lives in `setup`; re-exported for callers of the trainer.
from hq_jax.hqgnn.setup import (EVAL_SPLITS, LR_SCHEDULES, Problem, create_model, create_optimizer,  # noqa: F401
                                create_problem, delta_config, encoder_learning_rate, load_training_data,
                                model_factory, model_name, quantizer_config, read_encoder, validate_config)
from hq_jax.quant import curvature
from hq_jax.quant import family
from hq_jax.quant import pq
from hq_jax.workdir import RunDir, device_description, now_iso, progress


def make_train_step(graphdef, tx: optax.GradientTransformation, *, num_users: int, decay: float,
                    distill_weight: float, out_shardings=None, ema: bool = False):
  """The jitted `train_step(params, opt_state, deltas, batch, graph, adjacency) -> (params, opt_state, metrics)`.

  Loss = BPR of the representations + decay * L2 of the batch's E0 rows (+ distill_weight * distillation).
  `deltas` are the GSTE's (ignored by other estimators). `batch` as in `epoch_batches`, one step's slice.
  On a mesh, `out_shardings` pins the (params, opt_state, metrics) layouts so that no call recompiles.
  `ema`: the model's product-code codebooks are EMA k-means state (`quant.pq_update = 'ema'`), updated after
  each optimizer step from the rows that step encoded.
  """
  def loss_fn(params, deltas, batch, graph, adjacency):
    model = nnx.merge(graphdef, params)
    t = batch["triples"]
    row_weights = None
    if model.config.is_pq and not distill_weight:  # row-wise codes: encode only the batch's rows
      scored, (xs, row_weights) = model.scored_rows(graph, adjacency, t, deltas, batch["weights"])
      bpr = lightgcn.bpr_loss(*scored, batch["weights"])
    else:
      xs, (users, items) = model.represent(graph, adjacency, deltas)
      xhats = {"users": users, "items": items}
      bpr = model_lib.bpr_of_representations(xhats, batch, model.config.weights)
    e0 = model.encoder.embedding[...]
    reg = lightgcn.l2_regularizer(e0[t[:, 0]], e0[num_users + t[:, 1]], e0[num_users + t[:, 2]], batch["weights"])
    loss = bpr + decay * reg
    aux = {"bpr": bpr, "reg": reg}
    if distill_weight:
      aux["distill"] = model_lib.distillation_loss(xhats, batch, model.config.weights)
      loss = loss + distill_weight * aux["distill"]
    if ema:  # the rows this step encoded (the batch's, or all), for the EMA codebook update after it
      aux["x"] = jax.lax.stop_gradient(xs)
      if row_weights is not None:
        aux["x_weights"] = row_weights
    return loss, aux

  @functools.partial(jax.jit, donate_argnums=(0, 1), out_shardings=out_shardings)
  def train_step(params, opt_state, deltas, batch, graph, adjacency):
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, deltas, batch, graph, adjacency)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    if ema:  # VQ-VAE: codebooks move by EMA k-means of the rows the forward pass encoded (not by the optimizer)
      model = nnx.merge(graphdef, params)
      model.quantizer.ema_update(*aux.pop("x"), *aux.pop("x_weights", (None, None)))
      params = nnx.state(model)
    metrics = {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(params)}
    return params, opt_state, metrics

  return train_step


class StepState(NamedTuple):
  """What one jitted trainer step needs, for benchmarks: `step(params, opt_state, deltas, batch,
  *problem.graph_args)`."""
  problem: Problem
  params: nnx.State
  opt_state: optax.OptState
  deltas: dict
  step: Callable


def initial_step_state(config: ml_collections.ConfigDict, data: InteractionData) -> StepState:
  """The trainer's own jitted step (`make_train_step`, no distillation) with the model of `config` on `data`,
  its fresh Adam state and zero GSTE deltas (ours; `experiments.bench_epoch`, `experiments.bench_scale`).

  Raises:
    UserError: an invalid config (`validate_config`).
  """
  problem = create_problem(config, data)
  model = create_model(config, validate_config(config, data), problem)
  graphdef, params = nnx.split(model)
  tx = create_optimizer(config)
  deltas = {"users": np.zeros((), np.float32), "items": np.zeros((), np.float32)}
  q = model.config.quant
  step = make_train_step(graphdef, tx, num_users=data.num_users, decay=config.train.decay, distill_weight=0.0,
                         ema=q is not None and q.kind == "pq" and q.pq_update == "ema")
  return StepState(problem, params, tx.init(params), deltas, step)


def teacher_top_items(users: np.ndarray, items: np.ndarray, data: InteractionData, top_r: int,
                      batch_size: int) -> np.ndarray:
  """(U, R) int32: each user's top-R non-training items by the teacher's full-precision final embeddings
  (users (U, d), items (I, d)), best first; users with fewer than R such items repeat their first."""
  top = evaluation.topk_items(users, items, data, np.arange(data.num_users), top_r, batch_size=batch_size)
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
  """Statistics of delta * |x - x^| over all entries of x (N, d), the relative change the GSTE makes to each
  gradient entry (ours): {mean, median, p99, max, frac_above_1pct} as Python floats.

  On the host in NumPy: its quantiles select in linear time (`np.partition`), where XLA:CPU sorts; for a
  Gowalla item matrix, 0.06 s against 1.2 s for the jitted `jnp.quantile` (2-core CPU, 2026-11-30).
  """
  x, xhat, delta = parallel.gather((x, xhat, delta))
  change = (np.asarray(delta, np.float32) * np.abs(np.asarray(x, np.float32) - np.asarray(xhat, np.float32)))
  change = change.reshape(-1)
  median, p99 = np.quantile(change, [0.5, 0.99])
  return {"mean": float(np.mean(change, dtype=np.float64)), "median": float(median), "p99": float(p99),
          "max": float(np.max(change)), "frac_above_1pct": float(np.mean(change > 0.01))}


def representation_bytes(users, items) -> int:
  """Bytes of the stored user + item representation: bit-packed codes + float32 scalars (product codes:
  codes + float32 codebooks, counted once when both sides share them; float32 users beside coded items), or
  float32."""
  if isinstance(items, pq.ProductCodes):
    return family.storage(users, items)["representation_bytes"]
  if hasattr(users, "nbytes_packed"):  # QuantizedMatrix or LayeredQuantized
    return users.nbytes_packed() + items.nbytes_packed()
  return 4 * (int(np.size(users)) + int(np.size(items)))


def code_bits_per_node(users, items) -> dict:
  """Product codes: {'bits_per_node': code bits per node (users and items), 'codebook_bits_per_node': the
  codebooks' share, reported beside it, 'layout': 'both'}; with float users ('layout': 'items', FAISS's
  "items coded, users float"), both per coded node, i.e. per item. {} for other representations (their bits
  per node count every stored byte)."""
  if not isinstance(items, pq.ProductCodes):
    return {}
  stored = family.storage(users, items)
  if isinstance(users, pq.ProductCodes):
    return {"bits_per_node": stored["bits_per_node"], "codebook_bits_per_node": stored["codebook_bits_per_node"],
            "layout": "both"}
  num_items = int(np.shape(items.codes)[0])
  return {"bits_per_node": stored["item_bits_per_node"], "layout": "items",
          "codebook_bits_per_node": 8.0 * stored["codebook_bytes"] / num_items}


def _log(msg: str) -> None:
  print(msg, flush=True)


# Config keys that do not change the result: a rerun may change them (see `hq_jax.workdir.RunDir`).
RESULT_NEUTRAL_KEYS = ("train.log_every", "train.checkpoint_every", "train.stop_after_epochs", "eval.every",
                       "eval.batch_size", "mesh.data", "mesh.model")
# Config keys added after runs were made, with the values that mean the behaviour from before them.
ADDED_KEYS = {"mesh.row_multiple": 0, "train.warmup_epochs": 0, "quant.rotation": "none", "quant.itq_iterations": 50,
              "quant.drop_user_scales": False, "quant.kind": "scalar", "quant.pq_subspaces": 8, "quant.pq_bits": 8,
              "quant.pq_codebooks": "separate", "quant.pq_sides": "both", "quant.pq_update": "gradient", "quant.pq_learning_rate": 1e-3,
              "quant.pq_ema_decay": 0.99, "quant.pq_kmeans_iterations": 25, "quant.pq_rotation": "none",
              "quant.pq_opq_iterations": 20}


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
  run = RunDir(workdir, config, epochs_key="train.epochs", ignore=RESULT_NEUTRAL_KEYS, extend=extend,
               added_keys=ADDED_KEYS)
  pretrained = None
  if config.train.pretrain_epochs:
    pretrained, config = pretrain(config, workdir)
    if pretrained.get("status") == "stopped":
      run.close()
      return pretrained
  dconfig = delta_config(config)

  # ------------------------------------------------------------------------------------------------------
  # Mesh and the graph on it (one device: nothing is sharded, the unsharded code path exactly).
  # ------------------------------------------------------------------------------------------------------
  mesh = parallel.mesh_from_config(config.mesh.data, config.mesh.model)
  parallel.check_batch_size(config.train.batch_size, mesh)
  problem = create_problem(config, data, mesh)
  graph_args = problem.graph_args
  model_config = dataclasses.replace(model_config, num_rows=problem.num_rows)
  on_mesh = problem.mesh is not None
  replicated = parallel.replicated(mesh) if on_mesh else None

  # ------------------------------------------------------------------------------------------------------
  # Model and optimizer state, created already sharded; steps.
  # ------------------------------------------------------------------------------------------------------
  qconfig = model_config.quant
  steps_per_epoch = -(-data.train.nnz // config.train.batch_size)
  tx = create_optimizer(config, steps_per_epoch)
  make_model = model_factory(config, model_config)
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: make_model(*graph_args)))

  def init(graph, adjacency):
    params = nnx.state(make_model(graph, adjacency))
    return {"params": params, "opt_state": tx.init(params)}

  shardings = parallel.state_shardings(jax.eval_shape(init, *graph_args), mesh, table_rows=problem.num_rows)
  state = jax.jit(init, out_shardings=shardings)(*graph_args)
  params, opt_state = state["params"], state["opt_state"]
  embeddings = lambda params, g, a: nnx.merge(graphdef, params).embeddings(g, a)
  # x and x^ in one program, so XLA propagates once for both (Gowalla, 2-core CPU: 174 ms against 148 + 157 ms
  # as two programs).
  x_and_xhat_fn = jax.jit(lambda params, deltas, g, a: (embeddings(params, g, a),
                                                        nnx.merge(graphdef, params)(g, a, deltas)),
                          out_shardings=replicated)
  represent_fn = jax.jit(lambda params, g, a: nnx.merge(graphdef, params).quantize(g, a), out_shardings=replicated)
  teacher = None
  if config.distill.weight > 0:
    final_fn = jax.jit(lambda params, g, a: nnx.merge(graphdef, params).final_embeddings(g, a))
    teacher = teacher_top_items(*parallel.gather(final_fn(params, *graph_args)), data, config.distill.top_r,
                                config.eval.batch_size)
  if qconfig is not None:
    deltas = curvature.initial_deltas(dconfig, dict(zip(("users", "items"),
                                                        jax.eval_shape(embeddings, params, *graph_args))))
  else:
    deltas = {"users": jnp.zeros(()), "items": jnp.zeros(())}
  if on_mesh:
    deltas = parallel.put(deltas, replicated)
  uses_curvature = qconfig is not None and qconfig.estimator == "gste" and dconfig.mode != "fixed"
  train_step = make_train_step(
      graphdef, tx, num_users=data.num_users, decay=config.train.decay, distill_weight=float(config.distill.weight),
      ema=qconfig is not None and qconfig.kind == "pq" and qconfig.pq_update == "ema",
      out_shardings=(shardings["params"], shardings["opt_state"], replicated) if on_mesh else None)
  curvature_loss = functools.partial(model_lib.bpr_of_representations, weights=model_config.weights)
  put_batch = ((lambda b: parallel.put(b, parallel.batch_sharding(mesh))) if on_mesh else (lambda b: b))

  # ------------------------------------------------------------------------------------------------------
  # Checkpoint: resume from the newest one that restores (onto this mesh, whatever mesh wrote it).
  # ------------------------------------------------------------------------------------------------------
  start_epoch, seconds_before = 0, np.zeros(2)
  abstract = jax.eval_shape(lambda: _checkpoint_state(params, opt_state, deltas, 0))
  restored = run.restore(parallel.with_shardings(
      abstract, parallel.state_shardings(abstract, mesh, table_rows=problem.num_rows)),
      unpadded_rows=data.num_users + data.num_items)  # another mesh's padding is restored too
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
      x, xhat = x_and_xhat_fn(params, deltas, *graph_args)
      xs, xhats = dict(zip(("users", "items"), x)), dict(zip(("users", "items"), xhat))
      estimate = curvature.update_deltas(
          dconfig, curvature_loss, xhats,
          [put_batch(step_batch(i)) for i in range(min(dconfig.num_batches, steps_per_epoch))],
          jax.random.fold_in(jax.random.key(config.seed), epoch))
      deltas = jax.block_until_ready(estimate.deltas)
      estimate_seconds = time.time() - t_delta
      change = {k: gradient_change(xs[k], xhats[k], deltas[k]) for k in xs}
      # The whole update counts as curvature time: the estimate and the statistics logged with it.
      delta_seconds = time.time() - t_delta
      curvature_time += delta_seconds
      # step e + 1: made during epoch e + 1, so a resume from checkpoint e drops it and redoes it
      run.metrics.append({"step": epoch + 1, "epoch": epoch, "event": "delta", "delta": _mean_of(deltas),
                          "seconds": delta_seconds, "estimate_seconds": estimate_seconds,
                          "curvature_per_element": _mean_of(estimate.curvature),
                          "curvature_stderr": _mean_of(estimate.stderr),
                          "hutchinson_samples": _mean_of(estimate.num_samples),
                          "grad_std": _mean_of(estimate.grad_std),
                          "gradient_change": change})
    losses = []
    for i in progress(range(steps_per_epoch), steps_per_epoch, f"epoch {epoch + 1}/{epochs}"):
      params, opt_state, metrics = train_step(params, opt_state, deltas, put_batch(step_batch(i)), *graph_args)
      losses.append(metrics["loss"])
    losses = np.asarray(jnp.stack(losses))
    run.check_finite(losses, epoch=epoch, first_step=epoch * steps_per_epoch)
    dt = time.time() - t0
    train_time += dt
    done = epoch + 1
    if done % config.train.log_every == 0 or done == epochs:
      # 4 significant digits for the eye; metrics.jsonl keeps the full floats.
      extra = ("  delta " + " ".join(f"{k} {v:.4g}" for k, v in _mean_of(deltas).items())
               if uses_curvature else "")
      extra += f"  distill {float(metrics['distill']):.5f}" if "distill" in metrics else ""
      _log(f"epoch {done}/{epochs}  loss {losses.mean():.5f}  bpr {float(metrics['bpr']):.5f}  "
           f"grad_norm {float(metrics['grad_norm']):.4f}  {dt:.2f} s/epoch{extra}")
    record = None
    if config.eval.every and (done % config.eval.every == 0) and done != epochs:
      users, items = parallel.gather(represent_fn(params, *graph_args))
      record = {"step": done, "epoch": done, "loss": float(losses.mean()),
                **evaluation.evaluate(users, items, data, ks=tuple(config.eval.ks),
                                      batch_size=config.eval.batch_size)}
      if qconfig is not None:
        record["delta"] = _mean_of(deltas)
      _log("  eval " + "  ".join(f"{k} {v:.4f}" for k, v in record.items() if "@" in k))
    if record is not None:  # before the checkpoint: a resume from an older one drops it (truncate_after)
      run.metrics.append(record)
    if done % config.train.checkpoint_every == 0 or done == epochs:
      run.save(done, _checkpoint_state(params, opt_state, deltas, done,
                                       seconds_before + (train_time, curvature_time)))
    if config.train.stop_after_epochs and done >= config.train.stop_after_epochs and done < epochs:
      if run.latest_step() == done:
        run.close()
        return {"status": "stopped", "epoch": done}
  run.close()

  # ------------------------------------------------------------------------------------------------------
  # Final evaluation and export: the metrics are computed from exactly what export.npz stores.
  # ------------------------------------------------------------------------------------------------------
  users, items = parallel.gather(represent_fn(params, *graph_args))
  final = evaluation.evaluate(users, items, data, ks=tuple(config.eval.ks), batch_size=config.eval.batch_size)
  run.write_export(export.export_arrays(users, items))
  run.metrics.set_final({"step": epochs, "epoch": epochs, **final})
  stored = representation_bytes(users, items)
  results = {
      "config": config.to_dict(),
      "dataset": data.summary,
      "model": model_name(model_config) + ("-itq" if config.quant.rotation == "itq" else "")
               + ("-opq" if model_config.is_pq and config.quant.pq_rotation == "opq" else ""),
      "metrics": final,
      "representation_bytes": stored,
      "bits_per_node": 8 * stored / (data.num_users + data.num_items),
      "compression_ratio": 4 * (data.num_users + data.num_items) * config.model.dim / stored,
      **code_bits_per_node(users, items),
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
    stage.quant.rotation = "none"
    stage.quant.drop_user_scales = False
    stage.quant.kind = "scalar"
    stage.quant.pq_rotation = "none"
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
