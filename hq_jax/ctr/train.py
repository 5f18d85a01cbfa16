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

Device mesh (`config.mesh`, `hq_jax.parallel`): `mesh.data` x `mesh.model` devices (every process's). Batches
(train and evaluation) are split over 'data'; the embedding table, and everything shaped like it (Adam's
moments, lazy Adam's, row-wise Adagrad's accumulator), is row-sharded over 'model' and replicated over
'data'; everything else is replicated. The table is padded at the end to `table_rows(...)` rows (a multiple
of `mesh.model`, or of `mesh.row_multiple`): zero rows no id indexes, whose gradient is exactly 0 and which
every optimizer leaves at 0 (dense Adam's update is 0 / (0 + eps), the sparse ones never touch them), so a
padded run trains like an unpadded one; they are dropped before the export. The initial parameters are
computed by one program on one device whatever the mesh (the same W0 to the bit: a quantizer would turn a
1-ulp difference into flipped codes), then placed on the mesh; each step pins its outputs to the layout, and a
checkpoint restores onto whatever mesh the rerun has (`parallel.with_shardings`; another padded row count:
`RunDir.restore` adds or drops the zero padding rows). With one device
and no padding nothing is sharded: the code path and results are those of a single-device run. The row
gathers and scatters of a row-sharded table are left to XLA's SPMD partitioner (GSPMD).
"""

import functools
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from hq_jax import parallel
from hq_jax import workdir as workdir_lib
from hq_jax.ctr import metrics, models, sparse
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


def table_rows(config: ml_collections.ConfigDict, num_features: int, mesh: jax.sharding.Mesh) -> int:
  """Rows of the table on `mesh`: `num_features` rounded up to a multiple of `mesh.row_multiple` (0: of the
  'model' size), so that it row-shards evenly (`parallel.padded_rows`). Methods without one row table (qr)
  are not padded."""
  if not METHODS[config.method].row_table:
    return num_features
  return parallel.padded_rows(num_features, mesh, config.mesh.row_multiple, axes=(parallel.MODEL,))


def pad_table(model: models.CTRModel, num_rows: int) -> models.CTRModel:
  """`model` with zero rows appended to its table up to `num_rows` (`parallel.pad_rows`; no-op if equal)."""
  emb = model.embedding
  if isinstance(emb, models.Embedding) and emb.table.shape[0] != num_rows:
    emb.table.set_value(parallel.pad_rows(emb.table[...], num_rows))
  return model


def unpad_table(model: models.CTRModel) -> models.CTRModel:
  """`model` with its table cut back to its `num_features` rows on the host (for the export and results)."""
  emb = model.embedding
  if isinstance(emb, models.Embedding) and emb.table.shape[0] != emb.num_features:
    emb.table.set_value(np.asarray(emb.table[...])[:emb.num_features])
  return model


def split_model(model: models.CTRModel, *, train: bool):
  """(graphdef, params, rest) of `model` in train or eval mode (BatchNorm statistics)."""
  model.train() if train else model.eval()
  return nnx.split(model, nnx.Param, ...)


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam; the spec's coupled L2 is a loss term (`l2_penalty`), not decoupled weight decay."""
  return optax.adam(config.train.learning_rate)


def create_table_optimizer(config: ml_collections.ConfigDict) -> sparse.TableOptimizer | None:
  """`config.train.table_optimizer`'s sparse optimizer of the table (step size `train.table_learning_rate`, or
  `train.learning_rate` where that is 0), or None for 'dense_adam': the table is on `create_optimizer`."""
  return sparse.table_optimizer(config.train.table_optimizer,
                                float(config.train.table_learning_rate or config.train.learning_rate))


def main_params(table_opt: sparse.TableOptimizer | None) -> nnx.filterlib.Filter:
  """What the step differentiates and `tx` updates first: every Param but the table where a sparse optimizer has
  it, and but the parameters learnt after that update (`models.PostUpdateParam`: ALPT's step size)."""
  keep = [nnx.Param, nnx.Not(models.PostUpdateParam)]
  return nnx.All(*keep, nnx.Not(models.TableParam)) if table_opt is not None else nnx.All(*keep)


def init_optimizer(model: models.CTRModel, tx: optax.GradientTransformation,
                   table_opt: sparse.TableOptimizer | None):
  """The optimizer state of `model`: `tx`'s of every Param where `tx` updates them all at once (every method but
  ALPT with dense Adam: the checkpoints' layout), else a dict of 'dense' (`tx`'s of the `main_params`), 'table'
  (`table_opt`'s, with a sparse table optimizer) and 'post_update' (`tx`'s of the `models.PostUpdateParam`s,
  if any: ALPT's step size has its own optimizer state, as in Hetu's ALPT implementation)."""
  post = nnx.state(model, models.PostUpdateParam)
  if table_opt is None and not jax.tree.leaves(post):
    return tx.init(nnx.state(model, nnx.Param))
  state = {"dense": tx.init(nnx.state(model, main_params(table_opt)))}
  if table_opt is not None:
    state["table"] = table_opt.init(model.embedding.table[...])
  if jax.tree.leaves(post):
    state["post_update"] = tx.init(post)
  return state


def l2_penalty(model: models.CTRModel, rows: jax.Array | None = None) -> jax.Array:
  """0.5 * sum of squares of the dense layers and the table (quantizer parameters exempt).

  Its gradient is w, the same as PyTorch Adam's coupled `weight_decay` the authors use. With `rows` (the
  sparse step's gathered rows), the table counts only through them: untouched rows get no L2 that step.
  """
  what = nnx.All(nnx.Param, nnx.Not(models.QuantParam))
  leaves = jax.tree.leaves(nnx.state(model, what if rows is None else nnx.All(what, nnx.Not(models.TableParam))))
  return 0.5 * sum(jnp.sum(jnp.square(x)) for x in leaves + ([] if rows is None else [rows]))


# ---------------------------------------------------------------------------------------------------------
# Steps.


def make_train_step(graphdef, tx: optax.GradientTransformation, *, l2: float, lam: float,
                    table_opt: sparse.TableOptimizer | None = None, out_shardings=None):
  """A jitted `(params, rest, opt_state, ids, labels, rng) -> (params, rest, opt_state, measurements)`.

  One step: the loss's gradient with respect to the `main_params`; `tx` (and `table_opt`) update them; the
  `models.PostUpdateParam`s (ALPT's step size) learn from the loss of the updated weights (the updated float
  rows quantized with the step, through the updated dense layers, as Hetu's ALPT implementation does; this
  second pass's BatchNorm statistics are dropped); then the table is written back where its method keeps it
  (`Embedding.post_update` / `constrain_rows`: ALPT's grid of the new step).

  With `table_opt`, the step is sparse (`sparse.py`): the loss is differentiated with respect to the batch's
  unique rows W[unique(ids)] (U, D), not the table, and only those rows are updated and written back, so no
  (N, D) array is computed; the other parameters stay on `tx`. On a mesh, `out_shardings` pins the outputs'
  layouts to the state's (so that no call recompiles for a layout XLA chose).
  """
  main = main_params(table_opt)

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2), out_shardings=out_shardings)
  def train_step(params, rest, opt_state, ids, labels, rng):
    model = nnx.merge(graphdef, params, rest)
    emb = model.embedding
    post_update = bool(jax.tree.leaves(nnx.state(model, models.PostUpdateParam)))
    if table_opt is not None:  # The table's rows, padding included: padded unique slots stay out of range.
      unique, inverse = sparse.unique_rows(ids, emb.table.shape[0])
      rows = sparse.gather_rows(emb.table[...], unique)

    def loss_fn(model, rows):
      e = model.embedding(ids) if rows is None else model.embedding.embed_rows(rows[inverse], ids)
      bce = jnp.mean(optax.sigmoid_binary_cross_entropy(model.backbone(e), labels))
      reg = model.embedding.regularizer()
      loss = bce + lam * reg
      if l2:
        loss = loss + l2 * l2_penalty(model, rows)
      return loss, (bce, reg)

    # nnx.value_and_grad differentiates the Params and lets BatchNorm update its statistics in place.
    grad_fn = nnx.value_and_grad(loss_fn, argnums=(nnx.DiffState(0, main), 1), has_aux=True)
    (loss, (bce, reg)), grads = grad_fn(model, None if table_opt is None else rows)
    params = nnx.state(model, main)
    split_state = table_opt is not None or post_update  # `init_optimizer`'s dict
    updates, dense_state = tx.update(grads[0], opt_state["dense"] if split_state else opt_state, params)
    nnx.update(model, optax.apply_updates(params, updates))
    new_state = {"dense": dense_state}
    if table_opt is not None:  # Only the batch's rows of W and of the table's optimizer state are read and written.
      rows, new_state["table"] = table_opt.step_rows(rows, opt_state["table"], unique, grads[1])
    post_grads = None
    if post_update:  # From the updated weights, before the write-back; a second forward pass's statistics dropped.
      post = nnx.state(model, models.PostUpdateParam)
      post_grads = nnx.grad(lambda m: loss_fn(m, None if table_opt is None else rows)[0],
                            argnums=nnx.DiffState(0, models.PostUpdateParam))(nnx.clone(model))
      post_updates, new_state["post_update"] = tx.update(post_grads, opt_state["post_update"], post)
      nnx.update(model, optax.apply_updates(post, post_updates))
    if table_opt is None:
      emb.post_update(rng)
    else:
      emb.table[...] = sparse.scatter_rows(emb.table[...], unique, emb.constrain_rows(rows, rng))
    opt_state = new_state if split_state else dense_state
    _, params, rest = nnx.split(model, nnx.Param, ...)
    return params, rest, opt_state, {"loss": loss, "bce": bce, "reg": reg,
                                     "grad_norm": optax.tree.norm((grads, post_grads))}

  return train_step


