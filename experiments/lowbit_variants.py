"""The variant grammar and summary files of `experiments.hqgnn_lowbit` (ours), without flags: importable by
tests and notebooks.

A variant is a name whose dash-separated tokens set config keys (`variant_overrides`; the grammar is in the
binary's docstring). A summary is the .json the binary writes beside its --out table: {variant: {bits_per_node,
seeds, recall@20: [per seed], ...}}; `merged_summaries` reads several, `plot` draws Recall@20 against bits per
node. `finished_results` reads a finished run back without re-evaluating it.
"""

import os
import re

import numpy as np

from hq_jax.errors import UserError
from hq_jax.hqgnn import train
from hq_jax.workdir import holds_config, read_json


def variant_overrides(name: str) -> dict:
  """Config overrides {dotted key: value} of a variant name (module docstring); UserError if unknown."""
  out = {}
  for token in name.split("-"):
    if token == "fp":
      out["quant.bits"] = "none"
    elif token == "start":
      out.update({"quant.bits": "none", "train.epochs": 0})
    elif m := re.fullmatch(r"(\d)bit", token):
      out["quant.bits"] = m.group(1)
    elif token in ("ste", "gste", "gaussian"):
      out["quant.estimator"] = token
    elif m := re.fullmatch(r"row(32|8)", token):
      out.update({"quant.one_bit_scale": "row", "quant.scale_bits": int(m.group(1))})
    elif token == "itq":
      out["quant.rotation"] = "itq"
    elif token == "itemscales":
      out["quant.drop_user_scales"] = True
    elif token == "layerwise":
      out["quant.codes"] = "layerwise"
    elif token == "bigear":
      out["quant.layer_weights"] = "bigear"
    elif m := re.fullmatch(r"fixed([0-9.e+-]+)", token):
      out.update({"quant.estimator": "gste", "quant.delta": "fixed", "quant.fixed_delta": float(m.group(1))})
    elif m := re.fullmatch(r"(trace|diag)([0-9.e+-]+)x", token):
      out.update({"quant.estimator": "gste", "quant.delta": "trace" if m.group(1) == "trace" else "diagonal",
                  "quant.delta_multiplier": float(m.group(2))})
    elif m := re.fullmatch(r"pre(\d+)", token):
      out["train.pretrain_epochs"] = int(m.group(1))
    elif m := re.fullmatch(r"distill([0-9.e+-]+)", token):
      out["distill.weight"] = float(m.group(1))
    else:
      raise UserError(f"--variants: unknown token {token!r} in {name!r} (see python -m experiments.hqgnn_lowbit "
                      "--helpfull)")
  return out


def finished_results(workdir: str, config) -> dict | None:
  """The results.json of a finished run in `workdir` whose stored config equals `config` (up to the keys a
  rerun may change, `train.RESULT_NEUTRAL_KEYS`), else None."""
  if not holds_config(workdir, config, train.RESULT_NEUTRAL_KEYS, train.ADDED_KEYS):
    return None
  try:
    results = read_json(os.path.join(workdir, "results.json"))
  except (OSError, ValueError):
    return None
  return results if isinstance(results, dict) and "metrics" in results else None


def read_summary(path: str, *, prefix: str = "") -> dict:
  """Rows {variant: summary} of one .json summary written by --out (each with bits_per_node and recall@20).

  Raises UserError (its message starting with `prefix`) for a missing or unreadable file, or one that is not
  such a summary.
  """
  try:
    data = read_json(path)
  except (OSError, ValueError) as e:
    raise UserError(f"{prefix}cannot read {path}: {e}") from e
  if not isinstance(data, dict):
    raise UserError(f"{prefix}{path} is not a summary written by --out (not a JSON object)")
  for name, row in data.items():
    if not isinstance(row, dict) or not {"bits_per_node", "recall@20"} <= row.keys():
      raise UserError(f"{prefix}{path} is not a summary written by --out (row {name!r})")
  return data


def merged_summaries(paths: list[str]) -> dict:
  """Rows {variant: summary} of earlier .json summaries, later files replacing earlier rows of the same name.

  Raises UserError for a missing or unreadable file, or one that is not a summary written by --out.
  """
  rows = {}
  for path in paths:
    rows.update(read_summary(path, prefix="--merge: "))
  return rows


LABEL_STEP = 9  # points a label moves down while it overlaps an earlier one (font size 7)


def plot(summary: dict, path: str, title: str) -> None:
  """Recall@20 (mean ± std over seeds) against bits per node, log2 axis. Labels are placed in Recall order,
  each moved down from its point (with a leader line) until it overprints no earlier label."""
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  import matplotlib.text  # noqa: PLC0415

  fig, ax = plt.subplots(figsize=(7, 4.5))
  rows = sorted(((name, round(s["bits_per_node"], 1), float(np.mean(s["recall@20"])), float(np.std(s["recall@20"])))
                 for name, s in summary.items()), key=lambda r: -r[2])
  for _, bits, recall, std in rows:
    ax.errorbar(bits, recall, yerr=std, fmt="o", capsize=3)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("bits per node (codes + stored scalars)")
  ax.set_ylabel("Recall@20")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  renderer = fig.canvas.get_renderer()
  placed = []
  for name, bits, recall, _ in rows:
    for line in range(len(rows) + 1):
      leader = dict(arrowstyle="-", lw=0.4, color="0.6", shrinkA=0, shrinkB=3) if line else None
      label = ax.annotate(name, (bits, recall), fontsize=7, xytext=(4, 2 - LABEL_STEP * line),
                          textcoords="offset points", arrowprops=leader)
      label.update_positions(renderer)
      box = matplotlib.text.Text.get_window_extent(label, renderer)  # the text alone, not its leader line
      if not any(box.overlaps(other) for other in placed) or line == len(rows):
        break
      label.remove()
    placed.append(box)
  fig.savefig(path, dpi=120)
