"""Plots MPE's width per frequency group against the group's frequency rank, coloured by planted importance.

`python -m experiments.plot_mpe_scale --results=results/mpe_scale.json --output=results/mpe_scale_widths.png`

Reads the `groups` arrays `experiments.mpe_scale` writes (width, importance share, mean train count per
group; group 0 = rarest). x: frequency rank of the group; y: selected width (bits); colour: log10 of the
group's share of the planted importance (hq_jax.ctr.planted.feature_importance).
"""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from absl import flags

from hq_jax import cli, workdir
from hq_jax.errors import UserError

_RESULTS = flags.DEFINE_string("results", "results/mpe_scale.json", "experiments.mpe_scale's JSON.")
_OUTPUT = flags.DEFINE_string("output", "results/mpe_scale_widths.png", "Output PNG.")


def main(argv):
  del argv
  if not os.path.exists(_RESULTS.value):
    raise UserError(f"{_RESULTS.value}: no such file (run experiments.mpe_scale first)")
  r = workdir.read_json(_RESULTS.value)
  if "groups" not in r:
    raise UserError(f"{_RESULTS.value}: no MPE groups (the mpe method has not finished)")
  g = r["groups"]
  bits = np.asarray(g["bits"])
  share = np.asarray(g["importance_share"])
  rank = np.arange(bits.size)
  fig, ax = plt.subplots(figsize=(8, 4))
  jitter = 0.12 * np.sin(rank * 2.4)  # groups at the same width stay visible
  sc = ax.scatter(rank, bits + jitter, c=np.log10(np.maximum(share, 1e-12)), cmap="viridis", s=22)
  fig.colorbar(sc, ax=ax, label="log10 planted importance share of the group")
  ax.set_xlabel("frequency group (0 = rarest; features sorted by train count)")
  ax.set_ylabel("selected width (bits)")
  ax.set_yticks(range(0, 7))
  mpe = r["methods"].get("mpe", {})
  rho = r.get("spearman_width_importance")
  ax.set_title(f"{r['spec']}\nMPE {mpe.get('mean_bits_per_feature', float('nan')):.3f} mean bits, "
               f"Spearman(width, importance) = {rho if rho is None else round(rho, 3)}", fontsize=9)
  fig.tight_layout()
  fig.savefig(_OUTPUT.value, dpi=120)
  print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
  cli.run(main, "plot_mpe_scale")
