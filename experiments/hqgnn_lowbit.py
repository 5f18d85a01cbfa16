"""HQ-GNN at low bits: methods x code length, over seeds, with bits per node and % of full precision.

  python -m experiments.hqgnn_lowbit --config=experiments/configs/hqgnn_lastfm.py --root=runs/lowbit_lastfm \
      --variants=fp,1bit-ste,1bit-row8-ste,2bit-ste,4bit-ste --seeds=0,1,2 --out=results/lowbit_lastfm.md

Each variant is a name whose dash-separated tokens set config keys (`lowbit_variants.variant_overrides`):
  fp | {b}bit                  quant.bits = none | b
  ste | gste | gaussian        quant.estimator (default ste)
  row32 | row8                 1 bit: one scale per row, stored as float32 or 8-bit codes (default: per matrix)
  itq                          rotate the trained start by ITQ's rotation before quantizing (needs a start)
  itemscales                   1 bit, final codes: users stored without scales (same ranking, fewer bits)
  layerwise [bigear]           quantize every layer E(k) (scores weighted by LightGCN's mean, or BiGeaR's)
  fixed{v} | trace{m}x | diag{m}x   GSTE delta: fixed v, or m times the trace / diagonal curvature rule
  distill{w}                   ranking distillation from train.init_from with weight w
  pre{n}                       first n full-precision epochs in <workdir>/pretrain, then start from them
  start                        the train.init_from model itself (0 epochs): the full-precision start
e.g. `1bit-row8-gaussian-layerwise-bigear-distill1`. Every (variant, seed) trains in its own workdir under
--root (finished ones are re-evaluated, or with --reuse_results read back; interrupted ones resume). The
table gives mean ± std over seeds of the final metrics, bits per node (codes + stored scalars, over users and
items) and Recall@20 as % of the reference row (a run's own `pre{n}` stage, else `start` if present, else
`fp`); `--plot` draws Recall@20 against bits per node, with the rows of earlier tables' .json summaries named
by `--merge`.
"""

import os

import numpy as np
from absl import flags
from ml_collections import config_flags

from experiments.lowbit_variants import finished_results, merged_summaries, plot, variant_overrides
from hq_jax import cli
from hq_jax.hqgnn import train
from hq_jax.workdir import MetricsLog, device_description, now_iso, write_json

_CONFIG = config_flags.DEFINE_config_file("config", None, "Base experiment config.", lock_config=True)
_ROOT = flags.DEFINE_string("root", None, "Folder holding one workdir per run.")
_VARIANTS = flags.DEFINE_list("variants", ["fp", "1bit-ste"], "Variant names (see the module docstring).")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds; the table shows mean and std over them.")
_OUT = flags.DEFINE_string("out", "", "Markdown output file (default: print only); a .json beside it.")
_PLOT = flags.DEFINE_string("plot", "", "PNG of Recall@20 against bits per node (optional).")
_REUSE = flags.DEFINE_bool("reuse_results", False, "Take a finished run's results.json as it is, without "
                            "re-evaluating it, when its stored config equals this one (up to the keys a rerun may "
                            "change); other runs train or re-evaluate as usual.")
_MERGE = flags.DEFINE_list("merge", [], "Summaries (.json written by earlier --out) whose rows --plot draws "
                           "beside this run's (a row of this run replaces a merged row of the same name).")
flags.mark_flags_as_required(["config", "root"])

METRICS = ("recall@20", "ndcg@20", "recall@50", "ndcg@50")


def run_one(name: str, seed: int) -> dict:
  workdir = os.path.join(_ROOT.value, f"{name}_seed{seed}")
  config = _CONFIG.value.copy_and_resolve_references()
  with config.unlocked():
    config.seed = seed
    for key, value in variant_overrides(name).items():
      section, field = key.split(".")
      config[section][field] = value
  if _REUSE.value and (stored := finished_results(workdir, config)) is not None:
    print(f"== {name} seed {seed}: {workdir}/results.json reused", flush=True)
    return stored
  print(f"== {name} seed {seed}", flush=True)
  return train.train_and_evaluate(config, workdir)  # a finished workdir is re-evaluated, not retrained


