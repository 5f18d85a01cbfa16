"""Plots MPE's chosen bits per group against group frequency from one or more MPE workdirs.

`python -m experiments.plot_mpe_bits --workdirs=runs/mpe_frappe_mpe,runs/mpe_synth_mpe \
    --output=results/mpe_bits_vs_frequency.png`
"""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from absl import flags

from hq_jax import cli, workdir
from hq_jax.errors import UserError

_WORKDIRS = flags.DEFINE_list("workdirs", None, "MPE workdirs (each with results.json).")
_OUTPUT = flags.DEFINE_string("output", "results/mpe_bits_vs_frequency.png", "Output PNG.")
flags.mark_flags_as_required(["workdirs"])


def main(argv):
  del argv
  fig, ax = plt.subplots(figsize=(7, 4))
  for wd in _WORKDIRS.value:
    path = os.path.join(wd, "results.json")
    if not os.path.exists(path):
      raise UserError(f"{path}: no such file (run the MPE binary on {wd} first)")
    r = workdir.read_json(path)
    if "groups" not in r:
      raise UserError(f"{path}: not an MPE run (no 'groups')")
    freq = np.asarray(r["groups"]["mean_count"])
    bits = np.asarray(r["groups"]["bits"])
    name = r["dataset"].get("name") or r["config"]["data"]["spec"].split(":")[0]
    label = (f"{name}: mean {r['mean_bits_per_feature']:.2f} bits, "
             f"test AUC {r['test_auc']:.4f}")
    ax.plot(np.maximum(freq, 1e-2), bits, "o-", ms=3, lw=0.7, label=label)
  ax.set_xscale("log")
  ax.set_xlabel("mean train-split count of the group's features (log; 0 shown at 0.01)")
  ax.set_ylabel("chosen bits b*_g")
  ax.set_yticks(range(7))
  ax.set_title("MPE: chosen precision per frequency group (G = 128)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(_OUTPUT.value, dpi=120)
  print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
  cli.run(main, "plot_mpe_bits")
