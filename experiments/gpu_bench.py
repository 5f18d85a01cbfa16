r"""Issue 14's accelerator measurements in one command that fits a short GPU lease (< 10 min on an H100/H200).

On the device machine (its python3 has JAX with CUDA and torch; the project's pure-Python packages it lacks
travel as wheels, Gowalla as a carried folder; `experiments/gpu_bench.sh` does both sides):

  bash experiments/gpu_bench.sh prepare                       # here: .whl/ and .gpudata/gowalla (git-ignored)
  bash experiments/gpu_bench.sh run                           # there (device `run`, carry [".whl", ".gpudata"])
  python -m experiments.gpu_bench --tiny --out=/tmp/gpu_dry   # dry run on a CPU, toy sizes, ~5 min

Sections, in order, each recorded as soon as it ends (`<out>/gpu_bench.json`, `<out>/gpu_bench.md`), so a
run cut short still returns what it measured; `--budget_s` bounds the whole run:

1. ceilings of this device, measured (METHOD.md: datasheet rates are leads): device-to-device copy
   bandwidth (bytes read + written), read bandwidth (`benchmark.measure_bandwidth`), int8 x int8 -> int32
   GEMM rate, float32 GEMM rate at HIGHEST precision (what float32 retrieval uses), bf16 GEMM rate, and the
   XOR + popcount rate of a compute-bound fused loop.
2. all-user top-20 retrieval at Gowalla size (29,858 x 40,981, training items excluded) and at 10^7 items
   (29,858 users, synthetic), d = 64: float32, 8 bit (int8), 4 bit (int8), 1 bit XOR/popcount, 1 bit +-1
   int8 matmul and product codes (8 x 8 bits, users float: FAISS IndexPQ's layout). Each against the device's roofline: the larger of (fewest bytes: codes + user rows read once,
   results written once) / copy bandwidth and (arithmetic: 2 d ops per pair on the unit that does them, or
   d / 32 popcounts) / the measured rate. `roofline_fraction` = floor / measured (issue target: >= 0.5 for
   8 bit and 1 bit). Also shown: the floor if every pair's score went through memory once (8 bytes/pair),
   which a search that does not fuse its top-k into the product pays.
3. both sides of every GPU tuning choice in `hq_jax.backend` (via `backend.override`): whole-block tiles vs
   1024-item tiles; 131,072-item blocks x 4,096 users vs 65,536 x 1,024 (at 10^7 items); int8 vs
   XOR/popcount for 1 bit and int8 vs float32-while-exact for 4 / 8 bit (from section 2 plus the float
   kinds); the sorted segment sum vs BCSR (and BCSR with `jax_bcoo_cusparse_lowering`) for LightGCN
   propagation + gradient on Gowalla; deferred vs per-batch host copies; `retrieval_kernel`: the device's
   JAX search vs the compiled CPU kernel (`hq_jax.retrieval.native`, built on the device machine's host by
   `gpu_bench.sh run`) for float32, 8 bit, 1 bit and product codes.
4. Gowalla epoch time: `experiments.bench_epoch` (the trainer's jitted step, both aggregations) beside the
   PyTorch reference step on CUDA.
5. time to Recall@20 >= 0.182 and NDCG@20 >= 0.154: `experiments.hqgnn` with
   experiments/configs/hqgnn_gowalla_fast.py (else hqgnn_gowalla.py), evaluated every `--eval_every` epochs;
   the wall time from launch to the first evaluation at the targets, and the final metrics if the run ends
   within the remaining budget.

Nothing here was measured on a GPU yet (no device was lent to the session that wrote it); the CPU dry run
(`--tiny`) checks that every section runs end to end.
"""

import dataclasses
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # children (trainer, torch) share the device

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from hq_jax import backend  # noqa: E402
from hq_jax import strict_json  # noqa: E402
from hq_jax.data.interactions import load_dataset  # noqa: E402
from hq_jax.hqgnn import graph as graph_lib  # noqa: E402
from hq_jax.retrieval import benchmark, native, scoring  # noqa: E402
from hq_jax.workdir import device_description  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]

