"""Tiny MPE config for the tests: the embedded Criteo sample, a small DNN, 2 epochs per phase.

Command: `python -m experiments.mpe --config=experiments/configs/mpe_test.py --workdir=/tmp/mpe_test
--config.method=mpe` (any of fp, lsq, alpt, qr, mpe). Runtime: a few seconds per method on a 2-core CPU.
Result: not meaningful (9,999 rows); the tests only check the run, the export and resume.
"""

from experiments.configs import mpe_default


def get_config():
  c = mpe_default.get_config()
  c.method = "mpe"
  c.data.spec = "criteo-sample"
  c.model.hidden = (32, 16)
  c.model.dim = 8
  c.train.batch_size = 2000
  c.train.eval_batch_size = 4096
  c.train.max_epochs = 2
  c.train.patience = 2
  c.mpe.num_groups = 16
  c.mpe.lam = 1e-3
  return c
