r"""Benchmarks top-K retrieval: JAX float32 / 1-bit / b-bit search against FAISS on the same vectors.

  # Gowalla size with its training items excluded (synthetic Gaussian embeddings, d = 64, K = 20):
  python -m experiments.bench_retrieval --data_dir=../shared/data/gowalla --dim=64 --k=20 \
      --out=results/retrieval_gowalla
  # 10^6 synthetic items, 1024 query users:
  python -m experiments.bench_retrieval --num_items=1000000 --num_users=1024 --dim=64 \
      --out=results/retrieval_1m
  # a trained export (any kind of export.npz: float, scalar or layer-wise codes, product codes, float users
  # with product-code items; for a coded one the float side is its decoded rows, and method "export"
  # searches the export's own codes as evaluation ranks them: exact integer keys, or for product codes the
  # decoded rows):
  python -m experiments.bench_retrieval --export=runs/x/export.npz --data_dir=../shared/data/gowalla

Writes `<out>.json` (every timing, the machine, the command) and `<out>.md` (a markdown table). Recall is
each method's top-K against the exact float32 ranking of the same (float) embeddings.

Each hq_jax method runs under both searches (`--kernels=native,jax`: the compiled kernel and the JAX search);
every row records the load averages before and after it, the JSON the machine (`lscpu`), OPENBLAS_CORETYPE,
the measured peaks and bandwidth, and each row's fraction of this machine's ceiling
(`hq_jax.retrieval.benchmark.ceiling`).

Measured (2-core AMD EPYC Zen 4, load ~11 from other jobs, 2026-12-07; results/retrieval.md): all Gowalla users
against the trained export, kernel / FAISS time: float32 2.41 s / FlatIP 11.67 s, 1 bit 0.93 s / BinaryFlat
20.05 s, 8 bit 1.89 s / FlatIP, product codes 8 x 8 2.26 s / IndexPQ 11.60 s; 16 x 4 2.55 s / IndexPQFastScan
1.35 s (slower). FAISS's OpenMP threads suffer more from the load: see results/retrieval.md before quoting.
"""

import dataclasses
import os
import platform
import subprocess
import sys
import time

import jax
import numpy as np
from absl import flags

from hq_jax import backend, cli
from hq_jax import strict_json
from hq_jax.data.interactions import load_dataset
from hq_jax.errors import UserError
from hq_jax.export import load_export
from hq_jax.quant import family
from hq_jax.retrieval import benchmark, native