_OUT = flags.DEFINE_string("out", os.environ.get("OUT", "results/bench/gpu"), "Output folder.")
_DATA_DIR = flags.DEFINE_string("gowalla_dir", ".gpudata/gowalla", "Gowalla (LightGCN text format).")
_TINY = flags.DEFINE_bool("tiny", False, "Toy sizes (a CPU dry run of every section).")
_BUDGET = flags.DEFINE_integer("budget_s", 540, "Seconds for the whole run; later sections shrink or skip.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per retrieval method (after a warm-up run).")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 10, "Epochs between evaluations in the time-to-quality run.")
_SECTIONS = flags.DEFINE_list("sections", ["ceilings", "retrieval", "choices", "epoch", "quality"],
                              "Sections to run.")

RECALL_TARGET, NDCG_TARGET = 0.182, 0.154
METHODS = ("float32", "8bit_int8", "4bit_int8", "1bit_xor_popcount", "1bit_sign_int8", "pq8x8")


@dataclasses.dataclass(frozen=True)
class Sizes:
  copy_bytes: int  # bytes of the copy / read probes
  gemm: int  # M = N = K of the GEMM probes
  popcount_words: int  # uint32 words of the popcount probe
  big_items: int  # the "10^7 items" workload
  big_users: int
  gowalla: bool  # Gowalla from --data_dir (else a toy synthetic workload of the sizes below)
  toy_users: int = 0
  toy_items: int = 0
  epoch_args: tuple = ()
  quality_args: tuple = ()


FULL = Sizes(copy_bytes=1 << 31, gemm=8192, popcount_words=1 << 28, big_items=10 ** 7, big_users=29858, gowalla=True,
             epoch_args=("--batch_size=2048", "--steps=30", "--warmup=3"))
TINY = Sizes(copy_bytes=1 << 24, gemm=256, popcount_words=1 << 20, big_items=20000, big_users=300, gowalla=False,
             toy_users=500, toy_items=3000,
             epoch_args=("--data_dir=lastfm", "--batch_size=1024", "--steps=2", "--warmup=1"),
             quality_args=("--config=experiments/configs/hqgnn_lastfm.py", "--config.data_dir=lastfm",
                           "--config.train.epochs=4"))


class Clock:
  def __init__(self, budget: float):
    self.t0, self.budget = time.perf_counter(), budget

  def left(self) -> float:
    return self.budget - (time.perf_counter() - self.t0)


