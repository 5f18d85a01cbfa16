"""Training and evaluation of CTR models for every embedding method of the MPE comparison.

`train_and_evaluate(config, workdir)` runs `methods.METHODS[config.method]` end to end (fp, lsq, alpt, qr, or
mpe: search, then retrain with frozen widths; see `methods.py`). Each of the method's phases trains with early
stopping on validation AUC (evaluated once per epoch) and keeps the best-validation parameters; the test set
is evaluated once, at the best point of the last phase. Configs: `experiments/configs/mpe_*.py`.

Workdir: `results.json` (config, dataset summary, final metrics, wall time, device), `metrics.jsonl` (one
line per evaluation), `checkpoints/` (after every epoch: parameters, optimizer state, best parameters,
phase, epoch and early-stopping counters, so a rerun on the same workdir continues where it stopped and
reaches the same result as an uninterrupted run) and `export.npz` (the quantized table as it would be
stored, for the quantized methods).
"""

import functools
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from hq_jax import workdir as workdir_lib
from hq_jax.ctr import metrics, models
from hq_jax.ctr.methods import METHODS
from hq_jax.errors import UserError

# ---------------------------------------------------------------------------------------------------------
# Model and optimizer.


def create_model(config: ml_collections.ConfigDict, num_features: int, num_fields: int,
                 counts: np.ndarray) -> models.CTRModel:
  """Embedding + backbone, initialised from `config.seed` (so a second call rebuilds the same W0)."""
  rngs = nnx.Rngs(params=config.seed)
  embedding = METHODS[config.method].create_embedding(config, num_features, counts, rngs)
  backbone = models.make_backbone(config.model.backbone, num_fields, config.model.dim,
                                  config.model.hidden, rngs=rngs)
  return models.CTRModel(embedding, backbone)


def split_model(model: models.CTRModel, *, train: bool):
  """(graphdef, params, rest) of `model` in train or eval mode (BatchNorm statistics)."""
  model.train() if train else model.eval()
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
# The loop.


def _validate(config: ml_collections.ConfigDict) -> None:
  if config.method not in METHODS:
    raise UserError(f"config.method: unknown method {config.method!r}; expected one of {', '.join(METHODS)}")
  if config.model.backbone not in models.BACKBONES:
    raise UserError(f"config.model.backbone: unknown backbone {config.model.backbone!r}; expected one of "
                    f"{', '.join(sorted(models.BACKBONES))}")
  for key in ("batch_size", "eval_batch_size", "max_epochs", "patience"):
    if int(config.train[key]) < 1:
      raise UserError(f"config.train.{key} must be >= 1, got {config.train[key]}")
  METHODS[config.method].validate(config)


def _load_data(config: ml_collections.ConfigDict):
  from hq_jax.ctr import data  # Imported here: only the trainer needs the loaders.
  try:
    return data.load_ctr(config.data.spec, cache_dir=config.data.cache_dir or None, seed=config.seed)
  except (FileNotFoundError, OSError) as e:
    raise UserError(f"config.data.spec {config.data.spec!r}: {e}") from e


