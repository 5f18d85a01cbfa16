"""Growth benchmark: LightGCN step time and memory vs graph size, sharded propagation vs XLA's choice, CTR tables.

  python -m experiments.bench_scale --out=results/scale.json                # LightGCN growth, 10^5..10^7 edges
  python -m experiments.bench_scale --propagation --out=results/scale_propagation.json
  python -m experiments.bench_scale --ctr --out=results/scale_ctr.json

Every measured point runs in a fresh subprocess (`--point=...`), so its peak RSS is its own:

* growth (LightGCN, the trainer's own jitted step `hqgnn.train.make_train_step`, csr aggregation, d = 64,
  K = 3, Adam): synthetic power-law bipartite graphs of E training interactions (`power_law_interactions`:
  Zipf item popularity and user activity, Gowalla's mean degrees, so N = U + I grows with E; A~ holds 2E
  directed edges). Median wall and CPU seconds per step at a fixed BPR batch of 8192, and per epoch at a
  batch proportional to E (E / `--epoch_steps`, so an epoch is `--epoch_steps` steps + the sampling of E
  triples). Peak memory: the process's peak RSS during the timed steps (VmHWM, reset just before them) minus
  its RSS once JAX's runtime is up (imports and one tiny jitted call), and XLA's own buffer accounting of the
  compiled step (arguments + outputs - aliased + temporaries), each against the arrays the step must hold:
  E0, Adam's two moments, K + 1 layer activations (N x d float32 each), the CSR arrays (2E weights and
  columns, N + 1 offsets) and the batch.
  Growth exponents are log-log least-squares slopes.
* propagation (8 simulated CPU devices, `XLA_FLAGS=--xla_force_host_platform_device_count=8`, set for the
  subprocess): forward + backward of K = 3 layers, d = 64, on Gowalla (if `--data_dir` exists) and on a
  synthetic graph: one device `csr_aggregate`; XLA's own choice for `csr_aggregate` under jit with E0
  row-sharded over 8 devices; `hqgnn.sharded.sharded_aggregate` with the 'all_gather' and 'needed' exchanges.
  On a 2-core machine 8 simulated devices share 2 cores: compare CPU seconds (total work), not speedups.
* ctr: one table of N rows (D = 16, F = 39 fields, Zipf(1.2) ids, batch 4096, an FM logit), time per step
  with the table on dense optax Adam vs the sparse row updates of `hq_jax.ctr.sparse` (lazy Adam, row-wise
  Adagrad), and row-wise Adagrad on an int8-coded table (codes + a float32 scale per row, rows dequantized
  on gather and re-quantized on write): peak memory and bytes of the stored table.
"""

import gc
import json
import os
import re
import resource
import subprocess
import sys
import time

import numpy as np
from absl import flags

from hq_jax import cli
from hq_jax import strict_json
from hq_jax.errors import UserError

_EDGES = flags.DEFINE_list("edges", ["5", "5.5", "6", "6.5", "7"], "log10 of the training interactions E.")
_BATCH = flags.DEFINE_integer("batch_size", 8192, "Fixed BPR batch of the per-step times.")
_EPOCH_STEPS = flags.DEFINE_integer("epoch_steps", 100, "Epoch time: batch = E / this, this many steps.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per point (median).")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed steps after compilation.")
_DIM = flags.DEFINE_integer("dim", 64, "Embedding dimension d.")
_LAYERS = flags.DEFINE_integer("layers", 3, "Propagation layers K.")
_PROPAGATION = flags.DEFINE_bool("propagation", False, "Sharded propagation vs XLA's choice on 8 devices.")
_PROP_SOURCES = flags.DEFINE_list("prop_sources", ["gowalla", "6"], "Graphs of --propagation: 'gowalla' (skipped "
                                  "when --data_dir is absent) and log10 E of synthetic ones.")
