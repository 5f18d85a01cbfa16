"""LightGCN / HQ-GNN on Gowalla (the standard LightGCN split, read from a path).

Command (reference schedule: d=64, K=3, Adam 1e-3, batch 2048, decay 1e-4, 1000 epochs):
  python -m experiments.hqgnn --config=experiments/configs/hqgnn_gowalla.py --workdir=runs/gowalla_fp \
      --config.data_dir=../shared/data/gowalla

Measured results and time per epoch: results/foundation.md.
"""

from experiments.configs import hqgnn_lastfm


def get_config():
  config = hqgnn_lastfm.get_config()
  config.data_dir = "../shared/data/gowalla"
  config.train.epochs = 1000
  config.train.log_every = 1
  config.train.checkpoint_every = 5
  config.eval.every = 20
  config.eval.batch_size = 1024
  return config
