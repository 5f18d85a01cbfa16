"""MPE on the embedded 9,999-row Criteo sample (a smoke run on real Criteo preprocessing, not a benchmark).

Command:
  python -m experiments.mpe --config=experiments/configs/mpe_criteo_sample.py --workdir=runs/mpe_criteo_sample
Measured (seed 0, 2-core shared CPU, 2026-11-23): 18 s wall; test AUC 0.6948, logloss 0.5029, 2.458 mean
bits/feature (13.0x by 32/bits, 12.1x by bytes), 6 search + 5 retrain epochs. 8k training rows are far
too few for a CTR model, so read nothing into the numbers beyond "it trains on real Criteo preprocessing".
"""

from hq_jax.ctr import train


def get_config():
  c = train.default_config()
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
