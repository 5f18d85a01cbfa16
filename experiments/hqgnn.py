"""Trains LightGCN / HQ-GNN: `python -m experiments.hqgnn --config=CONFIG.py --workdir=DIR`.

Override any config field from the command line, e.g. `--config.train.epochs=10`. Rerunning the same
command on a workdir resumes from its newest intact checkpoint; a rerun with another config stops with one
line naming the differing keys (`--extend` allows a larger `train.epochs`, recorded as a continuation). Prints a one-row results table at the end; the
workdir gets results.json, metrics.jsonl and export.npz (see hq_jax/hqgnn/train.py).
"""

from hq_jax import cli
from hq_jax.hqgnn import train

_CONFIG, _WORKDIR, _EXTEND = cli.define_training_flags()


def main(argv):
  del argv
  cli.initialize_distributed()  # --num_processes > 1: join the other processes before touching a device
  results = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, extend=_EXTEND.value)
  if results.get("status") == "stopped":
    print(f"stopped after epoch {results['epoch']} (config.train.stop_after_epochs); rerun to resume")
    return
  print(train.results_table([results]))


if __name__ == "__main__":
  cli.run(main, "hqgnn")
