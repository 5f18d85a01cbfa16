"""HQ-GNN on Gowalla with product codes at 256 code bits per node (M = 32 sub-codes of 8 bits, users and items
coded), fine-tuned from the trained full-precision encoder of `hqgnn_gowalla_fast.py` (issue 22).

Setting: `hqgnn_gowalla_64bit.py`'s (LastFM's validation choice with Gowalla's fine-tuning schedule) with
M = 32.

Command (after the encoder of hqgnn_gowalla_64bit.py):
  python -m experiments.hqgnn --config=experiments/configs/hqgnn_gowalla_256bit.py --workdir=runs/gowalla_256bit

Measured (seed 0, test, 4 epochs, 2-core AMD EPYC, quiet, 2026-12-08; results/hqgnn_frontier.md): Recall@20
0.1753 (98.5% of the start), NDCG@20 0.1507; FAISS PQ32x8 both-shared 0.1755 on the same encoder. Target
>= 99% missed.
"""

from experiments.configs import hqgnn_gowalla_64bit


def get_config():
  config = hqgnn_gowalla_64bit.get_config()
  config.quant.pq_subspaces = 32
  return config
