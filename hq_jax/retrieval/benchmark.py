"""Retrieval benchmark: JAX search methods against FAISS on the same vectors, K and users.

Library side of `experiments/bench_retrieval.py`. Every timing is a median over repeated full runs (all
query users, results fetched to the host, which waits for the device), after a warm-up run that also
compiles every shape. Each hq_jax method runs under one search (`kernel`: "native", the compiled kernel of
`hq_jax.retrieval.native`, or "jax", the blocked JAX search; default: the backend's). Compile time of the
JAX search is measured apart, as the ahead-of-time lower + compile of the search for the first batch's
shapes (the first run's excess over the median is kept too). Throughput is set against a measured memory
bandwidth (a jitted reduction over a large array): each user batch reads the whole item table once, so
code bytes read = batches * table bytes.

Ceilings (`ceiling`): each method's arithmetic per (user, item) pair on the unit it runs on (`OPS`: float32
multiply-adds, int8 multiply-adds, 32-bit words XOR-ed + popcounted, byte-indexed float table lookups,
4-bit in-register lookups), at that unit's peak rate on this machine measured by the kernel's probes
(`peak_rates`), and its bytes (the item table read once, at the measured bandwidth): the ceiling time is
the larger of the two floors, and `fraction` = ceiling / measured time.
"""

import ctypes
import dataclasses
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from hq_jax import backend
from hq_jax.errors import UserError
from hq_jax.quant import pq, quantizer
from hq_jax.retrieval import native, scoring
from hq_jax.retrieval.topk import exclusion_pairs, pad_table, search_blocks, search_prepared

JAX_METHODS = {  # name -> (bits, scoring method, representation: see `representations`)
    "float32": (0, "float", "float"),
    "1bit_xor_popcount": (1, "hamming", "matrix"),
    "1bit_sign_matmul": (1, "sign_matmul", "matrix"),
    "1bit_sign_int8": (1, "int8", "matrix"),
    "1bit_row32_xor_popcount": (1, "hamming", "row32"),
    "1bit_row8_xor_popcount": (1, "hamming", "row8"),
    "1bit_4layers_row8": (1, "hamming", "layers4_row8"),
    "2bit_int_matmul": (2, "int_matmul", "matrix"),
    "4bit_int_matmul": (4, "int_matmul", "matrix"),
    "4bit_int8": (4, "int8", "matrix"),
    "8bit_int_matmul": (8, "int_matmul", "matrix"),
    "8bit_int8": (8, "int8", "matrix"),
    "pq8x8": (8, "auto", "pq8x8"),  # product codes of the items (users float): FAISS IndexPQ's layout
    "pq16x4": (4, "auto", "pq16x4"),
}
PQ_TRAIN_ROWS = 65536  # k-means of the benchmark's product codes runs on at most this many item rows
KERNELS = ("native", "jax")
EXPORT_METHOD = "export"  # the export's own codes (a coded --export, any family), method "auto"


def representations(x: np.ndarray, bits: int, form: str):
  """What a method searches, from float embeddings x: "float" (x itself), "matrix" (one scale / range per
  matrix), "row32" / "row8" (1 bit, per-row scales as float32 / `ScaleCodes`), "layers4_row8" (the columns
  split into 4 equal layers, each 1 bit with 8-bit row scales, mean weights)."""
  if form == "float":
    return x
  if form == "matrix":
    return quantizer.quantize(x, bits)
  if form in ("row32", "row8"):
    return quantizer.quantize(x, bits, scale=quantizer.sign_scale(x, "row"), scale_bits=8 if form == "row8" else 32)
  if form == "layers4_row8":
    return quantizer.quantize_layers(np.array_split(x, 4, axis=1), bits, scale_mode="row", scale_bits=8)
  if form.startswith("pq"):  # "pq<M>x<b>": codebooks by k-means on a sample of the rows, then every row coded
    m = int(form[2:].split("x")[0])
    sample = x[np.random.default_rng(0).permutation(x.shape[0])[:PQ_TRAIN_ROWS]]
    books = pq.init_codebooks(jnp.asarray(sample), m, bits, jax.random.key(0), iterations=10)
    codes = np.concatenate([np.asarray(pq.encode(jnp.asarray(x[i:i + 65536]), books))
                            for i in range(0, x.shape[0], 65536)])
    return pq.ProductCodes(codes=jnp.asarray(codes.astype(np.uint8)), codebooks=books, bits=bits)
  raise ValueError(form)
