"""Trains a CTR model with MPE or a baseline table.

`python -m experiments.mpe --config=CONFIG.py --workdir=DIR`.

`--config.method` picks the embedding: fp, lsq, alpt, qr or mpe (search, then retrain). Override any config
field from the command line, e.g. `--config.train.max_epochs=5`. Rerunning the same command on a workdir
resumes from its last checkpoint (for MPE, in whichever phase it stopped).
"""

from hq_jax import cli
from hq_jax.ctr import train

_CONFIG, _WORKDIR, _EXTEND = cli.define_training_flags()


def main(argv):
  del argv
  cli.initialize_distributed()  # --num_processes > 1: join the other processes before touching a device
  r = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, extend=_EXTEND.value)
  if r.get("status") == "stopped":
    print(f"stopped after step {r['step']} (config.train.stop_after_steps); rerun to resume")
    return
  print("\n| method | test AUC | test logloss | mean bits | 32/bits | fp32 bytes/bytes | epochs |")
  print("|---|---|---|---|---|---|---|")
  print(results_row(r))


def _ratio(r: dict, key: str) -> str:
  """A compression ratio of results.json, or '-' where it is null (`<key>_reason` says why: 0 bits)."""
  return "-" if r.get(key) is None else f"{r[key]:.1f}"


def results_row(r: dict) -> str:
  """The Markdown table row of a results.json dict."""
  epochs = "+".join(str(p["epochs"]) for p in r["phases"].values())
  return (f"| {r['method']} | {r['test_auc']:.4f} | {r['test_logloss']:.4f} | {r['mean_bits_per_feature']:.3f} "
          f"| {_ratio(r, 'compression_bits')} | {_ratio(r, 'compression_bytes')} | {epochs} |")


if __name__ == "__main__":
  cli.run(main, "mpe")
