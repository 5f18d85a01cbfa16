"""MPE on the embedded 9,999-row Criteo sample (a smoke run on real Criteo preprocessing, not a benchmark).

Command:
  python -m experiments.mpe --config=experiments/configs/mpe_criteo_sample.py --workdir=runs/mpe_criteo_sample
Measured (seed 0, AMD EPYC, 2 shared cores, 2026-12-07 UTC, after the MLP lost its zero-gradient biases
before BatchNorm, issue 21): test AUC 0.6819, logloss 0.5048, 2.598 mean bits/feature (12.3x by 32/bits,
11.5x by bytes), 6 search + 5 retrain epochs, 33 s wall (the old model, 2026-11-30: 0.6877, 2.419 bits).
8k training rows are far too few for a CTR model, so read nothing into the numbers beyond "it trains on
real Criteo preprocessing".
"""

from experiments.configs import mpe_default


def get_config():
  c = mpe_default.get_config()
  c.method = "mpe"
  c.data.spec = "criteo-sample"
  c.model.hidden = (256, 128)
  c.train.batch_size = 1000
  c.train.max_epochs = 10
  c.train.patience = 3
  c.train.l2 = 3e-6  # The spec's Criteo value.
  c.mpe.lam = 3e-4  # The spec's Criteo value.
  c.mpe.num_groups = 128
  return c
