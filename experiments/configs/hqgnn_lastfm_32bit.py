"""HQ-GNN on LastFM with product codes at 32 code bits per node (M = 4 sub-codes of 8 bits, users and items
coded; codebooks beside it: 164.3 bits per node), d = 64, from scratch in one command (issue 22).

Setting (chosen on the validation split, `--config.eval.split=valid`, seed 0, from a 600-epoch full-precision
start; results/hqgnn_frontier.md, "hq_jax product codes, LastFM"): 400 full-precision epochs
(`train.pretrain_epochs`, in <workdir>/pretrain), the trained encoder rotated by OPQ's rotation
(`quant.pq_rotation = 'opq'`, Ge et al. CVPR 2013; scores unchanged), codebooks per side from a seeded
k-means, then 50 epochs of end-to-end training with the STE (codebooks by Adam on dL/dC, lr 1e-3). On
validation at M = 8, OPQ was the largest gain (+0.009 Recall@20 over no rotation); GSTE vs STE, shared vs
separate codebooks and EMA codebooks were within one seed's noise; M = 4 took the M = 8 choice.

Command:
  python -m experiments.hqgnn --config=experiments/configs/hqgnn_lastfm_32bit.py --workdir=runs/lastfm_32bit

Test result (seed 0 only, AMD EPYC 2-core CPU shared with other jobs, 2026-12-07): Recall@20 0.2296,
NDCG@20 0.1686, Recall@50 0.3658 (0.2279 / 0.1694 after 25 of the 50 epochs); its full-precision stage 0.2676.
FAISS post-training OPQ4 on the make-run encoder (0.2493): 0.2241 both sides coded. Training time under that load:
about 10 minutes (400 fp epochs) + 12 minutes (50 product-code epochs).
"""

from experiments.configs import hqgnn_lastfm_64bit


def get_config():
  config = hqgnn_lastfm_64bit.get_config()  # the setting chosen at 64 bits, with M = 4 sub-codes
  config.quant.pq_subspaces = 4
  return config