def cell(values: list[float], digits: int = 4) -> str:
  if len(values) == 1:
    return f"{values[0]:.{digits}f}"
  return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def gradient_change(root: str, name: str, seeds: list[int]) -> str:
  """Mean over seeds of the last delta update's mean delta * |x - x^| (users / items), '-' without one."""
  values = []
  for seed in seeds:
    path = os.path.join(root, f"{name}_seed{seed}", "metrics.jsonl")
    if os.path.exists(path):
      events = [r for r in MetricsLog(path).read() if r.get("event") == "delta"]
      if events and "gradient_change" in events[-1]:
        values.append([events[-1]["gradient_change"][k]["mean"] for k in ("users", "items")])
  return "-" if not values else " / ".join(f"{v:.1e}" for v in np.mean(values, axis=0))


def curvature_share(runs: list[dict]) -> str:
  """Share of training time spent on delta (curvature) updates, mean over runs; '-' when there were none."""
  shares = [r["curvature_seconds"] / r["train_seconds"] for r in runs
            if r.get("curvature_seconds") and r.get("train_seconds", 0) > 0]
  return f"{100 * np.mean(shares):.1f}%" if shares else "-"


def main(argv):
  del argv
  seeds = [int(s) for s in _SEEDS.value]
  table = {name: [run_one(name, s) for s in seeds] for name in _VARIANTS.value}
  reference = "start" if "start" in table else ("fp" if "fp" in table else None)
  ref_recall = np.mean([r["metrics"]["recall@20"] for r in table[reference]]) if reference else None
  c = _CONFIG.value
  first = next(iter(table.values()))[0]
  lines = [f"Dataset `{first['dataset']['name']}` (evaluated on its `{c.eval.split}` split), d={c.model.dim}, "
           f"K={c.model.num_layers}, {c.train.epochs} epochs, batch {c.train.batch_size}, lr {c.train.learning_rate} "
           f"({c.train.lr_schedule}), init_from `{c.train.init_from or '-'}`; seeds {seeds}; {device_description()}; "
           f"{now_iso()}. Final-epoch metrics, mean ± std over seeds.", "",
           "| variant | bits/node | " + " | ".join(METRICS) + f" | % of {reference or '-'} R@20 | "
           "delta·abs(x−x̂) users / items | s/epoch | curvature |",
           "|---|---|" + "---|" * (len(METRICS) + 4)]
  summary = {}
  for name, runs in table.items():
    recall = [r["metrics"]["recall@20"] for r in runs]
    if "pretrain" in runs[0]:  # % of its own full-precision start
      share = f"{100 * np.mean([r['metrics']['recall@20'] / r['pretrain']['metrics']['recall@20'] for r in runs]):.1f}%"
    else:
      share = f"{100 * np.mean(recall) / ref_recall:.1f}%" if ref_recall else "-"
    bits = runs[0].get("bits_per_node", 8 * runs[0]["representation_bytes"] /
                       (runs[0]["dataset"]["num_users"] + runs[0]["dataset"]["num_items"]))
    lines.append(f"| {name} | {bits:.1f} | " + " | ".join(cell([r["metrics"][m] for r in runs]) for m in METRICS)
                 + f" | {share} | {gradient_change(_ROOT.value, name, seeds)} | "
                 f"{np.mean([r['seconds_per_epoch'] for r in runs]):.2f} | {curvature_share(runs)} |")
    summary[name] = {"bits_per_node": bits, "seeds": seeds,
                     **{m: [r["metrics"][m] for r in runs] for m in METRICS}}
  text = "\n".join(lines) + "\n"
  print(text)
  if _OUT.value:
    with open(_OUT.value, "w", encoding="utf-8") as f:
      f.write(text)
    write_json(os.path.splitext(_OUT.value)[0] + ".json", summary)
  if _PLOT.value:
    plot({**merged_summaries(_MERGE.value), **summary}, _PLOT.value, f"{first['dataset']['name']} ({c.eval.split})")


if __name__ == "__main__":
  cli.run(main, "hqgnn_lowbit")