FAISS_METHODS = ("faiss_flat_ip", "faiss_binary_flat", "faiss_sq8", "faiss_sq4", "faiss_pq8x8", "faiss_pq16x4_fastscan")
# FAISS product-code indexes: name -> (M subspaces, bits per code, fast-scan layout). 8 x 8 bits = 64 bits per
# item (IndexPQ, exhaustive ADC with a per-query lookup table); 16 x 4 bits = 64 bits per item in the
# SIMD fast-scan layout (IndexPQFastScan, 4-bit lookup tables held in registers). Both need M | d.
FAISS_PQ = {"faiss_pq8x8": (8, 8, False), "faiss_pq16x4_fastscan": (16, 4, True)}


def timed_runs(fn, repeats: int) -> dict:
  """Runs fn once (warm-up and compilation) and `repeats` more times; returns the timings and last result.

  Beside the wall-clock times, the process's CPU seconds of each run (`time.process_time`: every thread of
  this process, user + system): on a machine shared with other jobs, wall time depends on how the method's
  threads survive preemption (work-stealing or barriers), CPU time much less (spin-waiting counts in it)."""
  t0 = time.perf_counter()
  out = fn()
  first = time.perf_counter() - t0
  times, cpu = [], []
  for _ in range(repeats):
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  median = statistics.median(times) if times else first
  return {"first_s": first, "median_s": median, "times_s": times, "cpu_s": statistics.median(cpu) if cpu else None,
          "first_run_excess_s": max(first - median, 0.0), "result": out}


def compile_seconds(prepared: jax.Array, blocked: scoring.ItemTable, w: "Workload", batch_users: int) -> float:
  """Ahead-of-time lower + compile time of the search for the first user batch's shapes."""
  batch = min(batch_users, len(w.users))
  rows, cols = exclusion_pairs(w.indptr, w.indices, w.users[:batch], batch)
  t0 = time.perf_counter()
  search_blocks.lower(prepared[:batch], blocked, jnp.asarray(rows), jnp.asarray(cols), k=w.k,
                      num_items=w.item_emb.shape[0], item_tile=backend.tunings().item_tile).compile()
  return time.perf_counter() - t0


