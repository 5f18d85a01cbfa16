"""MPE on the embedded 9,999-row Criteo sample (a smoke run on real Criteo preprocessing, not a benchmark).

Command:
  python -m experiments.mpe --config=experiments/configs/mpe_criteo_sample.py --workdir=runs/mpe_criteo_sample
Measured (seed 0, 2-core shared CPU, 2026-11-30, same before and after methods.py): test AUC 0.6877, logloss
0.5022, 2.419 mean bits/feature (13.2x by 32/bits, 12.3x by bytes), 6 search + 5 retrain epochs (2026-11-23,
with the data code of then: 0.6948, 2.458 bits, 18 s wall). 8k training rows are far too few for a CTR
model, so read nothing into the numbers beyond "it trains on real Criteo preprocessing".
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
