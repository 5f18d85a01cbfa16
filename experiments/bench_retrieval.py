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

Measured (2-core Sapphire Rapids CPU, quiet, 2026-11-23; results/retrieval.md): all Gowalla users against a
trained export, JAX float32 2.22 s vs FAISS FlatIP 1.24 s, 1 bit XOR/popcount 0.63 s vs BinaryFlat 0.48 s,
8 bit int8 1.61 s vs SQ8 4.76 s.
"""

import dataclasses
import os
import platform
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
from hq_jax.retrieval import benchmark

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


def main(argv):
  del argv
  w, info = _workload()
  print(strict_json.dumps(info), flush=True)
  bandwidth = benchmark.measure_bandwidth()
  print(f"measured read bandwidth: {bandwidth / 1e9:.2f} GB/s", flush=True)
  rows = []
  ref = None
  methods = _methods(w.user_rep is not None)
  if "float32" in methods:  # the exact float ranking first: every recall is against it
    methods = ["float32"] + [m for m in methods if m != "float32"]
  for name in methods:
    r = benchmark.run_jax_method(w, name, batch_users=_BATCH.value, block_items=_BLOCK.value,
                                 repeats=_REPEATS.value, bandwidth=bandwidth)
    rows.append(r)
    print(f"{name}: {r['median_s']:.3f} s (compile {r['compile_s']:.2f} s)", flush=True)
  faiss_names = [n for n in _FAISS.value if n]
  if faiss_names:
    try:
      import faiss  # noqa: F401
    except ImportError:
      print("faiss is not installed (pip install -e .[bench]): skipping FAISS", flush=True)
      faiss_names = []
  for name in faiss_names:
    r = benchmark.run_faiss_method(w, name, repeats=_REPEATS.value, threads=_THREADS.value)
    rows.append(r)
    print(f"{name}: {r['median_s']:.3f} s", flush=True)
  ref = next((r["items"] for r in rows if r["method"] == "float32"), None)
  if ref is None:  # recall needs the exact float ranking
    ref = benchmark.run_jax_method(w, "float32", batch_users=_BATCH.value, block_items=_BLOCK.value,
                                   repeats=0, bandwidth=bandwidth)["items"]
  for r in rows:
    r["recall"] = benchmark.recall_at_k(r.pop("items"), ref)
  by = {r["method"]: r["median_s"] for r in rows}
  ratios = {}
  peers = [("1bit_xor_popcount", "faiss_binary_flat"), ("1bit_sign_matmul", "faiss_binary_flat"),
           ("float32", "faiss_flat_ip"), ("8bit_int_matmul", "faiss_sq8"), ("8bit_int8", "faiss_sq8"),
           ("4bit_int_matmul", "faiss_sq4")]
  if w.item_rep is not None and family.family_of(w.item_rep).kind == "pq":  # a product-code export's peers
    peers += [(benchmark.EXPORT_METHOD, name) for name in benchmark.FAISS_PQ]
  for ours, theirs in peers:
    if ours in by and theirs in by:
      ratios[f"{ours}/{theirs}"] = by[ours] / by[theirs]
  result = {**info, "command": " ".join(["python -m experiments.bench_retrieval"] + sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d"), "machine": _MACHINE.value, "jax": jax.__version__,
            "devices": [str(d) for d in jax.devices()], "bandwidth_bytes_per_s": bandwidth,
            "batch_users": _BATCH.value or backend.tunings().batch_users,
            "tunings": dataclasses.asdict(backend.tunings()), "repeats": _REPEATS.value, "faiss_threads": _THREADS.value,
            "time_ratios": ratios, "methods": rows}
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  with open(_OUT.value + ".json", "w") as f:
    strict_json.dump(result, f, indent=1)
  table = benchmark.markdown_table(rows)
  with open(_OUT.value + ".md", "w") as f:
    f.write(f"{result['command']}\n\n{result['machine']}, {result['date']}, jax {jax.__version__}, "
            f"bandwidth {bandwidth / 1e9:.2f} GB/s\n\n{table}\n\nratios: {strict_json.dumps(ratios)}\n")
  print(table)
  print("ratios:", strict_json.dumps(ratios))


if __name__ == "__main__":
  cli.run(main, "bench_retrieval")