def make_predict(graphdef, out_shardings=None):
  """A jitted `(params, rest, ids) -> logits` in eval mode (on a mesh: `out_shardings` replicated)."""

  @functools.partial(jax.jit, out_shardings=out_shardings)
  def predict(params, rest, ids):
    return nnx.merge(graphdef, params, rest)(ids)

  return predict


def evaluate(predict, params, rest, ids: np.ndarray, labels: np.ndarray, batch_size: int, *,
             put_batch=jnp.asarray, batch_multiple: int = 1) -> dict:
  """AUC and logloss over a split; the last batch is padded so that only one shape is compiled.

  On a mesh, `put_batch` places a batch split over 'data' and `batch_multiple` (= mesh.data) rounds the
  batch size up so that it divides.
  """
  n = ids.shape[0]
  batch_size = -(-min(batch_size, n) // batch_multiple) * batch_multiple
  logits = []
  for start in range(0, n, batch_size):
    chunk = np.asarray(ids[start:start + batch_size])
    pad = batch_size - chunk.shape[0]
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad, chunk.shape[1]), chunk.dtype)])
    logits.append(np.asarray(predict(params, rest, put_batch(chunk)))[:batch_size - pad])
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
  if config.train.table_optimizer not in sparse.TABLE_OPTIMIZERS:
    raise UserError(f"config.train.table_optimizer: unknown optimizer {config.train.table_optimizer!r}; expected "
                    f"one of {', '.join(sparse.TABLE_OPTIMIZERS)}")
  if config.train.table_optimizer == "dense_adam" and config.train.table_learning_rate:
    raise UserError("config.train.table_learning_rate is the step size of a sparse table optimizer; with "
                    "table_optimizer='dense_adam' the table uses train.learning_rate")
  if config.train.table_optimizer != "dense_adam" and not METHODS[config.method].row_table:
    raise UserError(f"config.train.table_optimizer={config.train.table_optimizer!r} updates the rows of one "
                    f"embedding table; method {config.method!r} has none (use 'dense_adam')")
  METHODS[config.method].validate(config)