_EXPORT = flags.DEFINE_string("export", "", "Training export (.npz) to search; empty = synthetic embeddings.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "LightGCN folder: its sizes and training items (excluded).")
_NUM_USERS = flags.DEFINE_integer("num_users", 29858, "Synthetic users (without --data_dir/--export).")
_NUM_ITEMS = flags.DEFINE_integer("num_items", 40981, "Synthetic items (up to 10^7).")
_DIM = flags.DEFINE_integer("dim", 64, "Synthetic embedding dimension (64 or 128).")
_QUERY_USERS = flags.DEFINE_integer("query_users", 0, "Search for the first N users only (0 = all).")
_K = flags.DEFINE_integer("k", 20, "Results per user.")
_BATCH = flags.DEFINE_integer("batch_users", None, "Users per jitted search call (default: the backend's, "
                              "hq_jax.backend: 1024 on CPU).")
_BLOCK = flags.DEFINE_integer("block_items", None, "Items per scanned block (default: the backend's: 65536 on CPU).")
_METHODS = flags.DEFINE_list("methods", list(benchmark.JAX_METHODS), "JAX methods to run (plus 'export': a "
                             "quantized --export's own codes, run first by default when there is one).")
_KERNELS = flags.DEFINE_list("kernels", list(benchmark.KERNELS), "Searches each hq_jax method runs under: "
                             "'native' (the compiled kernel, hq_jax/retrieval/native.py) and/or 'jax' (the "
                             "blocked JAX search); both sides of the backend's retrieval_kernel tuning.")
_KERNEL_THREADS = flags.DEFINE_integer("kernel_threads", None, "Threads of the compiled kernel (default: every CPU "
                                      "this process may use; --threads sets FAISS's).")
_FAISS = flags.DEFINE_list("faiss", list(benchmark.FAISS_METHODS), "FAISS indexes to run (empty: none).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per method (after one warm-up run).")
_THREADS = flags.DEFINE_integer("threads", 2, "FAISS OpenMP threads (match the CPU cores JAX uses).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the synthetic embeddings.")
_OUT = flags.DEFINE_string("out", "results/retrieval", "Output path prefix (.json and .md are added).")
_MACHINE = flags.DEFINE_string("machine", platform.processor() or platform.machine(), "Machine description.")


def _float_side(rep) -> np.ndarray:
  """The decoded rows of any representation (float embeddings themselves)."""
  return np.asarray(family.family_of(rep).dequantize(rep), np.float32)


def _methods(quantized_export: bool) -> list[str]:
  methods = list(_METHODS.value)
  if quantized_export and benchmark.EXPORT_METHOD not in methods and not _METHODS.present:
    methods = [benchmark.EXPORT_METHOD] + methods
  return methods


def _workload() -> tuple[benchmark.Workload, dict]:
  data = load_dataset(_DATA_DIR.value) if _DATA_DIR.value else None
  user_rep = item_rep = None
  if _EXPORT.value:
    user_rep, item_rep = load_export(_EXPORT.value)
    users, items = _float_side(user_rep), _float_side(item_rep)
    source = _EXPORT.value
    if family.family_of(item_rep).kind == "float":  # nothing coded: no "export" method
      user_rep = item_rep = None
  else:
    if _DIM.value < 1 or not 1 <= _NUM_ITEMS.value <= 10**7 or _NUM_USERS.value < 1:
      raise UserError("--dim, --num_users must be positive and --num_items in [1, 10^7]")
    nu = data.num_users if data else _NUM_USERS.value
    ni = data.num_items if data else _NUM_ITEMS.value
    rng = np.random.default_rng(_SEED.value)
    users = rng.standard_normal((nu, _DIM.value), dtype=np.float32)
    items = rng.standard_normal((ni, _DIM.value), dtype=np.float32)
    source = f"synthetic N(0,1), seed {_SEED.value}"
  if data is not None:
    if (data.num_users, data.num_items) != (users.shape[0], items.shape[0]):
      raise UserError(f"{_DATA_DIR.value}: {data.num_users} users x {data.num_items} items, but the embeddings "
                      f"are {users.shape[0]} x {items.shape[0]}")
    indptr, indices = data.train.indptr, data.train.indices
  else:
    indptr, indices = np.zeros(users.shape[0] + 1, np.int64), np.zeros(0, np.int32)
  nq = _QUERY_USERS.value or users.shape[0]
  if not 1 <= nq <= users.shape[0]:
    raise UserError(f"--query_users={nq} must be between 1 and the number of users ({users.shape[0]})")
  if not 1 <= _K.value <= items.shape[0]:
    raise UserError(f"--k={_K.value} must be between 1 and the number of items ({items.shape[0]})")
  exported = [benchmark.EXPORT_METHOD] if user_rep is not None else []
  unknown = [m for m in _methods(user_rep is not None) if m not in list(benchmark.JAX_METHODS) + exported]
  unknown += [m for m in _FAISS.value if m not in benchmark.FAISS_METHODS]
  if unknown:
    raise UserError(f"unknown method(s) {', '.join(unknown)} (JAX: {', '.join(list(benchmark.JAX_METHODS) + exported)}"
                    f"; FAISS: {', '.join(benchmark.FAISS_METHODS)})")
  w = benchmark.Workload(users, items, np.arange(nq), indptr, indices, _K.value, user_rep=user_rep,
                         item_rep=item_rep)
  info = {"source": source, "num_users": users.shape[0], "num_items": items.shape[0], "dim": users.shape[1],
          "query_users": nq, "k": _K.value, "excluded_train_items": bool(data is not None)}
  return w, info


PEERS = [  # (hq_jax method, FAISS peer): the targets (1 bit <= 0.5x BinaryFlat, float32 <= 1x FlatIP,
          # 8 bit <= 0.5x FlatIP, product codes <= 1x IndexPQ) and the layouts' other natural peers
    ("float32", "faiss_flat_ip"), ("1bit_xor_popcount", "faiss_binary_flat"), ("1bit_sign_matmul", "faiss_binary_flat"),
    ("1bit_sign_int8", "faiss_binary_flat"), ("1bit_row32_xor_popcount", "faiss_binary_flat"),
    ("1bit_row8_xor_popcount", "faiss_binary_flat"), ("1bit_4layers_row8", "faiss_binary_flat"),
    ("8bit_int8", "faiss_flat_ip"), ("8bit_int_matmul", "faiss_flat_ip"), ("4bit_int_matmul", "faiss_sq4"),
    ("4bit_int8", "faiss_sq4"), ("2bit_int_matmul", "faiss_sq4"), ("pq8x8", "faiss_pq8x8"),
    ("pq16x4", "faiss_pq16x4_fastscan"),
]


def _machine() -> str:
  """The CPU model from `lscpu` (else the --machine flag)."""
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    model = fields.get("Model name", "").strip()
    cpus = fields.get("CPU(s)", "").strip()
    return f"{model}, {cpus} CPUs" if model else _MACHINE.value
  except (OSError, subprocess.SubprocessError, ValueError):
    return _MACHINE.value


def main(argv):
  del argv
  w, info = _workload()
  print(strict_json.dumps(info), flush=True)
  kernels = [k for k in _KERNELS.value if k]
  if any(k not in benchmark.KERNELS for k in kernels):
    raise UserError(f"--kernels: choose from {', '.join(benchmark.KERNELS)}")
  if "native" in kernels and not native.available():
    print(f"compiled kernel unavailable ({native.unavailable_reason()}): JAX search only", flush=True)
    kernels = [k for k in kernels if k != "native"]
  load_start = benchmark.load_average()
  bandwidth = benchmark.measure_bandwidth()
  peaks = benchmark.peak_rates()
  print(f"measured read bandwidth: {bandwidth / 1e9:.2f} GB/s; peaks: "
        f"{ {k: f'{v:.3g}' for k, v in peaks.items()} }; load {load_start}", flush=True)
  rows = []
  methods = _methods(w.user_rep is not None)
  if "float32" in methods:  # the exact float ranking first: every recall is against it
    methods = ["float32"] + [m for m in methods if m != "float32"]
  for name in methods:
    for kernel in kernels:
      before = benchmark.load_average()
      try:
        r = benchmark.run_jax_method(w, name, batch_users=_BATCH.value, block_items=_BLOCK.value,
                                     repeats=_REPEATS.value, bandwidth=bandwidth, kernel=kernel,
                                     threads=_KERNEL_THREADS.value)
      except UserError as e:  # e.g. keys wider than the kernel takes: the JAX row still runs
        print(f"{name} [{kernel}]: skipped ({e})", flush=True)
        continue
      r.update(load_before=before, load_after=benchmark.load_average())
      rows.append(r)
      print(f"{name} [{kernel}]: {r['median_s']:.3f} s", flush=True)
  faiss_names = [n for n in _FAISS.value if n]
  if faiss_names:
    try:
      import faiss  # noqa: F401
    except ImportError:
      print("faiss is not installed (pip install -e .[bench]): skipping FAISS", flush=True)
      faiss_names = []
  for name in faiss_names:
    before = benchmark.load_average()
    r = benchmark.run_faiss_method(w, name, repeats=_REPEATS.value, threads=_THREADS.value)
    r.update(load_before=before, load_after=benchmark.load_average())
    rows.append(r)
    print(f"{name}: {r['median_s']:.3f} s", flush=True)
  ref = next((r["items"] for r in rows if r["method"] == "float32"), None)
  if ref is None:  # recall needs the exact float ranking
    ref = benchmark.run_jax_method(w, "float32", batch_users=_BATCH.value, block_items=_BLOCK.value,
                                   repeats=0, bandwidth=bandwidth)["items"]
  pairs = len(w.users) * w.item_emb.shape[0]
  by = {(r["method"], r["kernel"]): r["median_s"] for r in rows}
  faiss_by = {r["method"]: r["median_s"] for r in rows if r["kernel"] == "faiss"}
  faiss_cpu = {r["method"]: r.get("cpu_s") for r in rows if r["kernel"] == "faiss"}
  peer_of = dict(PEERS)
  if w.item_rep is not None and family.family_of(w.item_rep).kind == "pq":  # a product-code export's peer
    peer_of[benchmark.EXPORT_METHOD] = "faiss_pq8x8"
  ratios, cpu_ratios = {}, {}
  for r in rows:
    r["recall"] = benchmark.recall_at_k(r.pop("items"), ref)
    r.update(benchmark.ceiling(r, dim=w.item_emb.shape[1], pairs=pairs, peaks=peaks, bandwidth=bandwidth))
    r.pop("_table", None)
    peer = peer_of.get(r["method"])
    if r["kernel"] != "faiss" and peer in faiss_by:
      r["peer"], r["peer_ratio"] = peer, r["median_s"] / faiss_by[peer]
      ratios[f"{r['method']}[{r['kernel']}]/{peer}"] = r["peer_ratio"]
      if r.get("cpu_s") and faiss_cpu.get(peer):
        r["peer_cpu_ratio"] = r["cpu_s"] / faiss_cpu[peer]
        cpu_ratios[f"{r['method']}[{r['kernel']}]/{peer}"] = r["peer_cpu_ratio"]
  del by
  result = {**info, "command": " ".join(["python -m experiments.bench_retrieval"] + sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": _machine(), "jax": jax.__version__,
            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"), "load_start": load_start,
            "load_end": benchmark.load_average(), "devices": [str(d) for d in jax.devices()],
            "bandwidth_bytes_per_s": bandwidth, "peak_ops_per_s": peaks, "kernels": kernels,
            "kernel_threads": (_KERNEL_THREADS.value or native.default_threads()) if native.available() else None,
            "batch_users": _BATCH.value or backend.tunings().batch_users,
            "tunings": dataclasses.asdict(backend.tunings()), "repeats": _REPEATS.value, "faiss_threads": _THREADS.value,
            "time_ratios": ratios, "cpu_time_ratios": cpu_ratios, "methods": rows}
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  with open(_OUT.value + ".json", "w") as f:
    strict_json.dump(result, f, indent=1)
  table = benchmark.markdown_table(rows)
  with open(_OUT.value + ".md", "w") as f:
    f.write(f"{result['command']}\n\n{result['machine']}, {result['date']}, jax {jax.__version__}, "
            f"load {load_start} -> {result['load_end']}, OPENBLAS_CORETYPE={result['openblas_coretype']}, "
            f"bandwidth {bandwidth / 1e9:.2f} GB/s, peaks {strict_json.dumps(peaks)}\n\n{table}\n\n"
            f"ratios: {strict_json.dumps(ratios)}\n\nCPU-time ratios: {strict_json.dumps(cpu_ratios)}\n")
  print(table)
  print("ratios:", strict_json.dumps(ratios))


if __name__ == "__main__":
  cli.run(main, "bench_retrieval")