def median_time(fn, repeats: int = 10) -> float:
  """Median seconds of fn() (blocked until ready) after one untimed call (compilation, warm-up)."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return float(np.median(times))


# --------------------------------------------------------------------------------------------- ceilings


def ceilings(s: Sizes) -> dict:
  key = jax.random.key(0)
  n = s.copy_bytes // 4
  x = jax.random.uniform(key, (n,), jnp.float32)  # never zeros (METHOD.md)
  copy = jax.jit(lambda v: v * 1.0001 + 1.0)
  copy_s = median_time(lambda: copy(x))
  del x
  read_bw = benchmark.measure_bandwidth(s.copy_bytes)
  m = s.gemm
  a8 = jax.random.randint(key, (m, m), -127, 128, jnp.int8)
  b8 = jax.random.randint(jax.random.key(1), (m, m), -127, 128, jnp.int8)
  dn = (((1,), (1,)), ((), ()))
  int8 = jax.jit(lambda a, b: jax.lax.dot_general(a, b, dn, preferred_element_type=jnp.int32))
  int8_s = median_time(lambda: int8(a8, b8))
  del a8, b8
  af = jax.random.normal(key, (m, m), jnp.float32)
  bf = jax.random.normal(jax.random.key(1), (m, m), jnp.float32)
  f32 = jax.jit(lambda a, b: jax.lax.dot_general(a, b, dn, precision=jax.lax.Precision.HIGHEST))
  f32_s = median_time(lambda: f32(af, bf))
  bf16 = jax.jit(lambda a, b: jax.lax.dot_general(a, b, dn, preferred_element_type=jnp.float32))
  a16, b16 = af.astype(jnp.bfloat16), bf.astype(jnp.bfloat16)
  bf16_s = median_time(lambda: bf16(a16, b16))
  del af, bf, a16, b16
  words = jax.random.bits(key, (s.popcount_words,), jnp.uint32)
  rounds = 64

  @jax.jit
  def popcounts(w):  # one fused elementwise loop: `rounds` XOR + popcount per word read
    total = jnp.zeros(w.shape, jnp.uint32)
    for j in range(rounds):
      total = total + jax.lax.population_count(w ^ jnp.uint32((0x9E3779B9 * (j + 1)) & 0xFFFFFFFF))
    return jnp.sum(total, dtype=jnp.uint32)

  pop_s = median_time(lambda: popcounts(words))
  return {"copy_bytes_per_s": 2 * s.copy_bytes / copy_s, "read_bytes_per_s": read_bw,
          "int8_ops_per_s": 2 * m ** 3 / int8_s, "f32_highest_flops_per_s": 2 * m ** 3 / f32_s,
          "bf16_flops_per_s": 2 * m ** 3 / bf16_s, "popcounts_per_s": s.popcount_words * rounds / pop_s,
          "probe_sizes": {"copy_bytes": s.copy_bytes, "gemm_mnk": m, "popcount_words": s.popcount_words,
                          "popcount_rounds": rounds}}


# -------------------------------------------------------------------------------------------- retrieval


def workload(s: Sizes, big: bool) -> tuple[benchmark.Workload, dict]:
  if big or not s.gowalla:
    nu, ni = (s.big_users, s.big_items) if big else (s.toy_users, s.toy_items)
    indptr, indices = np.zeros(nu + 1, np.int64), np.zeros(0, np.int32)
    name = f"synthetic {nu} x {ni}, no exclusions"
  else:
    data = load_dataset(_DATA_DIR.value)
    nu, ni = data.num_users, data.num_items
    indptr, indices = data.train.indptr, data.train.indices
    name = f"Gowalla {nu} x {ni}, training items excluded"
  rng = np.random.default_rng(0)
  users = rng.standard_normal((nu, 64), dtype=np.float32)
  items = rng.standard_normal((ni, 64), dtype=np.float32)
  w = benchmark.Workload(users, items, np.arange(nu), indptr, indices, 20)
  return w, {"workload": name, "users": nu, "items": ni, "dim": 64, "k": 20}


def op_counts(kind: str, nq: int, ni: int, d: int) -> tuple[str, float]:
  """(unit, operations) of scoring every pair once: the ceiling each kind is bound by."""
  pairs = nq * ni
  if kind == "hamming":
    return "popcounts_per_s", pairs * d / 32
  if kind == "int8":
    return "int8_ops_per_s", pairs * 2 * d
  return "f32_highest_flops_per_s", pairs * 2 * d  # float and the exact float32 'matmul' kind


def roofline(row: dict, w: benchmark.Workload, ceil: dict) -> dict:
  nq, ni, d = len(w.users), w.item_emb.shape[0], w.item_emb.shape[1]
  user_bytes = nq * row["code_bytes"] / ni  # same layout as the items' codes
  fewest = row["code_bytes"] + user_bytes + nq * w.k * 8
  unit, ops = op_counts(row["kind"], nq, ni, d)
  mem_s, ops_s = fewest / ceil["copy_bytes_per_s"], ops / ceil[unit]
  floor = max(mem_s, ops_s)
  return {"fewest_bytes": fewest, "memory_floor_s": mem_s, "ops": ops, "ops_unit": unit, "ops_floor_s": ops_s,
          "bound": "memory" if mem_s >= ops_s else "arithmetic", "roofline_floor_s": floor,
          "roofline_fraction": floor / row["median_s"],
          "scores_through_memory_floor_s": max(floor, 8 * nq * ni / ceil["copy_bytes_per_s"])}


def run_methods(w: benchmark.Workload, methods, ceil: dict, repeats: int, clock: Clock) -> list[dict]:
  rows, ref = [], None
  for name in methods:
    if clock.left() < 30:
      rows.append({"method": name, "skipped": "time budget"})
      continue
    r = benchmark.run_jax_method(w, name, batch_users=None, block_items=None, repeats=repeats,
                                 bandwidth=ceil["read_bytes_per_s"])
    items = r.pop("items")
    r.pop("_table", None)
    if name == "float32":
      ref = items
    r["recall_vs_float32"] = benchmark.recall_at_k(items, ref) if ref is not None else None
    r.update(roofline(r, w, ceil))
    rows.append(r)
    print(f"  {name}: {r['median_s']:.4f} s, roofline fraction {r['roofline_fraction']:.3f} ({r['bound']})",
          flush=True)
  return rows


def retrieval(s: Sizes, ceil: dict, clock: Clock) -> dict:
  out = {}
  for label, big in (("gowalla", False), ("items_1e7", True)):
    w, info = workload(s, big)
    print(f"retrieval {label}: {info['workload']}", flush=True)
    out[label] = {**info, "methods": run_methods(w, METHODS, ceil, _REPEATS.value, clock)}
    del w
  return out


# ------------------------------------------------------------------------------------- tuning choices


def both_sides(name: str, chosen: dict, other: dict) -> dict:
  """A choice's two measurements; `holds` says whether the chosen side was the faster."""
  return {"choice": name, "chosen": chosen, "other": other,
          "holds": chosen["median_s"] <= other["median_s"], "other_over_chosen": other["median_s"] / chosen["median_s"]}


