"""Times `load_criteo` (parse, split, count, remap and write the cache; no cache hit) on a Criteo file.

`python -m experiments.bench_ctr_data --make_rows=500000 --input=/tmp/ctrbench/synth_500k.tsv --reps=3`

With `--make_rows` > 0 the input is first written (if absent) as a raw Criteo TSV (label, 13 integers, 26
categoricals as 8 hex digits) with Criteo-like vocabularies from `synthetic_ctr`: 39 Zipf(1.2) fields over
6.8M features, integers a heavy-tailed count with ~10% missing. Without it, `--input` is any Criteo-format
file (`hq_jax/ctr/datasets/criteo_10k.csv.gz` is the shipped sample). Every rep builds into a fresh cache
folder; one cache hit is timed after the last. Prints a markdown table with command, machine and date.
"""

import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np
from absl import flags

from hq_jax import cli, workdir
from hq_jax.ctr import data, synthetic

_INPUT = flags.DEFINE_string("input", None, "Criteo-format file to load (written first with --make_rows).")
_MAKE_ROWS = flags.DEFINE_integer("make_rows", 0, "If > 0 and --input is absent, write that many rows.")
_REPS = flags.DEFINE_integer("reps", 3, "Fresh-cache builds to time.")
_OUTPUT = flags.DEFINE_string("output", None, "Also write the table to this file.")
flags.mark_flag_as_required("input")


def write_criteo_tsv(path: str, num_rows: int, seed: int = 0) -> None:
  """Writes a raw-layout Criteo TSV with Criteo-like vocabularies (see the module docstring)."""
  ds, _ = synthetic.synthetic_ctr(num_rows=num_rows, seed=seed, split=(1.0, 0.0, 0.0),
                                  cardinalities=synthetic.criteo_like_cardinalities(6_800_000, 39))
  ids = np.asarray(ds.ids)
  rng = np.random.default_rng(seed)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    for lo in range(0, num_rows, 50_000):
      block = ids[lo:lo + 50_000]
      cols = [ds.labels[lo:lo + 50_000].astype(np.int64).astype(str)]
      for _ in range(13):  # integers: a heavy-tailed count, ~10% missing, like I1..I13
        v = (rng.zipf(1.3, block.shape[0]) - 2).astype(str)
        v[rng.random(block.shape[0]) < 0.1] = ""
        cols.append(v)
      for j in range(13, 39):  # categorical ids hashed to 8 hex digits
        h = (block[:, j].astype(np.uint64) * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)
        cols.append(np.char.mod("%08x", h))
      f.write("\n".join("\t".join(r) for r in zip(*cols)) + "\n")
  os.replace(tmp, path)


def main(argv):
  del argv
  path = _INPUT.value
  if _MAKE_ROWS.value > 0 and not os.path.isfile(path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_criteo_tsv(path, _MAKE_ROWS.value)
  builds = []
  cache = tempfile.mkdtemp(prefix="bench_ctr_data-")
  try:
    for _ in range(_REPS.value):
      shutil.rmtree(cache)
      t, c = time.perf_counter(), time.process_time()
      ds = data.load_criteo(path, cache_dir=cache)
      builds.append((time.perf_counter() - t, time.process_time() - c))
    t = time.perf_counter()
    hit = data.load_criteo(path, cache_dir=cache)
    hit_seconds = time.perf_counter() - t
    assert hit.summary["from_cache"]
  finally:
    shutil.rmtree(cache, ignore_errors=True)
  n = int(ds.ids.shape[0])
  wall, cpu = min(b[0] for b in builds), min(b[1] for b in builds)
  lines = [f"Command: `python -m experiments.bench_ctr_data {' '.join(sys.argv[1:])}`",
           f"Machine: {workdir.device_description()}, load average "
           f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; date {workdir.now_iso()}.", "",
           "| input | MB | rows | features | build wall s (best / median) | build CPU s (best) | rows/s wall "
           "| rows per CPU-s | cache hit ms | peak RSS GB |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
           f"| `{os.path.basename(path)}` | {os.path.getsize(path) / 1e6:.0f} | {n:,} | {ds.num_features:,} "
           "| "
           f"{wall:.2f} / {np.median([b[0] for b in builds]):.2f} | {cpu:.2f} | {n / wall:,.0f} | "
           f"{n / cpu:,.0f} | {hit_seconds * 1e3:.1f} | "
           f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} |"]
  text = "\n".join(lines)
  print(text)
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  cli.run(main, "bench_ctr_data")