def _copy(tree):
  """A host copy that survives the donation of the device buffers it was taken from."""
  return jax.tree.map(lambda x: np.array(x), tree)


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

  # ---- Model, optimizer, steps (one graph per phase and mode: the method may switch its table's phase).
  method = METHODS[config.method]
  phases = method.phases
  model = create_model(config, ds.num_features, ds.num_fields, counts)
  graphdefs = {}
  for phase in phases:
    method.enter_phase(model.embedding, phase)
    graphdefs[phase, "eval"], _, _ = split_model(model, train=False)
    graphdefs[phase, "train"], params, rest = split_model(model, train=True)
  tx = create_optimizer(config)
  train_steps = {p: make_train_step(graphdefs[p, "train"], tx, l2=float(config.train.l2),
                                    lam=method.regularizer_weight(config, p)) for p in phases}
  predicts = {p: make_predict(graphdefs[p, "eval"]) for p in phases}

  # ---- State (what a checkpoint holds).
  state = {"params": params, "rest": rest, "opt_state": tx.init(params),
           "best_params": _copy(params), "best_rest": _copy(rest),
           "phase": np.int32(0), "epoch": np.int32(0), "step": np.int64(0),
           "best_auc": np.float64(-np.inf), "best_epoch": np.int32(-1), "bad_epochs": np.int32(0),
           "train_seconds": np.zeros(len(phases)), "epochs_done": np.zeros(len(phases), np.int32),
           "phase_best_auc": np.full(len(phases), np.nan)}
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
        state["phase_best_auc"] = np.array(state["phase_best_auc"])
        state["phase_best_auc"][phase_index] = valid["auc"]
      else:
        state["bad_epochs"] = np.int32(int(state["bad_epochs"]) + 1)
      state["train_seconds"], state["epochs_done"] = np.array(state["train_seconds"]), np.array(state["epochs_done"])
      state["train_seconds"][phase_index] += train_seconds
      state["epochs_done"][phase_index] += 1
      record = {"step": step, "phase": phase, "epoch": epoch, "valid_auc": valid["auc"],
                "valid_logloss": valid["logloss"], "train_loss": sums["loss"] / max(steps_per_epoch, 1),
                "train_bce": sums["bce"] / max(steps_per_epoch, 1), "train_seconds": train_seconds,
                "grad_norm": float(m["grad_norm"]), "param_norm": float(m["param_norm"])}
      record.update(method.epoch_record(nnx.merge(graphdefs[phase, "eval"], params, rest).embedding, phase,
                                        sums["reg"] / max(steps_per_epoch, 1)))
      run.metrics.append(record)
      print(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
            flush=True)
      run.save(step, state)

    if phase_index + 1 == len(phases):
      break
    # ---- Next phase (MPE: search -> retrain), set up by the method from the best point of this one, with a
    # fresh optimizer. Not checkpointed by itself: a run resumed here redoes this deterministic step.
    model = nnx.merge(graphdefs[phase, "train"], state["best_params"], state["best_rest"])
    initial = create_model(config, ds.num_features, ds.num_fields, counts)
    method.next_phase(config, model.embedding, initial.embedding)
    method.enter_phase(model.embedding, phases[phase_index + 1])
    _, params, rest = split_model(model, train=True)
    state = dict(state, params=params, rest=rest, opt_state=tx.init(params),
                 best_params=_copy(params), best_rest=_copy(rest), phase=np.int32(phase_index + 1),
                 epoch=np.int32(0), best_auc=np.float64(-np.inf), best_epoch=np.int32(-1), bad_epochs=np.int32(0))

  # ---- Test at the best point of the last phase, export, results.
  best_params, best_rest = state["best_params"], state["best_rest"]
  test = evaluate(predicts[phase], best_params, best_rest, test_ids, test_labels,
                  config.train.eval_batch_size)
  final = nnx.merge(graphdefs[phase, "eval"], best_params, best_rest).embedding
  sizes, arrays = method.export(final)
  if arrays is not None:
    run.write_export(arrays)
  epochs_done = np.asarray(state["epochs_done"])
  train_seconds = np.asarray(state["train_seconds"])
  results = {
      "method": config.method, "config": config, "dataset": {"name": ds.name, **ds.summary},
      "test_auc": test["auc"], "test_logloss": test["logloss"],
      "valid_auc": float(state["best_auc"]), "best_epoch": int(state["best_epoch"]), **sizes,
      "phases": {p: {"epochs": int(epochs_done[i]), "train_seconds": float(train_seconds[i]),
                     "seconds_per_epoch": float(train_seconds[i] / max(epochs_done[i], 1))}
                 for i, p in enumerate(phases)},
      "steps": int(state["step"]), "steps_per_epoch": steps_per_epoch, "batch_size": batch_size,
      "wall_seconds_this_run": time.time() - start_time,
      "device": workdir_lib.device_description(), "finished": workdir_lib.now_iso(),
      **method.results_extra(config, final, counts, np.asarray(state["phase_best_auc"])),
  }
  run.close()
  return run.write_results(results)