def timed_method(w, name, tunings: backend.Tunings, ceil) -> dict:
  """One method under `tunings` (its `retrieval_kernel` included: 'native' runs the compiled CPU kernel)."""
  with backend.override(tunings):
    r = benchmark.run_jax_method(w, name, batch_users=None, block_items=None, repeats=_REPEATS.value,
                                 bandwidth=ceil["read_bytes_per_s"], kernel=tunings.retrieval_kernel)
  r.pop("items")
  r.pop("_table", None)
  return {"method": name, "median_s": r["median_s"], "kind": r["kind"], "kernel": r["kernel"],
          "block_items": r.get("block_items"), "batch_users": r.get("batch_users"),
          "tunings": dataclasses.asdict(tunings)}


def propagation_sides(s: Sizes) -> list[dict]:
  """LightGCN propagation (K = 3, d = 64) + its gradient on Gowalla: segment sum vs BCSR (vs cuSPARSE BCSR)."""
  data = load_dataset(_DATA_DIR.value if s.gowalla else "lastfm")
  graph = graph_lib.bipartite_graph(data)
  base = graph_lib.csr_adjacency(graph)
  e0 = jax.random.normal(jax.random.key(0), (base.num_nodes, 64), jnp.float32)
  w = jax.random.normal(jax.random.key(1), (base.num_nodes, 64), jnp.float32)
  rows = []
  for kernel, cusparse in (("segment", False), ("bcsr", False), ("bcsr", True)):
    adj = graph_lib.CSRAdjacency(base.data, base.indices, base.indptr, base.num_nodes, kernel=kernel)
    try:
      previous = jax.config.jax_bcoo_cusparse_lowering
    except AttributeError:  # a JAX without the flag: the cuSPARSE variant is left out
      previous = None
      if cusparse:
        continue
    try:
      if previous is not None:
        jax.config.update("jax_bcoo_cusparse_lowering", cusparse)
      f = jax.jit(jax.value_and_grad(lambda e, a: jnp.sum(w * graph_lib.lightgcn_propagate(
          lambda h: graph_lib.csr_aggregate(a, h), e, 3))))
      t = median_time(lambda: f(e0, adj), repeats=20)
      rows.append({"kernel": kernel, "cusparse_lowering": cusparse, "median_s": t})
    except Exception as e:  # noqa: BLE001  (a lowering this jax / device lacks: recorded, not fatal)
      rows.append({"kernel": kernel, "cusparse_lowering": cusparse, "error": f"{type(e).__name__}: {e}"[:300]})
    finally:
      if previous is not None:
        jax.config.update("jax_bcoo_cusparse_lowering", previous)
  return rows


