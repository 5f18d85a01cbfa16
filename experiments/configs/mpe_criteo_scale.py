"""MPE and its baselines at Criteo scale on a planted-truth source (issue 24; hq_jax.ctr.planted).

Data: 'planted:rows=R,features=6780382,seed=0': 39 fields whose sizes and Zipf-like laws are fitted to the
shipped Criteo sample and scaled to Criteo's 6,780,382 features after min-count 2 (the fit and its numbers:
results/mpe_scale.md, hq_jax/ctr/planted.py); rows generated on the fly from a counter-based RNG (row r from
(seed, r) only), streamed once into the CTR cache as memory-mapped files (the trainer reads arrays), labels
from a planted factorisation-machine teacher whose per-feature importance is graded and independent of
frequency. Split 80 / 10 / 10 by consecutive blocks (rows are i.i.d.).

Model and method: Criteo's settings from the spec: D = 16, DNN [1024, 512, 256], batch 10,000, G = 128
frequency groups, widths 0-6 bits, tau = 3e-3, lambda = 3e-4, threshold selection, retrain from W0; Adam
1e-3 for the dense layers and (`lazy_adam`, hq_jax.ctr.sparse) for the table rows a batch touches, so a step
costs O(batch) whatever the table size. One epoch per phase (`max_epochs = 1`: CTR models on sparse ids
overfit after one pass, results/mpe.md), so early stopping never triggers. The table is padded to a multiple
of 64 rows (`mesh.row_multiple`) so the same workdir can be resumed on a mesh that row-shards it:
`--config.mesh.model=8` (README "Several devices"). QR keeps dense Adam (two tables: the sparse optimizers
refuse it; its tables are half the size).

Planted importance (what `spearman_width_importance` compares the widths with): for feature i of field f,
  I_i = p_i * E[(w_i + <v_i, sum_{g != f} v[x_g]>)^2],
its probability times the expected square of its own contribution to the teacher's logit (first-order
weight plus its pairwise terms): its share of the teacher's logit second moment, "frequency times weight".
A group's importance is the sum of I_i over its features (the groups MPE builds from train counts), and
`spearman_width_importance` is Spearman's rho (average ranks for ties) between the 128 selected widths and
these 128 sums. `within_group_share` says how much of log I varies inside the groups (what frequency grouping
cannot see).

Variants (`--config=experiments/configs/mpe_criteo_scale.py:VARIANT`):
  (none)   the full comparison: R = 15,000,000 rows (12M train), 6,780,382 features.
  6m       R = 6,000,000 rows (4.8M train), otherwise the full comparison: what the session of 2026-12-07 ran
           (its 2 cores were shared with other jobs; results/mpe_scale.md).
  medium   R = 1,000,000 rows, 6,780,382 features, MLP (256, 128): 80 steps per phase.
  smoke    R = 100,000 rows, 6,780,382 features, MLP (64, 32), batch 5,000: 16 steps per phase.
  test     R = 20,000 rows, 5,000 features, small MLP, 16 groups: tests/ctr/planted_test.py.

Rows for a ~2 hour CPU budget (how R was chosen): the comparison costs about
  R * [0.8 / B * (t_fp + t_lsq + t_alpt + t_qr + t_search + t_retrain) * (1 + e) + g]
CPU seconds, with B the batch, t_m the CPU seconds of one step of method m at 6.8M rows with lazy Adam, e ~
0.05 for the per-epoch validation pass (forward only, 0.1R rows) and g the generation cost per row.
Measured (/tmp step timer on planted batches, 2026-12-07, results/mpe_scale.md): t_fp 1.32, t_search 1.98,
t_retrain 1.34 CPU s; lsq, alpt and qr not measured at this size, taken as 1.4, 1.5 and 1.7 (qr: dense
Adam over its 3.4M-row tables); g = 6e-6 s (~170k rows/s). Sum 9.2 s per 10,000 training rows, 7.8e-4 CPU s
per row in all; 85% of 2 h x 2 cores (14,400 CPU s; the rest for compilation, checkpoints and the test
pass) gives R = 15,000,000 (12M train rows; 45.8M is the real size). On the machine as loaded when this was
measured (load ~25 on 2 cores), wall time ran ~7x the CPU time: the full run needs a quiet machine.

Command (each method in its own workdir under --workdir; rerunning resumes; results.json per method):
  python -m experiments.mpe_scale --config=experiments/configs/mpe_criteo_scale.py --workdir=runs/mpe_scale \
      --output=results/mpe_scale.json
  (one method alone: python -m experiments.mpe --config=experiments/configs/mpe_criteo_scale.py \
      --workdir=runs/mpe_scale/mpe --config.method=mpe; qr also needs --config.train.table_optimizer=dense_adam)
Expected (targets of issue 24, NOT yet measured at this size): MPE >= 150x by bits within 0.001 test AUC of
fp; spearman_width_importance >= 0.5; step time flat in table rows. Measured with the `6m` variant (seed 0,
2-core AMD EPYC shared with other jobs, 2026-12-08; results/mpe_scale.md): fp test AUC 0.7397, MPE 0.7479 at
33.3x by bits (27.9x by bytes), spearman_width_importance 0.334: compression and Spearman targets missed.
"""

from experiments.configs import mpe_default

FULL_ROWS = 15_000_000
METHODS = ("fp", "lsq", "alpt", "qr", "mpe")


def get_config(variant: str | None = None):
  c = mpe_default.get_config()
  c.method = "mpe"
  rows, features = FULL_ROWS, 6_780_382
  c.model.hidden = (1024, 512, 256)
  c.train.batch_size = 10_000
  c.train.eval_batch_size = 50_000
  c.train.max_epochs = 1
  c.train.patience = 1
  c.train.table_optimizer = "lazy_adam"
  c.mesh.row_multiple = 64
  c.mpe.num_groups, c.mpe.tau, c.mpe.lam = 128, 3e-3, 3e-4
  if variant == "6m":
    rows = 6_000_000
  elif variant == "medium":
    rows = 1_000_000
    c.model.hidden = (256, 128)
  elif variant == "smoke":
    rows = 100_000
    c.model.hidden = (64, 32)
    c.train.batch_size = 5_000
  elif variant == "test":
    rows, features = 20_000, 5_000
    c.model.dim, c.model.hidden = 8, (32, 16)
    c.train.batch_size, c.train.eval_batch_size = 500, 4096
    c.train.max_epochs, c.train.patience = 2, 2
    c.mpe.num_groups = 16
    c.mesh.row_multiple = 0
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; expected 6m, medium, smoke or test")
  c.data.spec = f"planted:rows={rows},features={features},seed=0"
  return c
