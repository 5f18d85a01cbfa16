"""LightGCN on Gowalla, full precision, in one command from scratch: the time-to-quality schedule.

LightGCN d = 64, K = 3, BPR with the reference sampling and decay; one cosine stage from Adam 8e-3 at batch
32,768 for 300 epochs. A LightGCN step propagates the whole graph whatever the batch, so the step costs about
the same at batch 8,192 and 32,768 (0.40 s vs 0.49 s on this 2-core CPU, `experiments.bench_epoch`,
2026-11-30): the larger batch sees four times the triples per second, and the learning rate is doubled
(square-root rule) from the 4e-3 that worked at 8,192 (results/foundation.md). Chosen by that reasoning,
not tuned on test (no validation sweep fitted the session's CPU budget).

Command:
  python -m experiments.hqgnn --config=experiments/configs/hqgnn_gowalla_fast.py --workdir=runs/gowalla_fast \
      --config.data_dir=../shared/data/gowalla

Target (issue 14): Recall@20 >= 0.182 and NDCG@20 >= 0.154 at the final epoch in <= 60 min on the 2-core CPU.
Measured: results/foundation.md, section "Gowalla in one command".
"""

from experiments.configs import hqgnn_gowalla


def get_config():
  config = hqgnn_gowalla.get_config()
  config.train.batch_size = 32768
  config.train.learning_rate = 8e-3
  config.train.lr_schedule = "cosine"
  config.train.epochs = 300
  config.train.log_every = 5
  config.train.checkpoint_every = 10
  config.eval.every = 50
  return config