def choices(s: Sizes, ceil: dict, retrieval_rows: dict, clock: Clock) -> dict:
  t = backend.for_backend("gpu")
  cpu = backend.CPU
  out = []
  w, _ = workload(s, big=False)
  for m in ("float32", "8bit_int8"):
    out.append(both_sides(f"item_tile ({m}, Gowalla size)", timed_method(w, m, t, ceil),
                          timed_method(w, m, dataclasses.replace(t, item_tile=cpu.item_tile), ceil)))
  for m, other in (("4bit_int8", "4bit_int_matmul"), ("8bit_int8", "8bit_int_matmul")):
    out.append(both_sides(f"wide_kind ({m} vs {other}, Gowalla size)", timed_method(w, m, t, ceil),
                          timed_method(w, other, t, ceil)))
  out.append(both_sides("defer_host_copies (8bit_int8, Gowalla size)", timed_method(w, "8bit_int8", t, ceil),
                        timed_method(w, "8bit_int8", dataclasses.replace(t, defer_host_copies=False), ceil)))
  # retrieval_kernel: the device's JAX search vs the compiled CPU kernel on this machine's host CPU (built by
  # gpu_bench.sh run; without it the pair is recorded as skipped)
  for m in ("float32", "8bit_int8", "1bit_xor_popcount", "pq8x8"):
    if not native.available():
      out.append({"choice": f"retrieval_kernel ({m})", "skipped": native.unavailable_reason()})
      break
    if clock.left() < 60:
      break
    out.append(both_sides(f"retrieval_kernel (jax vs native host CPU, {m}, Gowalla size)", timed_method(w, m, t, ceil),
                          timed_method(w, m, dataclasses.replace(t, retrieval_kernel="native"), ceil)))
  del w
  for label in ("gowalla", "items_1e7"):
    by = {r["method"]: r for r in retrieval_rows.get(label, {}).get("methods", []) if "median_s" in r}
    if "1bit_sign_int8" in by and "1bit_xor_popcount" in by:
      out.append(both_sides(f"one_bit_kind (int8 vs hamming, {label}, from the retrieval section)",
                            {"method": "1bit_sign_int8", "median_s": by["1bit_sign_int8"]["median_s"]},
                            {"method": "1bit_xor_popcount", "median_s": by["1bit_xor_popcount"]["median_s"]}))
  if clock.left() > 90:
    w, _ = workload(s, big=True)
    out.append(both_sides("block_items x batch_users (8bit_int8, 10^7 items)", timed_method(w, "8bit_int8", t, ceil),
                          timed_method(w, "8bit_int8", dataclasses.replace(
                              t, block_items=cpu.block_items, batch_users=cpu.batch_users), ceil)))
    del w
  prop = propagation_sides(s)
  ok = {(r["kernel"], r["cusparse_lowering"]): r for r in prop if "median_s" in r}
  if ("segment", False) in ok and ("bcsr", False) in ok:
    out.append(both_sides("sparse_kernel (segment vs bcsr, LightGCN K=3 forward + gradient)",
                          ok[("segment", False)], ok[("bcsr", False)]))
  return {"pairs": out, "propagation": prop}


# ---------------------------------------------------------------------------------- training binaries


def child_env() -> dict:
  env = dict(os.environ)
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  env["PYTHONUNBUFFERED"] = "1"
  return env


def torch_cuda() -> bool:
  r = subprocess.run([sys.executable, "-c", "import torch; assert torch.cuda.is_available()"], capture_output=True)
  return r.returncode == 0


def epoch(s: Sizes, tmp: pathlib.Path, clock: Clock) -> dict:
  out = tmp / "epoch.json"
  args = [sys.executable, "-m", "experiments.bench_epoch", "--aggregations=csr,segment", f"--out={out}",
          *s.epoch_args]
  if s.gowalla:
    args.append(f"--data_dir={_DATA_DIR.value}")
  if torch_cuda():
    args += [f"--torch_python={sys.executable}", "--torch_device=cuda"]
  r = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=child_env(),
                     timeout=max(clock.left() - 30, 30))
  if r.returncode != 0:
    return {"command": " ".join(args[1:]), "error": r.stderr.strip().splitlines()[-10:]}
  res = json.loads(out.read_text())
  return {"command": " ".join(args[1:]), **res}


_EVAL = re.compile(r"eval .*recall@20 ([\d.]+).*ndcg@20 ([\d.]+)")
_EPOCH = re.compile(r"^epoch (\d+)/(\d+) .* ([\d.]+) s/epoch")


