"""Runs the MPE comparison on a planted-truth source and writes its results (issue 24).

`python -m experiments.mpe_scale --config=experiments/configs/mpe_criteo_scale.py[:VARIANT] --workdir=DIR
    [--methods=fp,lsq,alpt,qr,mpe] [--output=results/mpe_scale.json]`

Each method trains in DIR/METHOD through `hq_jax.ctr.train.train_and_evaluate` (QR on dense Adam: the sparse
table optimizers refuse its two tables); a method whose results.json exists is read, not rerun, and an
interrupted one resumes from its checkpoints, so rerunning the command continues the comparison. Then MPE's
widths are compared with the planted importance (`hq_jax.ctr.planted.width_report`). Writes --output (JSON:
per method test_auc, test_logloss, compression_bits, compression_bytes, mean bits, bytes, seconds per phase;
spearman_width_importance and the other width measures; the per-group arrays the plot reads) and prints a
markdown table (also written to DIR/summary.md).
"""

import os
import sys
import time

from absl import flags

from hq_jax import cli, workdir
from hq_jax.errors import UserError

_CONFIG, _WORKDIR, _EXTEND = cli.define_training_flags()
_METHODS = flags.DEFINE_list("methods", ["fp", "lsq", "alpt", "qr", "mpe"], "Methods to run, in this order.")
_OUTPUT = flags.DEFINE_string("output", "results/mpe_scale.json", "The results JSON.")

_KEYS = ("test_auc", "test_logloss", "compression_bits", "compression_bytes", "mean_bits_per_feature",
         "exact_bytes", "valid_auc")


def method_config(config, method: str):
  """`config` for one method (QR on dense Adam)."""
  c = config.copy_and_resolve_references()
  c.unlock()
  c.method = method
  if method == "qr":
    c.train.table_optimizer, c.train.table_learning_rate = "dense_adam", 0.0
  return c


def main(argv):
  del argv
  from hq_jax.ctr import data as ctr_data  # pylint: disable=g-import-not-at-top
  from hq_jax.ctr import planted, train  # pylint: disable=g-import-not-at-top
  config, root = _CONFIG.value, _WORKDIR.value
  if not config.data.spec.startswith("planted:"):
    raise UserError(f"config.data.spec must be a 'planted:' spec, got {config.data.spec!r}")
  out = {"command": "python -m experiments.mpe_scale " + " ".join(sys.argv[1:]), "spec": config.data.spec,
         "device": workdir.device_description(), "started": workdir.now_iso(), "methods": {}}
  for method in _METHODS.value:
    wd = os.path.join(root, method)
    path = os.path.join(wd, "results.json")
    t0 = time.time()
    r = workdir.read_json(path) if os.path.exists(path) else train.train_and_evaluate(
        method_config(config, method), wd, extend=_EXTEND.value)
    if r.get("status") == "stopped":
      print(f"{method}: stopped after step {r['step']}; rerun to resume")
      return
    out["methods"][method] = {k: r[k] for k in _KEYS if k in r}
    out["methods"][method].update(
        phases=r["phases"], wall_seconds_this_run=r.get("wall_seconds_this_run"),
        driver_seconds=time.time() - t0)
    if method == "mpe":
      mpe_result = r
  if "mpe" in out["methods"]:
    config_p, _ = planted.parse_spec(config.data.spec.partition(":")[2], config.seed)
    source = planted.planted_source(config_p)
    ds = ctr_data.load_ctr(config.data.spec, cache_dir=config.data.cache_dir or None, seed=config.seed)
    counts = ds.counts
    out["teacher_test_auc"] = planted.teacher_auc(source, *ds.split("test"))
    report = planted.width_report(mpe_result["groups"]["bits"], counts, source.feature_importance())
    # NaN (constant widths: no order) is written as null (strict JSON).
    out.update({k: (None if v != v else v) for k, v in report.items() if k != "groups"}, groups=report["groups"])
  out["finished"] = workdir.now_iso()
  workdir.write_json(_OUTPUT.value, out)
  lines = ["| method | test AUC | test logloss | mean bits | 32/bits | fp32 bytes / bytes | train s per phase |",
           "|---|---|---|---|---|---|---|"]
  for m, r in out["methods"].items():
    secs = " + ".join(f"{p['train_seconds']:.0f}" for p in r["phases"].values())
    lines.append(f"| {m} | {r['test_auc']:.4f} | {r['test_logloss']:.4f} | {r['mean_bits_per_feature']:.3f} | "
                 f"{r['compression_bits']:.1f} | {r['compression_bytes']:.1f} | {secs} |")
  if "spearman_width_importance" in out:
    lines.append("")
    lines.append(f"teacher (Bayes) test AUC {out['teacher_test_auc']:.4f}")
    lines.append(", ".join(f"{k} {out[k]}" for k in ("spearman_width_importance", "spearman_width_frequency",
                                                          "spearman_width_weight", "within_group_share")))
  text = "\n".join(lines)
  print(text)
  with open(os.path.join(root, "summary.md"), "w") as f:
    f.write(text + "\n")


if __name__ == "__main__":
  cli.run(main, "mpe_scale")