def measure_bandwidth(nbytes: int | None = None, repeats: int = 5) -> float:
  """Device read bandwidth in bytes/s: a jitted sum over an `nbytes` float32 array (median of repeats;
  default size: the backend's `bandwidth_probe_bytes`)."""
  nbytes = backend.tunings().bandwidth_probe_bytes if nbytes is None else nbytes
  x = jnp.ones((nbytes // 4,), jnp.float32)
  f = jax.jit(jnp.sum)
  f(x).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(x).block_until_ready()
    times.append(time.perf_counter() - t0)
  return nbytes / statistics.median(times)


def table_nbytes(table: scoring.ItemTable) -> int:
  """Bytes of the item data the search reads (codes in their search layout plus per-item terms)."""
  return int(sum(v.nbytes for v in jax.tree.leaves(table)))


def recall_at_k(pred: np.ndarray, ref: np.ndarray) -> float:
  """Mean over users of |pred_u & ref_u| / |ref_u| (ids -1 ignored)."""
  hits, total = 0, 0
  for p, r in zip(pred, ref):
    r = set(r[r >= 0].tolist())
    hits += len(r & set(p[p >= 0].tolist()))
    total += len(r)
  return hits / max(total, 1)


@dataclasses.dataclass(frozen=True)
class Workload:
  """What every method searches: float embeddings (quantized per method), users, exclusions and K."""

  user_emb: np.ndarray  # (num_users, d) float32
  item_emb: np.ndarray  # (num_items, d) float32
  users: np.ndarray  # query user ids
  indptr: np.ndarray  # exclusions CSR over all users
  indices: np.ndarray
  k: int
  user_rep: object = None  # a quantized export's own representations (method "export")
  item_rep: object = None


_REPS: dict = {}  # (id of the workload's arrays, form, bits, side) -> representation, shared by both kernels


def _reps(w: "Workload", bits: int, form: str):
  """(user rep, item rep) of a method's form; product codes code the items only (users stay float)."""
  def rep(x, side):
    key = (id(x), form, bits, side)
    if key not in _REPS:
      _REPS[key] = x if (form.startswith("pq") and side == "users") else representations(x, bits, form)
    return _REPS[key]
  return rep(w.user_emb, "users"), rep(w.item_emb, "items")


def run_jax_method(w: Workload, name: str, *, batch_users: int | None, block_items: int | None, repeats: int,
                   bandwidth: float, kernel: str | None = None, threads: int | None = None) -> dict:
  """Times one hq_jax method on `w` under one search (`kernel`: "native" or "jax"; None: the backend's
  `retrieval_kernel`, the JAX search where the kernel is unavailable or does not apply). Sizes left None
  are the backend's (`hq_jax.backend`); they shape the JAX search only. `threads`: the kernel's threads
  (default: every CPU this process may use).

  Raises:
    UserError: kernel "native" where the compiled kernel is unavailable, or a pair it does not take.
  """
  batch_users = backend.tunings().batch_users if batch_users is None else batch_users
  if name == EXPORT_METHOD:
    ur, ir, method = w.user_rep, w.item_rep, "auto"
    bits = scoring.rep_bits(ir)  # the item side's codes (users may be float)
  else:
    bits, method, form = JAX_METHODS[name]
    ur, ir = _reps(w, bits, form)
  if kernel is None:
    kernel = "native" if backend.tunings().retrieval_kernel == "native" and native.available() else "jax"
  nq, ni = len(w.users), w.item_emb.shape[0]
  if kernel == "native":
    if not native.available():
      raise UserError(f"kernel 'native' is unavailable: {native.unavailable_reason()}")
    t0 = time.perf_counter()
    table = native.prepare_items(ir, ur, method)
    if table is None:
      raise UserError(f"{name}: its keys are wider than the compiled kernel takes (run it with kernel 'jax')")
    prepared = native.prepare_users(ur, table)
    prepare_s = time.perf_counter() - t0
    run = timed_runs(lambda: native.search(prepared, table, w.indptr, w.indices, w.users, w.k, threads=threads),
                     repeats)
    t = run["median_s"]
    code_bytes = table.nbytes
    return {"method": name, "kernel": kernel, "bits": bits, "kind": table.mode,
            "key_bits": table.meta[3] if table.mode == "int" else 32, "prepare_s": prepare_s, "compile_s": None,
            "first_run_excess_s": run["first_run_excess_s"], "median_s": t, "times_s": run["times_s"],
            "cpu_s": run["cpu_s"], "queries_per_s": nq / t, "items_scored_per_s": nq * ni / t, "code_bytes": code_bytes,
            "bytes_read_per_s": code_bytes / t, "roofline_ratio": code_bytes / t / bandwidth,
            "threads": threads or native.default_threads(), "items": run["result"][1], "_table": table}
  with backend.override(dataclasses.replace(backend.tunings(), retrieval_kernel="jax")):
    t0 = time.perf_counter()
    table = scoring.prepare_items(ir, ur, method)
    prepared = scoring.prepare_users(ur, table)
    blocked, block = pad_table(table, block_items)
    jax.block_until_ready((blocked, prepared))
    prepare_s = time.perf_counter() - t0
    compile_s = compile_seconds(prepared, blocked, w, batch_users)
    run = timed_runs(lambda: search_prepared(prepared, blocked, w.item_emb.shape[0], w.indptr, w.indices,
                                             w.users, w.k, batch_users=batch_users), repeats)
  batches = -(-nq // min(batch_users, nq))
  read = batches * table_nbytes(table)
  t = run["median_s"]
  return {"method": name, "kernel": "jax", "bits": bits, "kind": table.kind, "key_tier": table.spec.tier,
          "key_words": table.words, "prepare_s": prepare_s,
          "compile_s": compile_s, "first_run_excess_s": run["first_run_excess_s"], "median_s": t,
          "times_s": run["times_s"], "cpu_s": run["cpu_s"], "queries_per_s": nq / t,
          "items_scored_per_s": nq * ni / t, "code_bytes": table_nbytes(table), "bytes_read_per_s": read / t,
          "roofline_ratio": read / t / bandwidth, "block_items": block, "batch_users": batch_users,
          "items": run["result"][1], "_table": table}


# ----------------------------------------------------------------------------------------------------------
# Ceilings
# ----------------------------------------------------------------------------------------------------------

UNITS = ("fma32", "int8_mac", "popcount32", "table_lookup", "shuffle_lookup")  # HqPeakOps units 0-4


def peak_rates(threads: int | None = None, seconds: float = 0.3, tries: int = 3) -> dict[str, float]:
  """Peak operations per second of each unit on this machine (best of `tries` runs of the kernel's probes
  over `threads` threads, about `seconds` each); {} where the compiled kernel is unavailable."""
  if not native.available():
    return {}
  lib = native._library()[0]  # pylint: disable=protected-access
  lib.HqPeakOps.restype = ctypes.c_double
  lib.HqPeakOps.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64]
  threads = threads or native.default_threads()
  per_iter = {0: 12 * 16, 1: 12 * 64, 2: 12 * 16, 3: 1, 4: 12 * 64}  # ops of one probe iteration, per thread
  rates = {}
  for unit, name in enumerate(UNITS):
    rate = lib.HqPeakOps(unit, threads, 100_000)
    if rate <= 0:
      continue
    iters = max(100_000, int(seconds * rate / threads / per_iter[unit]))
    rates[name] = max(lib.HqPeakOps(unit, threads, iters) for _ in range(tries))
  return rates


def ops_per_pair(row: dict, dim: int) -> tuple[str, float] | None:
  """(unit, operations per (user, item) pair) of a result row: what its search computes for every pair."""
  m = row["method"]
  words = -(-dim // 32)
  if m.startswith("faiss_"):
    return {"faiss_flat_ip": ("fma32", dim), "faiss_binary_flat": ("popcount32", words),
            "faiss_sq8": ("fma32", dim), "faiss_sq4": ("fma32", dim), "faiss_pq8x8": ("table_lookup", 8),
            "faiss_pq16x4_fastscan": ("shuffle_lookup", 16)}.get(m)
  table = row.get("_table")
  if row.get("kernel") == "native":
    if table.mode == "float":
      return "int8_mac", table.meta[4] * 4  # the int8 gate (exact scoring of the few gated items aside)
    layers = [table.meta[6 + 6 * l: 12 + 6 * l] for l in range(table.meta[2])]
    pop = sum(l[2] for l in layers if l[0] == 0)
    mac = sum(4 * l[2] for l in layers if l[0] == 1)
    return ("popcount32", pop) if not mac else ("int8_mac", mac + pop)
  kinds = [l.kind for l in table.spec.layers]
  if all(k == "hamming" for k in kinds):
    return "popcount32", sum(-(-l.dim // 32) for l in table.spec.layers)
  if all(k == "int8" for k in kinds):
    return "int8_mac", sum(l.dim for l in table.spec.layers)
  return "fma32", sum(l.dim for l in table.spec.layers)


def ceiling(row: dict, *, dim: int, pairs: int, peaks: dict[str, float], bandwidth: float) -> dict:
  """The row's ceiling fields: unit, ops per pair, compute floor s, bytes floor s, ceiling s, fraction."""
  op = ops_per_pair(row, dim)
  if op is None or op[0] not in peaks:
    return {}
  unit, ops = op
  compute = pairs * ops / peaks[unit]
  code_bytes = row.get("code_bytes")
  read = (code_bytes / bandwidth) if code_bytes else 0.0
  floor = max(compute, read)
  return {"unit": unit, "ops_per_pair": ops, "compute_floor_s": compute, "bytes_floor_s": read,
          "ceiling_s": floor, "fraction_of_ceiling": floor / row["median_s"]}


def load_average() -> list[float]:
  """The 1, 5 and 15 minute load averages (other processes competing for the cores)."""
  return [round(v, 2) for v in os.getloadavg()]


def run_faiss_method(w: Workload, name: str, *, repeats: int, threads: int) -> dict:
  """One FAISS index over the same float vectors: time the plain top-K search, then filter exclusions.

  The product-code indexes (`FAISS_PQ`) are trained (k-means) on the items and code the items only, the
  queries staying float: FAISS's "items coded, users float" layout.

  FAISS cannot exclude per-user items, so the timed search is plain top-K (what the issue's targets
  measure) and a second, untimed-for-ratios search for K + (most excluded items of a query user) gives the
  excluded-filtered lists that recall is computed on.
  """
  import faiss  # the `bench` extra; checked by the caller

  faiss.omp_set_num_threads(threads)
  d = w.item_emb.shape[1]
  queries = np.ascontiguousarray(w.user_emb[w.users])
  t0 = time.perf_counter()
  if name == "faiss_binary_flat":
    if d % 8:
      raise UserError(f"faiss IndexBinaryFlat needs d divisible by 8, got {d}")
    index = faiss.IndexBinaryFlat(d)
    index.add(np.packbits(w.item_emb >= 0, axis=1))
    queries = np.packbits(queries >= 0, axis=1)
  elif name == "faiss_flat_ip":
    index = faiss.IndexFlatIP(d)
    index.add(np.ascontiguousarray(w.item_emb))
  elif name in FAISS_PQ:
    m, nbits, fast_scan = FAISS_PQ[name]
    if d % m:
      raise UserError(f"faiss {name} needs d divisible by M = {m}, got {d}")
    kind = faiss.IndexPQFastScan if fast_scan else faiss.IndexPQ
    index = kind(d, m, nbits, faiss.METRIC_INNER_PRODUCT)
    index.train(np.ascontiguousarray(w.item_emb))
    index.add(np.ascontiguousarray(w.item_emb))
  else:
    qtype = {"faiss_sq8": faiss.ScalarQuantizer.QT_8bit, "faiss_sq4": faiss.ScalarQuantizer.QT_4bit}[name]
    index = faiss.IndexScalarQuantizer(d, qtype, faiss.METRIC_INNER_PRODUCT)
    index.train(np.ascontiguousarray(w.item_emb))
    index.add(np.ascontiguousarray(w.item_emb))
  build_s = time.perf_counter() - t0
  run = timed_runs(lambda: index.search(queries, w.k), repeats)
  lengths = w.indptr[w.users + 1] - w.indptr[w.users]
  extra = int(lengths.max(initial=0))
  t0 = time.perf_counter()
  _, ids = index.search(queries, w.k + extra)
  filtered_s = time.perf_counter() - t0
  items = np.full((len(w.users), w.k), -1, np.int64)
  for row, u in enumerate(w.users):
    excluded = set(w.indices[w.indptr[u]:w.indptr[u + 1]].tolist())
    keep = [i for i in ids[row].tolist() if i >= 0 and i not in excluded][:w.k]
    items[row, :len(keep)] = keep
  nq, ni = len(w.users), w.item_emb.shape[0]
  t = run["median_s"]
  return {"method": name, "kernel": "faiss", "build_s": build_s, "median_s": t, "times_s": run["times_s"],
          "cpu_s": run["cpu_s"], "queries_per_s": nq / t,
          "items_scored_per_s": nq * ni / t, "search_k_plus_excluded_s": filtered_s,
          "search_k_plus_excluded": w.k + extra, "items": items}


def markdown_table(rows: list[dict]) -> str:
  """One line per result row: time, ratio to its FAISS peer (`peer_ratio`), ceiling and recall."""
  head = ("| method | search | median s | CPU s | vs FAISS peer | items scored/s | code bytes | unit, ops/pair | "
          "ceiling s | fraction of ceiling | load (1 min) | recall@K vs float |")
  lines = [head, "|" + " --- |" * 12]
  for r in rows:
    g = lambda key, fmt: format(r[key], fmt) if r.get(key) is not None else "-"
    unit = f"{r['unit']}, {r['ops_per_pair']:g}" if "unit" in r else "-"
    peer = f"{r['peer_ratio']:.3f}x {r['peer']}" if "peer_ratio" in r else "-"
    load = f"{r['load_before'][0]:.1f}" if "load_before" in r else "-"
    lines.append(f"| {r['method']} | {r.get('kernel', '-')} | {g('median_s', '.3f')} | {g('cpu_s', '.3f')} | {peer} | "
                 f"{g('items_scored_per_s', '.3g')} | {g('code_bytes', 'd')} | {unit} | {g('ceiling_s', '.3f')} | "
                 f"{g('fraction_of_ceiling', '.3f')} | {load} | {g('recall', '.4f')} |")
  return "\n".join(lines)
