"""LightGCN / HQ-GNN on Gowalla (the standard LightGCN split, read from a path).

Command (reference schedule: d=64, K=3, Adam 1e-3, batch 2048, decay 1e-4, 1000 epochs):
  python -m experiments.hqgnn --config=experiments/configs/hqgnn_gowalla.py --workdir=runs/gowalla_fp \
      --config.data_dir=../shared/data/gowalla

Measured results and time per epoch: results/foundation.md (47.6 s/epoch at batch 2048 on a 2-core CPU; a
faster batch-8192 schedule, 165 epochs at Adam 4e-3, 340 at 4e-4, 400 with a cosine decay from 2e-3
(`--config.train.lr_schedule=cosine`) and 120 more from 5e-4, reached Recall@20 0.1821 / NDCG@20 0.1553 at
12.7 s/epoch; the reference: 0.1824 / 0.1547).
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