_DATA_DIR = flags.DEFINE_string("data_dir", "../shared/data/gowalla", "Gowalla for --propagation (if present).")
_CTR = flags.DEFINE_bool("ctr", False, "CTR tables: dense vs sparse table updates, int8 storage.")
_CTR_ROWS = flags.DEFINE_list("ctr_rows", ["5", "6", "7"], "log10 of the CTR table rows.")
_CTR_INT8_ROWS = flags.DEFINE_list("ctr_int8_rows", ["8"], "Extra log10 rows run with int8 storage only.")
_OUT = flags.DEFINE_string("out", "", "JSON output path (default: print only).")
_POINT = flags.DEFINE_string("point", "", "Run one point in this process and print its JSON: 'growth:LOG10E', "
                             "'propagation:SOURCE', 'ctr:LOG10N:METHOD' or 'locality:LOG10E' (one A~ h product, "
                             "node ids as generated vs sorted by degree).")

GOWALLA_USER_DEGREE = 27.1  # mean training items per user (810,128 / 29,858)
GOWALLA_ITEM_DEGREE = 19.8  # mean training users per item (810,128 / 40,981)


# ----------------------------------------------------------------------------------------------------------
# Memory and time.
# ----------------------------------------------------------------------------------------------------------


def _status_mb(field: str) -> float:
  with open("/proc/self/status") as f:
    return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) / 1024


def reset_peak_rss() -> None:
  """Resets the kernel's peak-RSS counter (VmHWM) of this process to its current RSS (Linux)."""
  gc.collect()
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")


def peak_rss_mb() -> float:
  return _status_mb("VmHWM")


def rss_mb() -> float:
  return _status_mb("VmRSS")


def runtime_rss_mb() -> float:
  """RSS once JAX's CPU runtime is up (one tiny jitted call): the fixed cost every point pays."""
  import jax
  jax.block_until_ready(jax.jit(lambda x: x + 1)(np.ones(4, np.float32)))
  return rss_mb()


def timed(fn, steps: int, warmup: int) -> dict:
  """Median wall and CPU (all threads) seconds of `fn()` (which blocks), after `warmup` calls."""
  for _ in range(warmup):
    fn()
  wall, cpu = [], []
  for _ in range(steps):
    t, c = time.perf_counter(), time.process_time()
    fn()
    wall.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
  return {"wall_s": float(np.median(wall)), "cpu_s": float(np.median(cpu))}


def xla_bytes(compiled) -> int | None:
  """Bytes XLA allocates for one call of `compiled`: arguments + outputs - aliased (donated) + temporaries."""
  m = compiled.memory_analysis()
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes)


def growth_exponent(sizes, values) -> float:
  """Slope of the log-log least-squares line through (sizes, values)."""
  return float(np.polyfit(np.log(np.asarray(sizes, float)), np.log(np.asarray(values, float)), 1)[0])


# ----------------------------------------------------------------------------------------------------------
# Synthetic power-law graphs.
# ----------------------------------------------------------------------------------------------------------


def power_law_interactions(num_edges: int, *, user_exponent: float = 0.5, item_exponent: float = 0.8,
                           seed: int = 0):
  """`InteractionData` with ~`num_edges` distinct training pairs: users and items of Gowalla's mean degrees,
  pair (u, i) drawn with P(u) ~ rank(u)^-user_exponent, P(i) ~ rank(i)^-item_exponent (ranks shuffled over
  ids), duplicates dropped and topped up. Every user and item gets at least one pair."""
  from hq_jax.data.interactions import InteractionData, to_csr

  rng = np.random.default_rng(seed)
  num_users = max(int(num_edges / GOWALLA_USER_DEGREE), 2)
  num_items = max(int(num_edges / GOWALLA_ITEM_DEGREE), 2)

  def zipf(n, a):
    p = np.arange(1, n + 1, dtype=np.float64) ** -a
    return rng.permutation(p / p.sum())

  if num_edges > num_users * num_items // 4:
    raise UserError(f"power_law_interactions: {num_edges} edges is too dense for {num_users} x {num_items}")
  pu, pi = zipf(num_users, user_exponent), zipf(num_items, item_exponent)
  keys = np.unique(np.concatenate([np.arange(num_users) * num_items + rng.integers(0, num_items, num_users),
                                   rng.integers(0, num_users, num_items) * num_items + np.arange(num_items)]))
  while len(keys) < num_edges:
    draw = int((num_edges - len(keys)) * 1.1) + 16
    new = rng.choice(num_users, draw, p=pu) * num_items + rng.choice(num_items, draw, p=pi)
    keys = np.unique(np.concatenate([keys, new]))
  keys = rng.permutation(keys)[:num_edges]
  users, items = keys // num_items, keys % num_items
  train, _ = to_csr(users, items, num_users, num_items)
  test, _ = to_csr(users[:1], items[:1], num_users, num_items)
  return InteractionData(f"powerlaw-{num_edges}", num_users, num_items, train, test, {})


