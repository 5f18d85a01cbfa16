"""Training and evaluation of CTR models for every embedding method of the MPE comparison.

`train_and_evaluate(config, workdir)` runs one method end to end:
- 'fp': full-precision table; 'lsq': LSQ+ at `config.lsq.bits`; 'alpt': ALPT (8-bit stored table);
  'qr': quotient-remainder tables; 'mpe': the MPE search, then the retrain with frozen widths.
Each phase trains with early stopping on validation AUC (evaluated once per epoch) and keeps the
best-validation parameters; the test set is evaluated once, at the best point of the last phase.

Workdir: `results.json` (config, dataset summary, final metrics, wall time, device), `metrics.jsonl` (one
line per evaluation), `checkpoints/` (after every epoch: parameters, optimizer state, best parameters,
phase, epoch and early-stopping counters, so a rerun on the same workdir continues where it stopped and
reaches the same result as an uninterrupted run) and `export.npz` (the quantized table as it would be
stored, for the quantized methods).
"""

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from hq_jax import workdir as workdir_lib
from hq_jax.ctr import baselines, lsq, metrics, models, mpe
from hq_jax.errors import UserError

METHODS = ("fp", "lsq", "alpt", "qr", "mpe")


# ---------------------------------------------------------------------------------------------------------
# Model and optimizer.


def create_embedding(config: ml_collections.ConfigDict, num_features: int, counts: np.ndarray,
                     rngs: nnx.Rngs) -> nnx.Module:
  """The embedding table of `config.method`."""
  dim = config.model.dim
  if config.method == "fp":
    return models.Embedding(num_features, dim, rngs=rngs)
  if config.method == "lsq":
    return baselines.LSQEmbedding(num_features, dim, config.lsq.bits, rngs=rngs)
  if config.method == "alpt":
    return baselines.ALPTEmbedding(num_features, dim, config.alpt.bits, rngs=rngs)
  if config.method == "qr":
    return baselines.QREmbedding(num_features, dim, config.qr.ratio, rngs=rngs)
  if config.method == "mpe":
    num_groups = min(config.mpe.num_groups, num_features)
    return mpe.MixedPrecisionEmbedding(num_features, dim, counts, num_groups=num_groups,
                                       tau=config.mpe.tau, rngs=rngs)
  raise UserError(f"config.method: unknown method {config.method!r}; expected one of {', '.join(METHODS)}")


def create_model(config: ml_collections.ConfigDict, num_features: int, num_fields: int,
                 counts: np.ndarray) -> models.CTRModel:
  """Embedding + backbone, initialised from `config.seed` (so a second call rebuilds the same W0)."""
  rngs = nnx.Rngs(params=config.seed)
  embedding = create_embedding(config, num_features, counts, rngs)
  backbone = models.make_backbone(config.model.backbone, num_fields, config.model.dim,
                                  config.model.hidden, rngs=rngs)
  return models.CTRModel(embedding, backbone)


def split_model(model: models.CTRModel, *, train: bool, phase: str | None = None):
  """(graphdef, params, rest) of `model` in train or eval mode (BatchNorm statistics) and MPE phase."""
  if phase is not None:
    model.embedding.phase = phase
  if train:
    model.train()
  else:
    model.eval()
  return nnx.split(model, nnx.Param, ...)


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam; the spec's coupled L2 is a loss term (`l2_penalty`), not decoupled weight decay."""
  return optax.adam(config.train.learning_rate)


def l2_penalty(model: models.CTRModel) -> jax.Array:
  """0.5 * sum of squares of the dense layers and the table (quantizer parameters exempt).

  Its gradient is w, the same as PyTorch Adam's coupled `weight_decay` the authors use.
  """
  leaves = jax.tree.leaves(nnx.state(model, nnx.All(nnx.Param, nnx.Not(models.QuantParam))))
  return 0.5 * sum(jnp.sum(jnp.square(x)) for x in leaves)


# ---------------------------------------------------------------------------------------------------------
# Steps.