def quality(s: Sizes, tmp: pathlib.Path, clock: Clock) -> dict:
  """Runs the trainer, timestamps each evaluation line as it is printed, stops at the budget."""
  fast = REPO / "experiments" / "configs" / "hqgnn_gowalla_fast.py"
  config = fast if fast.exists() else REPO / "experiments" / "configs" / "hqgnn_gowalla.py"
  workdir = tmp / "quality"
  args = [sys.executable, "-m", "experiments.hqgnn"]
  if s.quality_args:
    args += [*s.quality_args, "--config.eval.every=2"]
  else:
    args += [f"--config={config.relative_to(REPO)}", f"--config.data_dir={_DATA_DIR.value}",
             f"--config.eval.every={_EVAL_EVERY.value}"]
  args += [f"--workdir={workdir}", "--config.train.log_every=1"]
  cap = max(clock.left() - 20, 10)
  t0 = time.perf_counter()
  proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                          env=child_env())
  evals, epochs, tail, reached = [], [], [], None
  timed_out = False
  try:
    for line in proc.stdout:
      now = time.perf_counter() - t0
      tail = (tail + [line.rstrip()])[-20:]
      if m := _EVAL.search(line):
        rec, ndcg = float(m[1]), float(m[2])
        evals.append({"wall_s": now, "epoch": epochs[-1]["epoch"] if epochs else None, "recall@20": rec,
                      "ndcg@20": ndcg})
        if reached is None and rec >= RECALL_TARGET and ndcg >= NDCG_TARGET:
          reached = evals[-1]
      elif m := _EPOCH.match(line.strip()):
        epochs.append({"epoch": int(m[1]), "of": int(m[2]), "s": float(m[3]), "wall_s": now})
      if now > cap:
        timed_out = True
        proc.kill()
        break
  finally:
    proc.wait()
  out = {"command": " ".join(args[1:]), "config": str(config.relative_to(REPO)) if not s.quality_args else "tiny",
         "cap_s": cap, "stopped_at_cap": timed_out, "returncode": proc.returncode, "evaluations": evals,
         "epochs_done": epochs[-1]["epoch"] if epochs else 0, "epochs_planned": epochs[-1]["of"] if epochs else None,
         "median_epoch_s_after_first": float(np.median([e["s"] for e in epochs[1:]])) if len(epochs) > 1 else None,
         "first_evaluation_at_target": reached, "log_tail": tail}
  results = workdir / "results.json"
  if results.exists():
    res = json.loads(results.read_text())
    out["final"] = {"metrics": res["metrics"], "wall_seconds": res["wall_seconds_this_run"],
                    "train_seconds": res["train_seconds"], "epochs": res["epochs"],
                    "meets_target": res["metrics"]["recall@20"] >= RECALL_TARGET
                    and res["metrics"]["ndcg@20"] >= NDCG_TARGET}
  return out


# ------------------------------------------------------------------------------------------------ report


