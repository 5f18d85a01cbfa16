"""HQ-GNN on Gowalla, quantized rows fine-tuned from a trained full-precision LightGCN (a CPU budget schedule).

Training every row of the Gowalla table from scratch (1000 epochs each) does not fit a 2-core CPU, so the
Gowalla table starts every row, full precision included, from the same trained full-precision encoder
(`train.init_from`) and trains each for 20 more epochs at batch 8192, Adam 4e-4; the quantizer's range is
initialised from the trained embeddings. GSTE's delta is recomputed every 5 epochs (it starts at 0, as in
the spec), so each GSTE row sees three curvature estimates.

Commands (the full-precision start, then the table):
  python -m experiments.hqgnn --config=experiments/configs/hqgnn_gowalla.py --workdir=runs/gowalla_fp_b8192 \
      --config.data_dir=../shared/data/gowalla --config.train.batch_size=8192 \
      --config.train.learning_rate=4e-3 --config.train.epochs=165
  python -m experiments.hqgnn --config=experiments/configs/hqgnn_gowalla.py --workdir=runs/gowalla_fp_stage2 \
      --config.data_dir=../shared/data/gowalla --config.train.batch_size=8192 \
      --config.train.learning_rate=4e-4 --config.train.epochs=60 --config.train.init_from=runs/gowalla_fp_b8192
  python -m experiments.hqgnn_table --config=experiments/configs/hqgnn_gowalla_finetune.py \
      --root=runs/table_gowalla --bits=1,2,4,8 --seeds=0 --out=results/hqgnn_gowalla.md

Expected (seed 0, 2-core CPU, measured 2026-11-23; about 4-7 min per row): Recall@20 full precision 0.1766,
STE / GSTE 1 bit 0.0738 / 0.0739, 2 bits 0.1538 / 0.1537, 4 bits 0.1744 / 0.1744, 8 bits 0.1757 / 0.1756;
delta updates 1.6-2.5% of training time. Full table: results/hqgnn.md (Gowalla section).
"""

from experiments.configs import hqgnn_gowalla


def get_config():
  config = hqgnn_gowalla.get_config()
  config.train.init_from = "runs/gowalla_fp_stage2"
  config.train.epochs = 20
  config.train.batch_size = 8192
  config.train.learning_rate = 4e-4
  config.train.log_every = 1
  config.train.checkpoint_every = 5
  config.quant.delta_every = 5
  config.eval.every = 0
  return config
