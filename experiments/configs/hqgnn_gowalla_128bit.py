"""HQ-GNN on Gowalla with product codes at 128 code bits per node (M = 16 sub-codes of 8 bits, users and items
coded), fine-tuned from the trained full-precision encoder of `hqgnn_gowalla_fast.py` (issue 22).

Setting: `hqgnn_gowalla_64bit.py`'s (LastFM's validation choice with Gowalla's fine-tuning schedule) with
M = 16.

Command (after the encoder of hqgnn_gowalla_64bit.py):
  python -m experiments.hqgnn --config=experiments/configs/hqgnn_gowalla_128bit.py --workdir=runs/gowalla_128bit

Measured (seed 0, test, 4 epochs, 2-core AMD EPYC shared with other jobs, 2026-12-07; results/hqgnn_frontier.md,
"hq_jax product codes, Gowalla"): Recall@20 0.1598 (89.8% of the start), NDCG@20 0.1350; FAISS OPQ16 on the same encoder 0.1588. Target >= 95% missed.
"""

from experiments.configs import hqgnn_gowalla_64bit


def get_config():
  config = hqgnn_gowalla_64bit.get_config()
  config.quant.pq_subspaces = 16
  return config
