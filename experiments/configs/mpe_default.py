"""The MPE spec's defaults for every CTR run (`experiments.mpe`); the other `mpe_*.py` configs build on it.

D = 16, W ~ N(0, 0.003^2), Adam 1e-3, batch 10,000, DNN [1024, 512, 256], G = 128, tau = 3e-3, lambda 3e-4
(the spec's Criteo value), threshold selection, early stopping with patience 3 (`specs/mpe.md`). Every key the
trainer reads is here, so a misspelt command-line override fails when the flags are parsed.

Command (on the embedded 9,999-row Criteo sample, the default data):
  python -m experiments.mpe --config=experiments/configs/mpe_default.py --workdir=runs/mpe_default
Measured (seed 0, AMD EPYC, 2 shared cores, 2026-12-07 UTC, after the MLP lost its zero-gradient biases
before BatchNorm, issue 21): ~1 min wall; test AUC 0.6884, logloss 0.6064, 6.000 mean bits/feature (the search
kept every group at 6 bits: 5.3x), 4 search + 10 retrain epochs of one 8k-row step each (the old model,
2026-11-30: 0.6248, logloss 0.6953, 4 + 8 epochs).
On 8k training rows this only shows that the defaults run; the experiment configs override what they need.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "mpe"  # fp, lsq, alpt, qr or mpe (hq_jax.ctr.methods.METHODS).
  c.seed = 0  # Seeds the initialisation, the batch order and the random data split.
  c.data = ml_collections.ConfigDict({"spec": "criteo-sample", "cache_dir": ""})
  c.model = ml_collections.ConfigDict({"backbone": "dnn", "dim": 16, "hidden": (1024, 512, 256)})
  c.train = ml_collections.ConfigDict({
      "batch_size": 10_000, "eval_batch_size": 50_000, "learning_rate": 1e-3,
      "l2": 0.0,  # Coupled L2 on the dense layers and the table (3e-6 on Criteo in the spec).
      "max_epochs": 30,  # Per phase (MPE: the search and the retrain each).
      "patience": 3,  # Epochs without a better validation AUC before stopping.
      "stop_after_steps": 0,  # > 0: stop after this many steps in total (stand-in for an interruption).
      # How the embedding table is updated (hq_jax.ctr.sparse, results/scale.md): 'dense_adam' (with the dense
      # layers, every row at every step: the spec's, kept as the default so results stay as measured);
      # 'lazy_adam' (only the batch's rows, a step costs O(batch); RECOMMENDED for large tables: same AUC as
      # dense Adam on Frappe and the 1M synthetic set with the same learning rate); 'rowwise_adagrad' (one
      # accumulator per row; needs table_learning_rate ~1e-2).
      "table_optimizer": "dense_adam",
      "table_learning_rate": 0.0,  # Step size of a sparse table optimizer; 0: train.learning_rate.
  })
  c.lsq = ml_collections.ConfigDict({"bits": 6})
  c.alpt = ml_collections.ConfigDict({"bits": 8})
  c.qr = ml_collections.ConfigDict({"ratio": 2})
  c.mpe = ml_collections.ConfigDict({
      "num_groups": 128, "tau": 3e-3,
      "lam": 3e-4,  # The spec's Criteo value; per-dataset choices are documented in each config.
      "selection": "threshold",  # 'threshold' (the authors' rule) or 'sampling' (ours).
  })
  # Device mesh (hq_jax.parallel): batches split over `data`, the table's rows over `model`; the product is
  # the number of devices (every process's). row_multiple pads the table to a multiple of it (0: of `model`);
  # a fixed one (e.g. 64) lets a checkpoint move between mesh shapes. data and model change every method's steps
  # only by float rounding (a rerun may change them): fp (dense Adam, row-wise Adagrad), lsq and qr end within
  # 1e-4 test AUC of one device (tests/ctr/train_mesh_test.py); alpt, mpe and fp with lazy Adam amplify that
  # rounding over a run (1e-4 to 4e-2 on the test config; README "Several devices"). row_multiple changes the
  # checkpoint's shapes.
  c.mesh = ml_collections.ConfigDict({"data": 1, "model": 1, "row_multiple": 0})
  return c