def _load_data(config: ml_collections.ConfigDict):
  from hq_jax.ctr import data  # Imported here: only the trainer needs the loaders.
  try:
    return data.load_ctr(config.data.spec, cache_dir=config.data.cache_dir or None, seed=config.seed)
  except (FileNotFoundError, OSError) as e:
    raise UserError(f"config.data.spec {config.data.spec!r}: {e}") from e


_norm = jax.jit(optax.tree.norm)


def _copy(tree):
  """A host copy that survives the donation of the device buffers it was taken from (the global values,
  also of arrays sharded across processes)."""
  return jax.tree.map(lambda x: np.array(x), parallel.gather(tree))


# Config keys that do not change the result: a rerun may change them (see `hq_jax.workdir.RunDir`). The mesh's
# shape only changes float rounding (and a checkpoint restores onto any mesh); `mesh.row_multiple` changes
# the checkpoint's shapes, so it stays.
RESULT_NEUTRAL_KEYS = ("train.eval_batch_size", "data.cache_dir", "train.stop_after_steps", "mesh.data",
                       "mesh.model")


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

  # ---- Mesh (one device and an unpadded table: nothing is sharded, the single-device code path exactly).
  mesh = parallel.mesh_from_config(config.mesh.data, config.mesh.model)
  parallel.check_batch_size(batch_size, mesh)
  num_rows = table_rows(config, ds.num_features, mesh)
  on_mesh = mesh.size > 1 or num_rows != ds.num_features
  replicated = parallel.replicated(mesh) if on_mesh else None
  put_batch = (lambda x: parallel.put(x, parallel.batch_sharding(mesh))) if on_mesh else jnp.asarray
  # The workdir's config is checked before any model is built or compiled: a rerun with another config stops
  # at once (../shared/cases/ctr-resume-config-mismatch took minutes of compilation to say so).
  run = workdir_lib.RunDir(workdir, config, epochs_key="train.max_epochs", ignore=RESULT_NEUTRAL_KEYS,
                           extend=extend)

  # ---- Model, optimizer, steps (one graph per phase and mode: the method may switch its table's phase).
  method = METHODS[config.method]
  phases = method.phases
  make_model = lambda: pad_table(create_model(config, ds.num_features, ds.num_fields, counts), num_rows)
  model = nnx.eval_shape(make_model)
  graphdefs = {}
  for phase in phases:
    method.enter_phase(model.embedding, phase)
    graphdefs[phase, "eval"], _, _ = split_model(model, train=False)
    graphdefs[phase, "train"], _, _ = split_model(model, train=True)
  tx, table_opt = create_optimizer(config), create_table_optimizer(config)

  def init():
    """The parameters (train mode) and optimizer state of `config.seed` (their shapes give the shardings)."""
    model = make_model()
    _, params, rest = split_model(model, train=True)
    return {"params": params, "rest": rest, "opt_state": init_optimizer(model, tx, table_opt)}

  # Row-sharded: the one row table and its optimizer state (qr has none: its two small tables are replicated).
  shardings = (parallel.state_shardings(jax.eval_shape(init), mesh, table_rows=num_rows if method.row_table else ())
               if on_mesh else None)
  # W0 and the other initial parameters come from one program on one device, whatever the mesh: compiled for
  # a sharded output, XLA computes the random normals and LSQ's initial step mean|W0| in other fusions and
  # summation orders, 1 ulp apart, and a quantizer turns 1 ulp into flipped codes (LSQ test AUC 0.636 on 1 x 4
  # against 0.638 on one device). The cost: the unpadded table once on one device at the start.
  init_model = jax.jit(lambda: split_model(create_model(config, ds.num_features, ds.num_fields, counts),
                                           train=True)[1:])

  def initial_params():
    """(params, rest) of `config.seed` in train mode, padded and placed on the mesh: the same values on any
    mesh (MPE's retrain resets W to this W0 too)."""
    with jax.default_device(jax.local_devices()[0]):
      params, rest = init_model()
    if not on_mesh:
      return params, rest
    model = pad_table(nnx.merge(graphdefs[phases[0], "train"], *jax.device_get((params, rest))), num_rows)
    _, params, rest = split_model(model, train=True)
    return parallel.put(params, shardings["params"]), parallel.put(rest, shardings["rest"])

  params, rest = initial_params()
  step_shardings = (shardings["params"], shardings["rest"], shardings["opt_state"], replicated) if on_mesh else None
  train_steps = {p: make_train_step(graphdefs[p, "train"], tx, l2=float(config.train.l2),
                                    lam=method.regularizer_weight(config, p), table_opt=table_opt,
                                    out_shardings=step_shardings) for p in phases}
  predicts = {p: make_predict(graphdefs[p, "eval"], out_shardings=replicated) for p in phases}
  init_opt = jax.jit(lambda params, rest: init_optimizer(nnx.merge(graphdefs[phases[0], "train"], params, rest),
                                                         tx, table_opt),
                     out_shardings=shardings["opt_state"] if on_mesh else None)

  # ---- State (what a checkpoint holds); restored onto this mesh, whatever mesh wrote it.
  state = {"params": params, "rest": rest, "opt_state": init_opt(params, rest),
           "best_params": _copy(params), "best_rest": _copy(rest),
           "phase": np.int32(0), "epoch": np.int32(0), "step": np.int64(0),
           "best_auc": np.float64(-np.inf), "best_epoch": np.int32(-1), "bad_epochs": np.int32(0),
           "train_seconds": np.zeros(len(phases)), "epochs_done": np.zeros(len(phases), np.int32),
           "phase_best_auc": np.full(len(phases), np.nan)}
  # The device state restores with this mesh's shardings; host copies and counters as NumPy.
  restored = run.restore(dict(state, **{k: parallel.with_shardings(state[k], shardings[k])
                                        for k in ("params", "rest", "opt_state")}) if on_mesh else state,
                         unpadded_rows=ds.num_features)  # another mesh's padding is restored too
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
        params, rest, opt_state, m = train_step(params, rest, opt_state, put_batch(train_ids[idx]),
                                                put_batch(train_labels[idx]), jax.random.fold_in(base_key, step))
        history.append({k: m[k] for k in ("loss", "bce", "reg")})
        step += 1
        if stop_after and step >= stop_after:
          run.close()
          return {"status": "stopped", "step": step}
      history = jax.device_get(jax.tree.map(lambda *xs: jnp.stack(xs), *history))  # one sync per epoch
      run.check_finite(history["loss"], epoch=epoch, first_step=first_step, where=f"{phase} phase")
      sums = {k: float(np.sum(v, dtype=np.float64)) for k, v in history.items()}
      train_seconds = time.time() - epoch_start
      valid = evaluate(predict, params, rest, valid_ids, valid_labels, config.train.eval_batch_size,
                       put_batch=put_batch, batch_multiple=mesh.shape[parallel.DATA])
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
                "grad_norm": float(m["grad_norm"]), "param_norm": float(_norm(params))}
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
    model = nnx.merge(graphdefs[phase, "train"], _copy(state["best_params"]), _copy(state["best_rest"]))
    initial = nnx.merge(graphdefs[phases[0], "train"], *_copy(initial_params()))
    method.next_phase(config, model.embedding, initial.embedding)
    warning = method.phase_warning(model.embedding, ds.field_offsets, ds.summary.get("field_names"))
    if warning and jax.process_index() == 0:  # e.g. MPE's selection pruned every feature: lambda too strong
      print(f"{config.method}: warning: {warning}", file=sys.stderr, flush=True)
    method.enter_phase(model.embedding, phases[phase_index + 1])
    _, params, rest = split_model(model, train=True)
    if on_mesh:
      params, rest = parallel.put(params, shardings["params"]), parallel.put(rest, shardings["rest"])
    state = dict(state, params=params, rest=rest, opt_state=init_opt(params, rest),
                 best_params=_copy(params), best_rest=_copy(rest), phase=np.int32(phase_index + 1),
                 epoch=np.int32(0), best_auc=np.float64(-np.inf), best_epoch=np.int32(-1), bad_epochs=np.int32(0))

  # ---- Test at the best point of the last phase, export, results.
  best_params, best_rest = state["best_params"], state["best_rest"]
  if on_mesh:
    best_params, best_rest = (parallel.put(_copy(best_params), shardings["params"]),
                              parallel.put(_copy(best_rest), shardings["rest"]))
  test = evaluate(predicts[phase], best_params, best_rest, test_ids, test_labels,
                  config.train.eval_batch_size, put_batch=put_batch, batch_multiple=mesh.shape[parallel.DATA])
  final = unpad_table(nnx.merge(graphdefs[phase, "eval"], _copy(best_params), _copy(best_rest))).embedding
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