# ----------------------------------------------------------------------------------------------------------
# Points (each in its own process).
# ----------------------------------------------------------------------------------------------------------


def growth_point(num_edges: int) -> dict:
  """One LightGCN size: step times at the fixed and the proportional batch, peak memory vs what it holds."""
  import jax

  from experiments.configs import hqgnn_gowalla
  from hq_jax.hqgnn import sampling, train

  baseline_mb = runtime_rss_mb()
  t = time.perf_counter()
  data = power_law_interactions(num_edges)
  generate_s = time.perf_counter() - t
  config = hqgnn_gowalla.get_config()
  config.model.dim, config.model.num_layers, config.model.aggregation = _DIM.value, _LAYERS.value, "csr"
  config.eval.ks = (1,)
  problem, params, opt_state, deltas, step = train.initial_step_state(config, data)
  rng = np.random.default_rng(0)
  t = time.perf_counter()
  sampling.sample_bpr_epoch(data.train, data.num_items, rng)
  sample_epoch_s = time.perf_counter() - t

  n, e2, d, k = data.num_users + data.num_items, 2 * data.train.nnz, _DIM.value, _LAYERS.value
  out = {"edges": int(data.train.nnz), "directed_edges": e2, "users": data.num_users, "items": data.num_items,
         "nodes": n, "generate_s": generate_s, "sample_epoch_s": sample_epoch_s, "baseline_rss_mb": baseline_mb}
  for name, batch_size in (("fixed", _BATCH.value), ("epoch", max(num_edges // _EPOCH_STEPS.value, 1))):
    triples = sampling.sample_bpr_epoch(data.train, data.num_items, rng, num_samples=batch_size)
    batch = {"triples": jax.device_put(triples), "weights": jax.device_put(np.ones(batch_size, np.float32))}
    compiled = step.lower(params, opt_state, deltas, batch, problem.graph, problem.adjacency).compile()
    holds = 4 * n * d * (1 + 2 + (k + 1)) + 8 * e2 + 4 * (n + 1) + 16 * batch_size

    def run(compiled=compiled, batch=batch):
      nonlocal params, opt_state
      params, opt_state, metrics = compiled(params, opt_state, deltas, batch, problem.graph, problem.adjacency)
      jax.block_until_ready(metrics["loss"])

    run()
    reset_peak_rss()
    before_mb = rss_mb()
    times = timed(run, _STEPS.value, _WARMUP.value)
    peak_mb = peak_rss_mb()
    out[name] = {"batch_size": batch_size, **times, "must_hold_mb": holds / 2**20,
                 "xla_mb": (xla_bytes(compiled) or 0) / 2**20, "rss_before_steps_mb": before_mb,
                 "peak_rss_mb": peak_mb, "peak_over_baseline_mb": peak_mb - baseline_mb}
  steps_per_epoch = -(-data.train.nnz // out["epoch"]["batch_size"])
  out["epoch"]["steps_per_epoch"] = steps_per_epoch
  out["epoch"]["epoch_wall_s"] = steps_per_epoch * out["epoch"]["wall_s"] + sample_epoch_s
  out["epoch"]["epoch_cpu_s"] = steps_per_epoch * out["epoch"]["cpu_s"] + sample_epoch_s
  out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  return out


def propagation_point(source: str) -> dict:
  """Forward + backward of K layers at d on 8 devices: one device, XLA's choice, the two sharded exchanges."""
  import jax
  import jax.numpy as jnp

  from hq_jax import parallel
  from hq_jax.hqgnn import sharded as sharded_lib
  from hq_jax.data.interactions import load_dataset
  from hq_jax.hqgnn import graph as graph_lib

  if jax.device_count() != 8:
    raise UserError(f"--propagation needs 8 devices, got {jax.device_count()}")
  data = (load_dataset(_DATA_DIR.value) if source == "gowalla"
          else power_law_interactions(round(10 ** float(source))))
  graph = graph_lib.bipartite_graph(data)
  n, d, k = graph_lib.num_nodes(graph), _DIM.value, _LAYERS.value
  mesh = parallel.mesh_from_config(1, 8)
  n_pad = parallel.padded_rows(n, mesh)
  rng = np.random.default_rng(0)
  e0 = parallel.pad_rows(0.1 * rng.normal(size=(n, d)).astype(np.float32), n_pad)
  r = rng.normal(size=(n_pad, d)).astype(np.float32)
  csr = graph_lib.csr_adjacency(graph)
  indptr = np.concatenate([np.asarray(csr.indptr), np.full(n_pad - n, np.asarray(csr.indptr)[-1], np.int32)])
  csr = graph_lib.CSRAdjacency(data=csr.data, indices=csr.indices, indptr=jnp.asarray(indptr), num_nodes=n_pad)

  def loss(aggregate, e, r):
    return jnp.vdot(graph_lib.lightgcn_propagate(aggregate, e, k), r)

  plain = jax.jit(jax.value_and_grad(lambda e, r, a: loss(lambda h: graph_lib.csr_aggregate(a, h), e, r)))
  sharded = jax.jit(jax.value_and_grad(lambda e, r, a: loss(a.aggregate, e, r)))
  rows = parallel.row_sharding(mesh)
  cases = {"one_device_csr": (plain, jnp.asarray(e0), jnp.asarray(r), csr),
           "xla_choice_csr": (plain, parallel.put(e0, rows), parallel.put(r, rows),
                              jax.device_put(csr, parallel.replicated(mesh)))}
  build = {}
  for exchange in sharded_lib.EXCHANGES:
    t = time.perf_counter()
    adj = sharded_lib.sharded_csr_adjacency(graph, mesh, num_rows=n_pad, exchange=exchange)
    build[exchange] = {"build_s": time.perf_counter() - t, **sharded_lib.describe(adj)}
    cases[f"sharded_{exchange}"] = (sharded, parallel.put(e0, rows), parallel.put(r, rows), adj)
  out = {"source": data.name, "nodes": n, "directed_edges": int(graph.senders.shape[0]), "rows": n_pad,
         "blocks": build, "cases": {}}
  want = None
  for name, (fn, *args) in cases.items():
    t = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t
    _, grad = compiled(*args)
    want = grad if want is None else want
    times = timed(lambda compiled=compiled, args=args: jax.block_until_ready(compiled(*args)), _STEPS.value,
                  _WARMUP.value)
    out["cases"][name] = {**times, "compile_s": compile_s, "grad_err": float(jnp.max(jnp.abs(grad - want))),
                          "xla_mb_per_device": (xla_bytes(compiled) or 0) / 2**20,
                          "all_gathers": compiled.as_text().count("all-gather-start") +
                                         compiled.as_text().count(" all-gather(")}
  return out


def locality_point(num_edges: int) -> dict:
  """One A~ h product (d = --dim) with node ids as generated vs relabelled by descending degree."""
  import jax
  import jax.numpy as jnp
  import jraph

  from hq_jax.hqgnn import graph as graph_lib

  graph = graph_lib.bipartite_graph(power_law_interactions(num_edges))
  n = graph_lib.num_nodes(graph)
  receivers, senders, weights = (np.asarray(x) for x in (graph.receivers, graph.senders, graph.edges))
  new_id = np.empty(n, np.int64)
  new_id[np.argsort(-np.bincount(receivers, minlength=n), kind="stable")] = np.arange(n)
  h = jax.random.normal(jax.random.key(0), (n, _DIM.value))
  product = jax.jit(graph_lib.csr_aggregate)
  out = {"edges": num_edges, "nodes": n}
  for name, ids in (("as_generated", np.arange(n)), ("degree_sorted", new_id)):
    r, s = ids[receivers], ids[senders]
    order = np.lexsort((s, r))
    relabelled = jraph.GraphsTuple(nodes=None, edges=jnp.asarray(weights[order]),
                                   senders=jnp.asarray(s[order], jnp.int32), receivers=jnp.asarray(r[order], jnp.int32),
                                   n_node=graph.n_node, n_edge=graph.n_edge, globals=None)
    adj = graph_lib.csr_adjacency(relabelled)
    out[name] = timed(lambda adj=adj: jax.block_until_ready(product(adj, h)), _STEPS.value, _WARMUP.value)
  return out


CTR_DIM, CTR_FIELDS, CTR_BATCH = 16, 39, 4096
CTR_METHODS = ("dense_adam", "lazy_adam", "rowwise_adagrad", "int8_rowwise_adagrad")


def ctr_point(num_rows: int, method: str) -> dict:
  """One CTR table size and table update rule: step time, peak memory, stored table bytes."""
  import jax
  import jax.numpy as jnp
  import optax

  from hq_jax.ctr import models, sparse

  baseline_mb = runtime_rss_mb()
  rng = np.random.default_rng(0)
  ranks = rng.zipf(1.2, size=(_STEPS.value + _WARMUP.value + 2, CTR_BATCH, CTR_FIELDS))
  ids_all = ((ranks - 1) * 2654435761 % num_rows).astype(np.int32)  # Zipf ranks spread over the ids
  labels_all = rng.integers(0, 2, size=ids_all.shape[:2]).astype(np.float32)
  key = jax.random.key(0)
  lr = 1e-3

  def float_table_and(init_state):  # (table ~ N(0, 0.003^2) as the spec, its optimizer state)
    table = 0.003 * jax.random.normal(key, (num_rows, CTR_DIM))
    return table, init_state(table)

  def logits_of(rows):  # rows (b, F, D) -> (b,)
    return models.fm_second_order(rows) + jnp.sum(rows[..., 0], axis=1)

  def loss_of_rows(rows, labels):
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits_of(rows), labels))

  if method == "dense_adam":
    tx = optax.adam(lr)
    init = jax.jit(lambda: float_table_and(tx.init))

    @jax.jit
    def step(table, state, ids, labels):
      loss, g = jax.value_and_grad(lambda t: loss_of_rows(t[ids], labels))(table)
      updates, state = tx.update(g, state, table)
      return optax.apply_updates(table, updates), state, loss

    stored = 4 * num_rows * CTR_DIM
  elif method in ("lazy_adam", "rowwise_adagrad"):
    opt = sparse.table_optimizer(method, lr)
    init = jax.jit(lambda: float_table_and(opt.init))

    @jax.jit
    def step(table, state, ids, labels):
      unique, inverse = sparse.unique_rows(ids, num_rows)
      rows = sparse.gather_rows(table, unique)
      loss, g = jax.value_and_grad(lambda r: loss_of_rows(r[inverse], labels))(rows)
      table, state = opt.update(table, state, unique, g)
      return table, state, loss

    stored = 4 * num_rows * CTR_DIM
  elif method == "int8_rowwise_adagrad":
    # Stored: int8 codes (N, D) + one float32 scale per row; rows = codes * scale. Row-wise Adagrad on the
    # gathered float rows, written back re-quantized (round to nearest, scale = max |row| / 127).
    def quantize(rows):
      scale = jnp.maximum(jnp.max(jnp.abs(rows), axis=-1), 1e-12) / 127.0
      return jnp.round(rows / scale[:, None]).astype(jnp.int8), scale

    def init_fn():  # codes made in one fused pass (no (N, D) float32 or uint32 intermediate at 10^8 rows)
      row = jax.lax.broadcasted_iota(jnp.int32, (num_rows, CTR_DIM), 0)
      col = jax.lax.broadcasted_iota(jnp.int32, (num_rows, CTR_DIM), 1)
      codes = ((row * 40503 + col * 2654435) % 255 - 127).astype(jnp.int8)
      return ({"codes": codes, "scale": jnp.full((num_rows,), 0.009 / 127, jnp.float32)},
              {"accumulator": jnp.zeros((num_rows,), jnp.float32)})

    init = jax.jit(init_fn)

    @jax.jit
    def step(table, state, ids, labels):
      unique, inverse = sparse.unique_rows(ids, num_rows)
      rows = (sparse.gather_rows(table["codes"], unique).astype(jnp.float32)
              * sparse.gather_rows(table["scale"], unique)[:, None])
      loss, g = jax.value_and_grad(lambda r: loss_of_rows(r[inverse], labels))(rows)
      acc = sparse.gather_rows(state["accumulator"], unique) + jnp.mean(jnp.square(g), axis=-1)
      codes, scale = quantize(rows - lr * g / (jnp.sqrt(acc)[:, None] + 1e-8))
      table = {"codes": sparse.scatter_rows(table["codes"], unique, codes),
               "scale": sparse.scatter_rows(table["scale"], unique, scale)}
      return table, {"accumulator": sparse.scatter_rows(state["accumulator"], unique, acc)}, loss

    stored = num_rows * CTR_DIM + 4 * num_rows
  else:
    raise UserError(f"unknown CTR method {method!r} (expected one of {CTR_METHODS})")

  table, state = init()
  step = jax.jit(step, donate_argnums=(0, 1))
  compiled = step.lower(table, state, ids_all[0], labels_all[0]).compile()
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  i = iter(range(len(ids_all)))

  def run():
    nonlocal table, state
    j = next(i)
    table, state, loss = compiled(table, state, ids_all[j], labels_all[j])
    jax.block_until_ready(loss)

  run()
  reset_peak_rss()
  times = timed(run, _STEPS.value, _WARMUP.value)
  peak_mb = peak_rss_mb()
  return {"rows": num_rows, "method": method, **times, "table_mb": stored / 2**20,
          "optimizer_state_mb": state_bytes / 2**20, "xla_mb": (xla_bytes(compiled) or 0) / 2**20,
          "peak_rss_mb": peak_mb, "baseline_rss_mb": baseline_mb, "peak_over_baseline_mb": peak_mb - baseline_mb}


# ----------------------------------------------------------------------------------------------------------
# Driver.
# ----------------------------------------------------------------------------------------------------------


def run_point(point: str, env_extra: dict | None = None) -> dict:
  """Runs `--point=point` in a fresh interpreter; returns its JSON (or {'point', 'error'})."""
  env = dict(os.environ, **(env_extra or {}))
  passthrough = [f"--{f.name}={f.value if not isinstance(f.value, list) else ','.join(f.value)}"
                 for f in (_BATCH, _EPOCH_STEPS, _STEPS, _WARMUP, _DIM, _LAYERS, _DATA_DIR)]
  t = time.perf_counter()
  out = subprocess.run([sys.executable, "-m", "experiments.bench_scale", f"--point={point}", *passthrough],
                       capture_output=True, text=True, env=env, check=False)
  if out.returncode != 0:
    tail = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else str(out.returncode)
    print(f"{point}: failed: {tail}", file=sys.stderr, flush=True)
    return {"point": point, "error": tail}
  result = json.loads(out.stdout.strip().splitlines()[-1])
  result["point_wall_s"] = time.perf_counter() - t
  print(f"{point}: done in {result['point_wall_s']:.0f} s", file=sys.stderr, flush=True)
  return result


def growth_table(points: list[dict]) -> str:
  ok = [p for p in points if "error" not in p]
  lines = [(f"| E (interactions) | N = U + I | step @{_BATCH.value} wall / CPU (s) "
            f"| epoch (batch E/{_EPOCH_STEPS.value}) wall (s) | must hold (MB) | XLA buffers (MB) "
            "| peak RSS - runtime RSS (MB) | ratio XLA / RSS |"),
           "|---|---|---|---|---|---|---|---|"]
  for p in ok:
    f, e = p["fixed"], p["epoch"]
    lines.append(f"| {p['edges']:,} | {p['nodes']:,} | {f['wall_s']:.3f} / {f['cpu_s']:.3f} | {e['epoch_wall_s']:.1f} "
                 f"| {f['must_hold_mb']:.0f} | {f['xla_mb']:.0f} | {f['peak_over_baseline_mb']:.0f} "
                 f"| {f['xla_mb'] / f['must_hold_mb']:.2f} / {f['peak_over_baseline_mb'] / f['must_hold_mb']:.2f} |")
  if len(ok) >= 2:
    edges = [p["edges"] for p in ok]
    fits = {k: growth_exponent(edges, [p[s][m] for p in ok]) for k, (s, m) in
            {"step wall": ("fixed", "wall_s"), "step CPU": ("fixed", "cpu_s"), "epoch wall": ("epoch", "epoch_wall_s"),
             "epoch CPU": ("epoch", "epoch_cpu_s")}.items()}
    lines.append("")
    lines.append("Growth exponents (log-log least squares over all sizes): " +
                 ", ".join(f"{k} {v:.2f}" for k, v in fits.items()))
    holds = [p["fixed"]["must_hold_mb"] for p in ok]
    lines.append("Marginal memory (least-squares slope vs must-hold MB): peak RSS - runtime RSS "
                 f"{np.polyfit(holds, [p['fixed']['peak_over_baseline_mb'] for p in ok], 1)[0]:.2f}x, "
                 f"XLA buffers {np.polyfit(holds, [p['fixed']['xla_mb'] for p in ok], 1)[0]:.2f}x")
    if len(ok) >= 3:
      top = ok[-3:]
      lines.append("Over the three largest: " + ", ".join(
          f"{k} {growth_exponent([p['edges'] for p in top], [p[s][m] for p in top]):.2f}" for k, (s, m) in
          {"step wall": ("fixed", "wall_s"), "step CPU": ("fixed", "cpu_s")}.items()))
  return "\n".join(lines)


def propagation_table(points: list[dict]) -> str:
  lines = ["| graph | method | wall (s) | CPU (s) | CPU vs one device | XLA buffers per device (MB) | max grad err |",
           "|---|---|---|---|---|---|---|"]
  for p in points:
    if "error" in p:
      continue
    base = p["cases"]["one_device_csr"]["cpu_s"]
    for name, c in p["cases"].items():
      lines.append(f"| {p['source']} ({p['directed_edges']:,} edges) | {name} | {c['wall_s']:.3f} | {c['cpu_s']:.3f} "
                   f"| {c['cpu_s'] / base:.2f}x | {c['xla_mb_per_device']:.0f} | {c['grad_err']:.1e} |")
  return "\n".join(lines)


def ctr_table(points: list[dict]) -> str:
  lines = [("| rows | table update | step wall / CPU (s) | stored table (MB) | optimizer state (MB) "
            "| XLA buffers (MB) | peak RSS - runtime RSS (MB) |"), "|---|---|---|---|---|---|---|"]
  for p in points:
    if "error" in p:
      lines.append(f"| {p['point']} | failed: {p['error'][:80]} | | | | | |")
      continue
    lines.append(f"| {p['rows']:,} | {p['method']} | {p['wall_s']:.4f} / {p['cpu_s']:.4f} | {p['table_mb']:.0f} "
                 f"| {p['optimizer_state_mb']:.0f} | {p['xla_mb']:.0f} | {p['peak_over_baseline_mb']:.0f} |")
  return "\n".join(lines)


def main(argv):
  del argv
  if _POINT.value:
    kind, _, arg = _POINT.value.partition(":")
    if kind == "growth":
      result = growth_point(round(10 ** float(arg)))
    elif kind == "propagation":
      result = propagation_point(arg)
    elif kind == "locality":
      result = locality_point(round(10 ** float(arg)))
    elif kind == "ctr":
      rows, method = arg.split(":")
      result = ctr_point(round(10 ** float(rows)), method)
    else:
      raise UserError(f"--point={_POINT.value!r}: unknown kind {kind!r}")
    print(strict_json.dumps(result))
    return

  from hq_jax.workdir import device_description, now_iso, write_json

  report = {"device": device_description(), "date": now_iso(), "command": " ".join(sys.argv)}
  if _PROPAGATION.value:
    env = {"XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip(),
           "JAX_PLATFORMS": "cpu"}
    sources = [s for s in _PROP_SOURCES.value if s != "gowalla" or os.path.isdir(_DATA_DIR.value)]
    report["propagation"] = [run_point(f"propagation:{s}", env) for s in sources]
    print(propagation_table(report["propagation"]))
  elif _CTR.value:
    points = [f"ctr:{r}:{m}" for r in _CTR_ROWS.value if r for m in CTR_METHODS]
    points += [f"ctr:{r}:int8_rowwise_adagrad" for r in _CTR_INT8_ROWS.value if r]
    report["ctr"] = [run_point(p) for p in points]
    print(ctr_table(report["ctr"]))
  else:
    report["growth"] = [run_point(f"growth:{e}") for e in _EDGES.value]
    print(growth_table(report["growth"]))
  print(f"\n{report['device']}, {report['date']}")
  if _OUT.value:
    write_json(_OUT.value, report)


if __name__ == "__main__":
  cli.run(main, "bench_scale")
