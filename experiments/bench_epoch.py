"""Seconds per LightGCN training epoch, JAX (both aggregations) beside the PyTorch reference step.

  python -m experiments.bench_epoch --data_dir=../shared/data/gowalla --batch_size=2048 \
      --torch_python=/path/to/python-with-torch

Each JAX step is the trainer's own jitted step (`hq_jax.hqgnn.train.make_train_step`, buffers donated):
compile time is reported apart, then `--warmup` steps, then the median of `--steps` timed steps (each
`block_until_ready`); an epoch is that median times the steps per epoch, plus the host time to sample the
epoch's BPR triples. With `--torch_python`, `experiments/peers/lightgcn_torch.py` runs the reference
implementation's step (sparse.mm propagation, BPR, Adam) in that interpreter in the same run, so the ratio
compares like with like on a shared, noisy machine. Writes JSON and prints a markdown table.
"""

import json
import os
import subprocess
import time

import jax
import numpy as np
from absl import flags

from hq_jax import cli
from hq_jax.data.interactions import load_dataset
from hq_jax.errors import UserError
from hq_jax.hqgnn import train
from hq_jax.workdir import device_description, now_iso, write_json
from experiments.configs import hqgnn_gowalla

_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/data/gowalla", "LightGCN text folder.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 2048, "BPR batch size.")
_AGGREGATIONS = flags.DEFINE_list("aggregations", ["csr", "segment"], "Aggregations to time.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per method.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_TORCH_PYTHON = flags.DEFINE_string("torch_python", "", "Interpreter with torch for the reference step.")
_TORCH_DEVICE = flags.DEFINE_string("torch_device", "cpu", "torch device of the reference step (cuda on a GPU).")
_OUT = flags.DEFINE_string("out", "", "JSON output path (default: print only).")


def time_jax(config, data, aggregation: str) -> dict:
  config.model.aggregation = aggregation
  problem, params, opt_state, deltas, step = train.initial_step_state(config, data)
  t = time.perf_counter()
  batches = train.epoch_batches(data, 0, 0, config.train.batch_size)
  sample_s = time.perf_counter() - t
  batch = lambda i: {k: v[i] for k, v in batches.items()}
  steps_per_epoch = batches["triples"].shape[0]
  t = time.perf_counter()
  compiled = step.lower(params, opt_state, deltas, batch(0), problem.graph, problem.adjacency).compile()
  compile_s = time.perf_counter() - t
  times = []
  for i in range(_WARMUP.value + _STEPS.value):
    t = time.perf_counter()
    params, opt_state, metrics = compiled(params, opt_state, deltas, batch(i % steps_per_epoch), problem.graph,
                                          problem.adjacency)
    jax.block_until_ready(metrics["loss"])
    if i >= _WARMUP.value:
      times.append(time.perf_counter() - t)
  median = float(np.median(times))
  return {"method": f"jax-{aggregation}", "compile_s": compile_s, "median_step_s": median,
          "steps_per_epoch": int(steps_per_epoch), "sample_epoch_s": sample_s,
          "epoch_s_estimate": median * steps_per_epoch + sample_s}


def time_torch() -> dict:
  script = os.path.join(os.path.dirname(__file__), "peers", "lightgcn_torch.py")
  cmd = [_TORCH_PYTHON.value, script, f"--train={os.path.join(_DATA_DIR.value, 'train.txt')}",
         f"--batch_size={_BATCH_SIZE.value}", f"--steps={_STEPS.value}", f"--warmup={_WARMUP.value}",
         f"--threads={os.cpu_count()}", f"--device={_TORCH_DEVICE.value}"]
  out = subprocess.run(cmd, capture_output=True, text=True)
  if out.returncode != 0:
    raise UserError(f"--torch_python={_TORCH_PYTHON.value}: the reference step failed: "
                    f"{out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
  row = json.loads(out.stdout.strip().splitlines()[-1])
  row["method"] = f"pytorch-reference (torch {row.pop('torch')}, {row.pop('device', 'cpu')})"
  return row


def main(argv):
  del argv
  data = load_dataset(_DATA_DIR.value)
  config = hqgnn_gowalla.get_config()
  config.train.batch_size = _BATCH_SIZE.value
  for a in _AGGREGATIONS.value:
    if a not in ("csr", "segment"):
      raise UserError(f"--aggregations: unknown aggregation {a!r} (expected csr or segment)")
  rows = []
  if _TORCH_PYTHON.value:
    rows.append(time_torch())
  rows += [time_jax(config, data, a) for a in _AGGREGATIONS.value]
  ref = rows[0]["epoch_s_estimate"] if _TORCH_PYTHON.value else None
  print(f"\n{data.name}: {data.summary['train_interactions']} interactions, batch {_BATCH_SIZE.value}, "
        f"{device_description()}, {now_iso()}")
  print("| method | median step (s) | steps/epoch | epoch (s) | vs PyTorch reference |")
  print("|---|---|---|---|---|")
  for r in rows:
    ratio = f"{r['epoch_s_estimate'] / ref:.2f}x" if ref else "-"
    print(f"| {r['method']} | {r['median_step_s']:.4f} | {r['steps_per_epoch']} | {r['epoch_s_estimate']:.1f} "
          f"| {ratio} |")
  if _OUT.value:
    write_json(_OUT.value, {"dataset": data.summary, "batch_size": _BATCH_SIZE.value, "device":
                            device_description(), "date": now_iso(), "rows": rows})


if __name__ == "__main__":
  cli.run(main, "bench_epoch")
