"""Trains LightGCN / HQ-GNN: `python -m experiments.hqgnn --config=CONFIG.py --workdir=DIR`.

Override any config field from the command line, e.g. `--config.train.epochs=10`. Rerunning the same
command on a workdir resumes from its last checkpoint. Prints a one-row results table at the end; the
workdir gets results.json, metrics.jsonl and export.npz (see hq_jax/hqgnn/train.py).
"""

from absl import flags
from ml_collections import config_flags

from hq_jax import cli
from hq_jax.hqgnn import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  results = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  print(train.results_table([results]))


if __name__ == "__main__":
  cli.run(main, "hqgnn")
