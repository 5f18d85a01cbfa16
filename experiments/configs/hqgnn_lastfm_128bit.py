"""HQ-GNN on LastFM with product codes at 128 code bits per node (M = 16 sub-codes of 8 bits, users and items
coded; codebooks beside it: 164.3 bits per node), d = 64, from scratch in one command (issue 22).

Setting (chosen on the validation split, `--config.eval.split=valid`, seed 0, from a 600-epoch full-precision
start; results/hqgnn_frontier.md, "hq_jax product codes, LastFM"): 400 full-precision epochs
(`train.pretrain_epochs`, in <workdir>/pretrain), the trained encoder rotated by OPQ's rotation
(`quant.pq_rotation = 'opq'`, Ge et al. CVPR 2013; scores unchanged), codebooks per side from a seeded
k-means, then 50 epochs of end-to-end training with the STE (codebooks by Adam on dL/dC, lr 1e-3). On
validation at M = 8, OPQ was the largest gain (+0.009 Recall@20 over no rotation); GSTE vs STE, shared vs
separate codebooks and EMA codebooks were within one seed's noise; M = 16 took the M = 8 choice.

Command:
  python -m experiments.hqgnn --config=experiments/configs/hqgnn_lastfm_128bit.py --workdir=runs/lastfm_128bit

Test result (seed 0 only, AMD EPYC 2-core CPU shared with other jobs, 2026-12-07): Recall@20 0.2578,
NDCG@20 0.2004, Recall@50 0.4101 (0.2590 / 0.1983 after 25 of the 50 epochs); its full-precision stage 0.2676.
FAISS post-training PQ16x8 on the make-run encoder (0.2493): 0.2458 both sides coded (separate).
"""

from experiments.configs import hqgnn_lastfm_64bit


def get_config():
  config = hqgnn_lastfm_64bit.get_config()  # the setting chosen at 64 bits, with M = 16 sub-codes
  config.quant.pq_subspaces = 16
  return config