def markdown(r: dict) -> str:
  lines = [f"# GPU benchmark ({'tiny dry run' if r['tiny'] else 'full'}), {r['date']}", "",
           f"- command: `{r['command']}`", f"- device: {r['device']}; jax {r['jax']}; python {r['python']}",
           f"- tunings: {r['tunings']}", ""]
  c = r.get("ceilings")
  if isinstance(c, dict) and "copy_bytes_per_s" in c:
    lines += ["## Ceilings (measured)", "", "| copy GB/s (r+w) | read GB/s | int8 TOPS | f32 HIGHEST TFLOP/s | "
              "bf16 TFLOP/s | popcount G/s |", "|---|---|---|---|---|---|",
              f"| {c['copy_bytes_per_s'] / 1e9:.0f} | {c['read_bytes_per_s'] / 1e9:.0f} | {c['int8_ops_per_s'] / 1e12:.0f} "
              f"| {c['f32_highest_flops_per_s'] / 1e12:.1f} | {c['bf16_flops_per_s'] / 1e12:.0f} | "
              f"{c['popcounts_per_s'] / 1e9:.0f} |", ""]
  for label, block in (r.get("retrieval") or {}).items():
    if not isinstance(block, dict) or "methods" not in block:
      continue
    lines += [f"## All-user top-{block['k']}: {block['workload']}", "",
              "| method | kind | median s | recall vs f32 | bound | floor s | fraction of roofline | "
              "floor if scores go through memory s |", "|---|---|---|---|---|---|---|---|"]
    for m in block["methods"]:
      if "median_s" not in m:
        lines.append(f"| {m['method']} | skipped: {m.get('skipped')} | | | | | | |")
        continue
      rec = "-" if m["recall_vs_float32"] is None else f"{m['recall_vs_float32']:.4f}"
      lines.append(f"| {m['method']} | {m['kind']} | {m['median_s']:.4f} | {rec} | {m['bound']} | "
                   f"{m['roofline_floor_s']:.2e} | {m['roofline_fraction']:.3f} | {m['scores_through_memory_floor_s']:.2e} |")
    lines.append("")
  ch = r.get("choices")
  if isinstance(ch, dict) and "pairs" in ch:
    lines += ["## GPU tuning choices, both sides", "", "| choice | chosen s | other s | other / chosen | holds |",
              "|---|---|---|---|---|"]
    for p in ch["pairs"]:
      lines.append(f"| {p['choice']} | {p['chosen']['median_s']:.4f} | {p['other']['median_s']:.4f} | "
                   f"{p['other_over_chosen']:.2f} | {p['holds']} |")
    lines += ["", "Propagation kernels: " + "; ".join(
        f"{x['kernel']}{' (cuSPARSE)' if x['cusparse_lowering'] else ''}: "
        + (f"{x['median_s'] * 1e3:.2f} ms" if "median_s" in x else x.get("error", "?")) for x in ch["propagation"]), ""]
  e = r.get("epoch")
  if isinstance(e, dict) and "rows" in e:
    lines += ["## Gowalla epoch (`experiments.bench_epoch`)", "", "| method | median step s | epoch s |", "|---|---|---|"]
    lines += [f"| {x['method']} | {x['median_step_s']:.4f} | {x['epoch_s_estimate']:.2f} |" for x in e["rows"]]
    lines.append("")
  q = r.get("quality")
  if isinstance(q, dict) and "evaluations" in q:
    hit = q["first_evaluation_at_target"]
    lines += ["## Time to Recall@20 >= 0.182 and NDCG@20 >= 0.154", "", f"`{q['command']}`", "",
              f"- first evaluation at the targets: " + (f"{hit['wall_s']:.0f} s after launch (epoch {hit['epoch']}, "
                                                          f"{hit['recall@20']:.4f} / {hit['ndcg@20']:.4f})" if hit else "not reached"),
              f"- epochs done {q['epochs_done']} of {q['epochs_planned']}, median epoch {q['median_epoch_s_after_first']} s, "
              f"stopped at the {q['cap_s']:.0f} s cap: {q['stopped_at_cap']}"]
    if "final" in q:
      f = q["final"]
      lines.append(f"- final: Recall@20 {f['metrics']['recall@20']:.4f}, NDCG@20 {f['metrics']['ndcg@20']:.4f} after "
                   f"{f['epochs']} epochs, {f['wall_seconds']:.0f} s wall; target met: {f['meets_target']}")
    lines.append("")
  errors = {k: v["error"] for k, v in r.items() if isinstance(v, dict) and "error" in v}
  if errors:
    lines += ["## Errors", "", "```", strict_json.dumps(errors, indent=1), "```"]
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  clock = Clock(_BUDGET.value)
  s = TINY if _TINY.value else FULL
  out_dir = pathlib.Path(_OUT.value)
  out_dir.mkdir(parents=True, exist_ok=True)
  report = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "tiny": _TINY.value,
            "command": " ".join(["python -m experiments.gpu_bench"] + sys.argv[1:]), "device": device_description(),
            "devices": [str(d) for d in jax.devices()], "backend": jax.default_backend(), "jax": jax.__version__,
            "python": platform.python_version(), "tunings": dataclasses.asdict(backend.tunings())}
  if report["backend"] == "cpu" and not _TINY.value:
    print("gpu_bench: no accelerator (jax.default_backend() is cpu); use --tiny for a dry run", flush=True)
    sys.exit(2)

  def save():
    (out_dir / "gpu_bench.json").write_text(strict_json.dumps(report, indent=1, default=str) + "\n")
    (out_dir / "gpu_bench.md").write_text(markdown(report))

  with tempfile.TemporaryDirectory(prefix="gpu_bench_") as tmp_name:
    tmp = pathlib.Path(tmp_name)
    steps = {"ceilings": lambda: ceilings(s),
             "retrieval": lambda: retrieval(s, report["ceilings"], clock),
             "choices": lambda: choices(s, report["ceilings"], report.get("retrieval") or {}, clock),
             "epoch": lambda: epoch(s, tmp, clock),
             "quality": lambda: quality(s, tmp, clock)}
    for name in _SECTIONS.value:
      if name != "ceilings" and "copy_bytes_per_s" not in (report.get("ceilings") or {}) and name in (
          "retrieval", "choices"):
        report[name] = {"error": "skipped: no ceilings"}
        continue
      if clock.left() < 20:
        report[name] = {"error": "skipped: time budget"}
        continue
      print(f"== {name} ({clock.left():.0f} s left)", flush=True)
      t = time.perf_counter()
      try:
        report[name] = steps[name]()
      except Exception as e:  # noqa: BLE001  (one section's failure is recorded; the others still run)
        report[name] = {"error": f"{type(e).__name__}: {e}"[:500], "traceback": traceback.format_exc()[-3000:]}
        print(report[name]["traceback"], flush=True)
      report.setdefault("section_seconds", {})[name] = time.perf_counter() - t
      save()
  report["wall_s"] = clock.budget - clock.left()
  save()
  print(markdown(report))


if __name__ == "__main__":
  app.run(main)
