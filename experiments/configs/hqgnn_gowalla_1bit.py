"""HQ-GNN on Gowalla at 1 bit, d = 64: quantization-aware fine-tuning of a trained full-precision LightGCN.

The LastFM setting chosen on validation (`hqgnn_lastfm_1bit.py`): sign codes with one float32 scale per row
(64 + 32 bits per node), BiGeaR's Gaussian derivative of sign, started from a full-precision run
(`train.init_from`, here the one-command schedule `hqgnn_gowalla_fast.py`). 20 epochs at batch 32,768 with a
cosine decay from Adam 1e-3; the scales are initialised from the trained embeddings. Not tuned on Gowalla:
no Gowalla validation run fitted the session's CPU budget, so its test result is reported once.

Commands (the full-precision start, then this):
  python -m experiments.hqgnn --config=experiments/configs/hqgnn_gowalla_fast.py --workdir=runs/gowalla_fast \
      --config.data_dir=../shared/data/gowalla
  python -m experiments.hqgnn --config=experiments/configs/hqgnn_gowalla_1bit.py --workdir=runs/gowalla_1bit \
      --config.data_dir=../shared/data/gowalla

Result (seed 1, 2026-11-30): Recall@20 0.1426, NDCG@20 0.1222 (80.7% of the start's 0.1767); STE and GSTE
give the same to 1e-4. results/hqgnn_lowbit.md, Gowalla section.
"""

from experiments.configs import hqgnn_gowalla_fast


def get_config():
  config = hqgnn_gowalla_fast.get_config()
  config.seed = 1  # not the start's seed 0, so the BPR triples of its first epochs are not replayed
  config.train.init_from = "runs/gowalla_fast"
  config.train.epochs = 20
  config.train.learning_rate = 1e-3
  config.train.log_every = 1
  config.train.checkpoint_every = 5
  config.eval.every = 0
  config.quant.bits = "1"
  config.quant.estimator = "gaussian"
  config.quant.one_bit_scale = "row"
  config.quant.scale_bits = 32
  config.quant.delta_every = 5
  return config