def make_train_step(graphdef, tx: optax.GradientTransformation, *, l2: float, lam: float):
  """A jitted `(params, rest, opt_state, ids, labels, rng) -> (params, rest, opt_state, measurements)`."""

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def train_step(params, rest, opt_state, ids, labels, rng):
    model = nnx.merge(graphdef, params, rest)

    def loss_fn(model):
      logits = model(ids)
      bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))
      reg = model.embedding.regularizer()
      loss = bce + lam * reg
      if l2:
        loss = loss + l2 * l2_penalty(model)
      return loss, (bce, reg)

    # nnx.value_and_grad differentiates the Params and lets BatchNorm update its statistics in place.
    grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.Param), has_aux=True)
    (loss, (bce, reg)), grads = grad_fn(model)
    params = nnx.state(model, nnx.Param)
    updates, opt_state = tx.update(grads, opt_state, params)
    nnx.update(model, optax.apply_updates(params, updates))
    model.embedding.post_update(rng)
    _, params, rest = nnx.split(model, nnx.Param, ...)
    measurements = {"loss": loss, "bce": bce, "reg": reg,
                    "grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(params)}
    return params, rest, opt_state, measurements

  return train_step


def make_predict(graphdef):
  """A jitted `(params, rest, ids) -> logits` in eval mode."""

  @jax.jit
  def predict(params, rest, ids):
    return nnx.merge(graphdef, params, rest)(ids)

  return predict


def evaluate(predict, params, rest, ids: np.ndarray, labels: np.ndarray, batch_size: int) -> dict:
  """AUC and logloss over a split; the last batch is padded so that only one shape is compiled."""
  n = ids.shape[0]
  batch_size = min(batch_size, n)
  logits = []
  for start in range(0, n, batch_size):
    chunk = np.asarray(ids[start:start + batch_size])
    pad = batch_size - chunk.shape[0]
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad, chunk.shape[1]), chunk.dtype)])
    logits.append(np.asarray(predict(params, rest, jnp.asarray(chunk)))[:batch_size - pad])
  logits = np.concatenate(logits)
  return {"auc": metrics.roc_auc(labels, logits), "logloss": metrics.log_loss(labels, logits)}


# ---------------------------------------------------------------------------------------------------------
# Export and sizes.


