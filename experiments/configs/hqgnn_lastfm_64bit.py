"""HQ-GNN on LastFM with product codes at 64 code bits per node (M = 8 sub-codes of 8 bits, users and items
coded; codebooks beside it: 164.3 bits per node), d = 64, from scratch in one command (issue 22).

Setting (chosen on the validation split, `--config.eval.split=valid`, seed 0, from a 600-epoch full-precision
start; results/hqgnn_frontier.md, "hq_jax product codes, LastFM"): 400 full-precision epochs
(`train.pretrain_epochs`, in <workdir>/pretrain), the trained encoder rotated by OPQ's rotation
(`quant.pq_rotation = 'opq'`, Ge et al. CVPR 2013; scores unchanged), codebooks per side from a seeded
k-means, then 50 epochs of end-to-end training with the STE (codebooks by Adam on dL/dC, lr 1e-3). On
validation at M = 8, OPQ was the largest gain (+0.009 Recall@20 over no rotation); GSTE vs STE, shared vs
separate codebooks and EMA codebooks were within one seed's noise.

Command:
  python -m experiments.hqgnn --config=experiments/configs/hqgnn_lastfm_64bit.py --workdir=runs/lastfm_64bit

Test result (seeds 0, 1, 2, AMD EPYC 2-core CPU shared with other jobs, 2026-12-07): Recall@20 0.2488 +- 0.0006
(0.2484, 0.2487, 0.2495), NDCG@20 0.1903 +- 0.0013, Recall@50 0.3961 +- 0.0010: 92.3% of the full-precision
stages (0.2697 +- 0.0021); the issue's target (Recall@20 >= 0.245 at <= 64 bits per node, users and items
coded, mean of 3 seeds) is met. After 25 of the 50 epochs: 0.2493 +- 0.0014. FAISS post-training
OPQ8 on the make-run encoder (0.2493): 0.2364 both sides coded. Training time per seed under that load: about
10 minutes (400 fp epochs) + 25 minutes (50 product-code epochs).
"""

from experiments.configs import hqgnn_lastfm


def get_config():
  config = hqgnn_lastfm.get_config()
  config.train.pretrain_epochs = 400  # full precision first (in <workdir>/pretrain), then product codes from it
  config.train.epochs = 50  # quantization-aware epochs
  config.eval.every = 0
  config.quant.kind = "pq"
  config.quant.pq_subspaces = 8
  config.quant.pq_bits = 8
  config.quant.pq_codebooks = "separate"
  config.quant.pq_update = "gradient"
  config.quant.pq_rotation = "opq"  # OPQ's rotation of the full-precision stage before the codes
  config.quant.estimator = "ste"
  return config
