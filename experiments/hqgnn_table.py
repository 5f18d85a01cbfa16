"""The HQ-GNN results table: full precision, STE and GSTE at several widths, over seeds.

  python -m experiments.hqgnn_table --config=experiments/configs/hqgnn_lastfm.py --root=runs/table_lastfm \
      --bits=1,2,4,8 --seeds=0,1,2 --out=results/hqgnn_lastfm.md

Runs every (model, seed) with `train_and_evaluate` in its own workdir under `--root` (a finished workdir
is reused, an interrupted one resumes), then writes a markdown table of mean and std over seeds of
Recall/NDCG at 20 and 50, the bytes of the stored user + item representation, the compression ratio and
the share of training time spent on GSTE delta (curvature) updates.
Config overrides (`--config.train.epochs=...`) apply to every run.
"""

import os

import numpy as np
from absl import flags
from ml_collections import config_flags

from hq_jax import cli
from hq_jax.hqgnn import train
from hq_jax.workdir import device_description, now_iso, read_json

_CONFIG = config_flags.DEFINE_config_file("config", None, "Base experiment config.", lock_config=True)
_ROOT = flags.DEFINE_string("root", None, "Folder holding one workdir per run.")
_BITS = flags.DEFINE_list("bits", ["1", "2", "4", "8"], "Bit widths of the quantized rows.")
_ESTIMATORS = flags.DEFINE_list("estimators", ["ste", "gste"], "Estimators of the quantized rows.")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds; the table shows mean and std over them.")
_OUT = flags.DEFINE_string("out", "", "Markdown output file (default: print only).")
flags.mark_flags_as_required(["config", "root"])

METRICS = ("recall@20", "ndcg@20", "recall@50", "ndcg@50")


def run_one(name: str, bits: str, estimator: str, seed: int) -> dict:
  workdir = os.path.join(_ROOT.value, f"{name}_seed{seed}")
  done = os.path.join(workdir, "results.json")
  if os.path.exists(done):
    results = read_json(done)
    if results["epochs"] == _CONFIG.value.train.epochs:
      return results
  config = _CONFIG.value.copy_and_resolve_references()
  with config.unlocked():
    config.seed = seed
    config.quant.bits = bits
    config.quant.estimator = estimator
  print(f"== {name} seed {seed}", flush=True)
  return train.train_and_evaluate(config, workdir)


def cell(values: list[float], digits: int = 4) -> str:
  if len(values) == 1:
    return f"{values[0]:.{digits}f}"
  return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def curvature_share(runs: list[dict]) -> str:
  """Share of training time spent on delta (curvature) updates, mean over runs; '-' when there were none."""
  shares = [r.get("curvature_seconds", 0.0) / r["train_seconds"] for r in runs
            if r.get("curvature_seconds") and r.get("train_seconds", 0) > 0]
  return f"{100 * np.mean(shares):.1f}% of training" if shares else "-"


def main(argv):
  del argv
  seeds = [int(s) for s in _SEEDS.value]
  rows = [("full precision", "none", "ste")]
  rows += [(f"{e.upper()} {b} bit", b, e) for b in _BITS.value for e in _ESTIMATORS.value]
  table = []
  for label, bits, estimator in rows:
    name = "fp" if bits == "none" else f"{estimator}_{bits}bit"
    runs = [run_one(name, bits, estimator, s) for s in seeds]
    table.append((label, runs))
  c = _CONFIG.value
  lines = [f"Dataset `{table[0][1][0]['dataset']['name']}`, d={c.model.dim}, K={c.model.num_layers}, "
           f"{c.train.epochs} epochs, batch {c.train.batch_size}, lr {c.train.learning_rate}, "
           f"delta mode `{c.quant.delta}` every {c.quant.delta_every} epochs; seeds {seeds}; "
           f"{device_description()}; {now_iso()}.", "",
           "| model | " + " | ".join(METRICS) + " | bytes (user+item) | compression | delta updates |",
           "|---|" + "---|" * (len(METRICS) + 3)]
  for label, runs in table:
    lines.append(f"| {label} | " + " | ".join(cell([r["metrics"][m] for r in runs]) for m in METRICS)
                 + f" | {runs[0]['representation_bytes']:,} | {runs[0]['compression_ratio']:.1f}x"
                 + f" | {curvature_share(runs)} |")
  text = "\n".join(lines) + "\n"
  print(text)
  if _OUT.value:
    with open(_OUT.value, "w", encoding="utf-8") as f:
      f.write(text)


if __name__ == "__main__":
  cli.run(main, "hqgnn_table")
