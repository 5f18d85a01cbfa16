"""Times one jitted CTR train step per method, table size and table optimizer.

`python -m experiments.bench_mpe_step --num_features=1000000 --num_fields=20 --batch_size=10000`
`python -m experiments.bench_mpe_step --num_features=100000,1000000,10000000 --num_fields=39 \
    --methods=fp --table_optimizers=dense_adam,lazy_adam,rowwise_adagrad`   (dense vs sparse table updates)

Random ids (uniform over the table) and labels (the step's cost does not depend on their values), the same
backbone for every method; each step is compiled and warmed up, then timed `--reps` times with
`block_until_ready`, and the median is reported. Prints a markdown table (and writes it to `--output` if
given) with command, machine and date; "vs first" divides by the first step timed at the same table size.
"""

import itertools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments.configs import mpe_default
from hq_jax import cli, workdir
from hq_jax.ctr import train
from hq_jax.ctr.methods import METHODS

_N = flags.DEFINE_list("num_features", ["1000000"], "Rows of the embedding table (one or more sizes).")
_F = flags.DEFINE_integer("num_fields", 20, "Fields per sample.")
_B = flags.DEFINE_integer("batch_size", 10_000, "Batch size.")
_D = flags.DEFINE_integer("dim", 16, "Embedding dimension.")
_HIDDEN = flags.DEFINE_list("hidden", ["256", "256"], "MLP hidden sizes.")
_REPS = flags.DEFINE_integer("reps", 20, "Timed steps per method.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
_METHODS = flags.DEFINE_list("methods", ["fp", "mpe-search", "mpe-retrain", "lsq", "alpt", "qr"],
                             "Steps to time.")
_TABLE_OPTIMIZERS = flags.DEFINE_list("table_optimizers", ["dense_adam"],
                                      "config.train.table_optimizer values to time (hq_jax.ctr.sparse).")
_OUTPUT = flags.DEFINE_string("output", None, "Also write the table to this file.")


def time_step(method: str, table_optimizer: str, num_features: int, ids, labels, counts) -> float:
  """Median seconds of one train step of `method` ('mpe-search' / 'mpe-retrain' for the two MPE phases)."""
  config = mpe_default.get_config()
  config.method = method.split("-")[0]
  config.model.dim, config.model.hidden = _D.value, tuple(int(h) for h in _HIDDEN.value)
  config.train.table_optimizer = table_optimizer
  model = train.create_model(config, num_features, _F.value, counts)
  phase = method.split("-")[1] if "-" in method else "train"
  if phase == "retrain":  # Frozen widths spread over 0..6 as a search would leave them.
    model.embedding.group_bits[...] = jnp.arange(model.embedding.group_bits.shape[0]) % 7
  METHODS[config.method].enter_phase(model.embedding, phase)
  graphdef, params, rest = train.split_model(model, train=True)
  tx, table_opt = train.create_optimizer(config), train.create_table_optimizer(config)
  step = train.make_train_step(graphdef, tx, l2=0.0, lam=1e-3 if phase == "search" else 0.0, table_opt=table_opt)
  opt_state = train.init_optimizer(model, tx, table_opt)
  del model
  key = jax.random.key(0)
  for _ in range(1 + _WARMUP.value):
    params, rest, opt_state, m = step(params, rest, opt_state, ids, labels, key)
  jax.block_until_ready(m)
  times = []
  for _ in range(_REPS.value):
    start = time.perf_counter()
    params, rest, opt_state, m = step(params, rest, opt_state, ids, labels, key)
    jax.block_until_ready((params, opt_state, m))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main(argv):
  del argv
  # The header first, then each row as it is measured: stdout shows the table once, and --output holds the same.
  lines = [f"Command: `python -m experiments.bench_mpe_step {' '.join(sys.argv[1:])}`",
           (f"Machine: {workdir.device_description()}; date {workdir.now_iso()}; F={_F.value}, D={_D.value}, "
            f"batch={_B.value}, MLP={_HIDDEN.value}; median of {_REPS.value} steps after {_WARMUP.value} "
            "warm-up steps."), "",
           "| table rows | step | table optimizer | median ms | vs first |", "|---|---|---|---|---|"]
  print("\n".join(lines), flush=True)
  for n in (int(x) for x in _N.value):
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, n, size=(_B.value, _F.value)), jnp.int32)
    labels = jnp.asarray(rng.integers(0, 2, size=_B.value), jnp.float32)
    counts = rng.zipf(1.2, size=n).clip(max=10**9)
    first = None
    for method, opt in itertools.product(_METHODS.value, _TABLE_OPTIMIZERS.value):
      if opt != "dense_adam" and not METHODS[method.split("-")[0]].row_table:
        continue  # The trainer refuses this pair (e.g. qr's two tables).
      t = time_step(method, opt, n, ids, labels, counts)
      first = first or t
      lines.append(f"| {n:,} | {method} | {opt} | {t * 1e3:.1f} | {t / first:.2f}x |")
      print(lines[-1], flush=True)
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  cli.run(main, "bench_mpe_step")