def export_table(model: models.CTRModel, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The stored table of each method with its exact byte count and both compression ratios of the spec.

  Returns the summary and, for quantized methods, the arrays to write to `export.npz`.
  """
  emb = model.embedding
  n, d = emb.num_features, emb.dim
  fp32_bytes = n * d * 4
  arrays = None
  if config.method == "fp":
    exact, mean_bits = fp32_bytes, 32.0
  elif config.method == "qr":
    exact = emb.stored_floats() * 4
    mean_bits = 32.0 * emb.stored_floats() / (n * d)
  else:
    table = np.asarray(emb.table[...])
    if config.method == "mpe":
      widths = emb.feature_bits()
      alphas = {b: float(a) for b, a in zip(emb.candidate_bits, np.asarray(
          lsq.effective_step(emb.alpha[...]))) if b > 0}
      beta = np.asarray(emb.beta[...])
    elif config.method == "lsq":
      widths = np.full(n, emb.bits)
      alphas = {emb.bits: float(lsq.effective_step(emb.alpha[...]))}
      beta = np.asarray(emb.beta[...])
    else:  # alpt
      widths = np.full(n, emb.bits)
      alphas = {emb.bits: float(lsq.effective_step(emb.alpha[...]))}
      beta = None
    arrays = mpe.export_codes(table, widths, alphas, beta)
    exact = mpe.export_bytes(arrays)
    mean_bits = float(np.mean(widths))
  summary = {"fp32_table_bytes": fp32_bytes, "exact_bytes": int(exact),
             "mean_bits_per_feature": mean_bits,
             "compression_bits": 32.0 / mean_bits if mean_bits > 0 else float("inf"),
             "compression_bytes": fp32_bytes / exact}
  return {"summary": summary, "arrays": arrays}


# ---------------------------------------------------------------------------------------------------------
# The loop.


def _validate(config: ml_collections.ConfigDict) -> None:
  if config.method not in METHODS:
    raise UserError(f"config.method: unknown method {config.method!r}; expected one of {', '.join(METHODS)}")
  if config.model.backbone not in models.BACKBONES:
    raise UserError(f"config.model.backbone: unknown backbone {config.model.backbone!r}; expected one of "
                    f"{', '.join(sorted(models.BACKBONES))}")
  if config.method == "mpe" and config.mpe.selection not in ("threshold", "sampling"):
    raise UserError(f"config.mpe.selection: {config.mpe.selection!r} is neither 'threshold' nor 'sampling'")
  for key in ("batch_size", "eval_batch_size", "max_epochs", "patience"):
    if int(config.train[key]) < 1:
      raise UserError(f"config.train.{key} must be >= 1, got {config.train[key]}")


def _load_data(config: ml_collections.ConfigDict):
  from hq_jax.ctr import data  # Imported here: only the trainer needs the loaders.
  try:
    return data.load_ctr(config.data.spec, cache_dir=config.data.cache_dir or None, seed=config.seed)
  except (FileNotFoundError, OSError) as e:
    raise UserError(f"config.data.spec {config.data.spec!r}: {e}") from e


def _copy(tree):
  """A host copy that survives the donation of the device buffers it was taken from."""
  return jax.tree.map(lambda x: np.array(x), tree)


def _phases(config) -> list[str]:
  return ["search", "retrain"] if config.method == "mpe" else ["train"]


# Config keys that do not change the result: a rerun may change them (see `hq_jax.workdir.RunDir`).
RESULT_NEUTRAL_KEYS = ("train.eval_batch_size", "data.cache_dir", "train.stop_after_steps")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, extend: bool = False) -> dict:
  """Trains `config.method`, evaluates it and writes the workdir; returns the results dict.

  Follows the run protocol of `hq_jax.workdir.RunDir` (a rerun with another config stops with a `UserError`;
  `extend=True` allows a larger `train.max_epochs`). With `config.train.stop_after_steps` > 0 the run stops
  (status 'stopped', nothing final written) once that many optimizer steps have been taken in total: a
  deterministic stand-in for an interruption.
  """
  start_time = time.time()
  _validate(config)

  # ---- Input.
  ds = _load_data(config)
  train_ids, train_labels = ds.split("train")
  valid_ids, valid_labels = ds.split("valid")
  test_ids, test_labels = ds.split("test")
  train_ids, train_labels = np.asarray(train_ids), np.asarray(train_labels, np.float32)
  counts = np.asarray(ds.counts)
  batch_size = min(int(config.train.batch_size), train_ids.shape[0])
  steps_per_epoch = train_ids.shape[0] // batch_size

  # ---- Model, optimizer, steps.
  model = create_model(config, ds.num_features, ds.num_fields, counts)
  phases = _phases(config)
  graphdefs = {}
  for phase in phases:
    mpe_phase = phase if config.method == "mpe" else None
    graphdefs[phase, "eval"], _, _ = split_model(model, train=False, phase=mpe_phase)
    graphdefs[phase, "train"], params, rest = split_model(model, train=True, phase=mpe_phase)
  tx = create_optimizer(config)
  lam = float(config.mpe.lam) if config.method == "mpe" else 0.0
  train_steps = {p: make_train_step(graphdefs[p, "train"], tx, l2=float(config.train.l2),
                                    lam=lam if p == "search" else 0.0) for p in phases}
  predicts = {p: make_predict(graphdefs[p, "eval"]) for p in phases}

  # ---- State (what a checkpoint holds).
  state = {"params": params, "rest": rest, "opt_state": tx.init(params),
           "best_params": _copy(params), "best_rest": _copy(rest),
           "phase": np.int32(0), "epoch": np.int32(0), "step": np.int64(0),
           "best_auc": np.float64(-np.inf), "best_epoch": np.int32(-1), "bad_epochs": np.int32(0),
           "train_seconds": np.zeros(len(phases)), "epochs_done": np.zeros(len(phases), np.int32),
           "search_best_auc": np.float64(np.nan)}
  run = workdir_lib.RunDir(workdir, config, epochs_key="train.max_epochs", ignore=RESULT_NEUTRAL_KEYS,
                           extend=extend)
  restored = run.restore(state)
  if restored is not None:
    state = restored
    print(f"resumed from step {int(state['step'])} (phase {phases[int(state['phase'])]}, "
          f"epoch {int(state['epoch'])})", flush=True)
  run.metrics.truncate_after(int(state["step"]) if restored is not None else -1)

  base_key = jax.random.key(config.seed + 1)
  stop_after = int(config.train.get("stop_after_steps", 0))

  # ---- Phases.
  while True:
    phase_index = int(state["phase"])
    phase = phases[phase_index]
    train_step, predict = train_steps[phase], predicts[phase]
    while int(state["epoch"]) < config.train.max_epochs and int(state["bad_epochs"]) < config.train.patience:
      epoch = int(state["epoch"])
      rng = np.random.default_rng([config.seed, phase_index, epoch])
      order = rng.permutation(train_ids.shape[0])[:steps_per_epoch * batch_size]
      params, rest, opt_state = state["params"], state["rest"], state["opt_state"]
      step = int(state["step"])
      epoch_start = time.time()
      first_step = step
      history = []
      for i in workdir_lib.progress(range(steps_per_epoch), steps_per_epoch, f"{phase} epoch {epoch + 1}"):
        idx = order[i * batch_size:(i + 1) * batch_size]
        params, rest, opt_state, m = train_step(params, rest, opt_state, jnp.asarray(train_ids[idx]),
                                                jnp.asarray(train_labels[idx]),
                                                jax.random.fold_in(base_key, step))
        history.append({k: m[k] for k in ("loss", "bce", "reg")})
        step += 1
        if stop_after and step >= stop_after:
          run.close()
          return {"status": "stopped", "step": step}
      history = jax.device_get(jax.tree.map(lambda *xs: jnp.stack(xs), *history))  # one sync per epoch
      run.check_finite(history["loss"], epoch=epoch, first_step=first_step + 1, where=f"{phase} phase")
      sums = {k: float(np.sum(v, dtype=np.float64)) for k, v in history.items()}
      train_seconds = time.time() - epoch_start
      valid = evaluate(predict, params, rest, valid_ids, valid_labels, config.train.eval_batch_size)
      improved = valid["auc"] > float(state["best_auc"])
      state.update(params=params, rest=rest, opt_state=opt_state, step=np.int64(step),
                   epoch=np.int32(epoch + 1))
      if improved:
        state.update(best_params=_copy(params), best_rest=_copy(rest), best_auc=np.float64(valid["auc"]),
                     best_epoch=np.int32(epoch), bad_epochs=np.int32(0))
      else:
        state["bad_epochs"] = np.int32(int(state["bad_epochs"]) + 1)
      state["train_seconds"] = np.asarray(state["train_seconds"]).copy()
      state["train_seconds"][phase_index] += train_seconds
      state["epochs_done"] = np.asarray(state["epochs_done"]).copy()
      state["epochs_done"][phase_index] += 1
      record = {"step": step, "phase": phase, "epoch": epoch, "valid_auc": valid["auc"],
                "valid_logloss": valid["logloss"], "train_loss": sums["loss"] / max(steps_per_epoch, 1),
                "train_bce": sums["bce"] / max(steps_per_epoch, 1), "train_seconds": train_seconds,
                "grad_norm": float(m["grad_norm"]), "param_norm": float(m["param_norm"])}
      if config.method == "mpe" and phase == "search":
        record["expected_reg"] = sums["reg"] / max(steps_per_epoch, 1)
        search_model = nnx.merge(graphdefs[phase, "eval"], params, rest)
        bits = mpe.select_bits_threshold(np.asarray(search_model.embedding.probs()))
        record["mean_bits_if_selected_now"] = mpe.mean_bits_per_feature(
            bits, np.asarray(search_model.embedding.group_of[...]))
      run.metrics.append(record)
      print(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
            flush=True)
      run.save(step, state)

    if phase_index + 1 == len(phases):
      break
    # ---- MPE: select the widths at the best search point, then set up the retrain.
    # Not checkpointed by itself: a run resumed here redoes this deterministic step.
    state = _start_retrain(config, state, graphdefs, tx, ds, counts)

  # ---- Test at the best point of the last phase, export, results.
  phase = phases[-1]
  best_params, best_rest = state["best_params"], state["best_rest"]
  test = evaluate(predicts[phase], best_params, best_rest, test_ids, test_labels,
                  config.train.eval_batch_size)
  final_model = nnx.merge(graphdefs[phase, "eval"], best_params, best_rest)
  export = export_table(final_model, config)
  if export["arrays"] is not None:
    run.write_export(export["arrays"])
  epochs_done = np.asarray(state["epochs_done"])
  train_seconds = np.asarray(state["train_seconds"])
  results = {
      "method": config.method, "config": config, "dataset": {"name": ds.name, **ds.summary},
      "test_auc": test["auc"], "test_logloss": test["logloss"],
      "valid_auc": float(state["best_auc"]), "best_epoch": int(state["best_epoch"]),
      **export["summary"],
      "phases": {p: {"epochs": int(epochs_done[i]), "train_seconds": float(train_seconds[i]),
                     "seconds_per_epoch": float(train_seconds[i] / max(epochs_done[i], 1))}
                 for i, p in enumerate(phases)},
      "steps": int(state["step"]), "steps_per_epoch": steps_per_epoch, "batch_size": batch_size,
      "wall_seconds_this_run": time.time() - start_time,
      "device": workdir_lib.device_description(), "finished": workdir_lib.now_iso(),
  }
  if config.method == "mpe":
    emb = final_model.embedding
    group_of = np.asarray(emb.group_of[...])
    sizes = np.bincount(group_of, minlength=emb.gamma.shape[0])
    totals = np.bincount(group_of, weights=counts, minlength=emb.gamma.shape[0])
    results["search_valid_auc"] = float(state["search_best_auc"])
    results["groups"] = {"bits": np.asarray(emb.group_bits[...]).tolist(),
                         "mean_count": (totals / np.maximum(sizes, 1)).tolist(),
                         "size": sizes.tolist(), "selection": config.mpe.selection}
  run.close()
  return run.write_results(results)


def _start_retrain(config, state, graphdefs, tx, ds, counts) -> dict:
  """The spec's retrain: W reset to W0, dense layers / alpha / beta from the best search point, widths
  frozen by the selection rule, fresh optimizer state and early-stopping counters."""
  search = nnx.merge(graphdefs["search", "train"], state["best_params"], state["best_rest"])
  probs = np.asarray(search.embedding.probs())
  if config.mpe.selection == "threshold":
    bits = mpe.select_bits_threshold(probs, search.embedding.candidate_bits)
  else:
    bits = mpe.select_bits_sampling(probs, config.seed, search.embedding.candidate_bits)
  fresh = create_model(config, ds.num_features, ds.num_fields, counts)
  search.embedding.table[...] = fresh.embedding.table[...]
  search.embedding.group_bits[...] = jnp.asarray(bits, jnp.int32)
  _, params, rest = split_model(search, train=True, phase="retrain")
  return dict(state, params=params, rest=rest, opt_state=tx.init(params),
              best_params=_copy(params), best_rest=_copy(rest), phase=np.int32(1), epoch=np.int32(0),
              best_auc=np.float64(-np.inf), best_epoch=np.int32(-1), bad_epochs=np.int32(0),
              search_best_auc=np.float64(state["best_auc"]))


def default_config() -> ml_collections.ConfigDict:
  """The spec's defaults (D = 16, Adam 1e-3, batch 10,000, DNN [1024, 512, 256], G = 128, tau = 3e-3).

  Experiment configs start from this and override what their dataset needs; every key the trainer reads is
  here, so a misspelt command-line override fails when the flags are parsed.
  """
  c = ml_collections.ConfigDict()
  c.method = "mpe"  # One of METHODS.
  c.seed = 0  # Seeds the initialisation, the batch order and the random data split.
  c.data = ml_collections.ConfigDict({"spec": "criteo-sample", "cache_dir": ""})
  c.model = ml_collections.ConfigDict({"backbone": "dnn", "dim": 16, "hidden": (1024, 512, 256)})
  c.train = ml_collections.ConfigDict({
      "batch_size": 10_000, "eval_batch_size": 50_000, "learning_rate": 1e-3,
      "l2": 0.0,  # Coupled L2 on the dense layers and the table (3e-6 on Criteo in the spec).
      "max_epochs": 30,  # Per phase (MPE: the search and the retrain each).
      "patience": 3,  # Epochs without a better validation AUC before stopping.
      "stop_after_steps": 0,  # > 0: stop after this many steps in total (stand-in for an interruption).
  })
  c.lsq = ml_collections.ConfigDict({"bits": 6})
  c.alpt = ml_collections.ConfigDict({"bits": 8})
  c.qr = ml_collections.ConfigDict({"ratio": 2})
  c.mpe = ml_collections.ConfigDict({
      "num_groups": 128, "tau": 3e-3,
      "lam": 3e-4,  # The spec's Criteo value; per-dataset choices are documented in each config.
      "selection": "threshold",  # 'threshold' (the authors' rule) or 'sampling' (ours).
  })
  return c
