"""Checks of `hq_jax.parallel` that need several devices; run in a subprocess by tests/parallel_test.py.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
      python tests/parallel_worker.py propagation training padded checkpoint --workdir=/tmp/x

Prints one JSON object {check: result}. Errors are max absolute differences against the single-device path
(`graph.csr_aggregate`, the trainer's own `make_train_step` on one device); the test holds the tolerances.
The toy problem and its steps are shared with tests/multiprocess_worker.py.
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments.configs import hqgnn_test
from hq_jax import parallel
from hq_jax.checkpoint import Checkpointer
from hq_jax.data.interactions import InteractionData, to_csr
from hq_jax.hqgnn import graph as graph_lib
from hq_jax.hqgnn import lightgcn, train
from hq_jax.hqgnn import model as model_lib
from hq_jax.hqgnn import sharded as sharded_lib

MESHES = ((8, 1), (1, 8), (4, 2), (1, 1))
PROPAGATION_CASES = tuple((shape, "all_gather") for shape in MESHES) + (((4, 2), "needed"),)
TRAINING_CASES = (("none", (4, 2)), ("2", (4, 2)))  # (quant.bits, mesh), each against one device
STEPS = 4
BATCH = 32
DECAY = 1e-4


def toy_data(num_users: int = 40, num_items: int = 56, nnz: int = 400, seed: int = 0) -> InteractionData:
  """Random interactions (every user and item has one, so that BPR sampling works)."""
  rng = np.random.default_rng(seed)
  users = np.concatenate([np.arange(num_users), rng.integers(0, num_users, num_items + nnz)])
  items = np.concatenate([rng.integers(0, num_items, num_users), np.arange(num_items), rng.integers(0, num_items, nnz)])
  train_csr, _ = to_csr(users, items, num_users, num_items)
  test_csr, _ = to_csr(users[:5], items[:5], num_users, num_items)
  return InteractionData("toy", num_users, num_items, train_csr, test_csr, {})


def mesh_of(shape: tuple[int, int]) -> jax.sharding.Mesh:
  return parallel.mesh_from_config(*shape, devices=jax.devices()[: shape[0] * shape[1]])


def _max_err(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ----------------------------------------------------------------------------------------------------------
# Propagation: forward and gradient against graph.csr_aggregate.
# ----------------------------------------------------------------------------------------------------------


def check_propagation() -> dict:
  data = toy_data(num_users=37, num_items=50)  # 87 nodes: padded on every mesh with more than one block
  graph = graph_lib.bipartite_graph(data)
  adj = graph_lib.csr_adjacency(graph)
  n = graph_lib.num_nodes(graph)
  rng = np.random.default_rng(1)
  e0 = rng.normal(size=(n, 8)).astype(np.float32)
  weights = rng.normal(size=(n, 8)).astype(np.float32)

  def objective(aggregate, e, w):
    return jnp.sum(jnp.sin(graph_lib.lightgcn_propagate(aggregate, e, 3)) * w[: e.shape[0]])

  def evaluate(aggregate, e, w):
    value, grad = jax.value_and_grad(objective, argnums=1)(aggregate, e, w)
    return graph_lib.lightgcn_propagate(aggregate, e, 3), value, grad

  want_out, want_value, want_grad = jax.jit(
      lambda e, w, a: evaluate(lambda h: graph_lib.csr_aggregate(a, h), e, w))(e0, weights, adj)
  sharded = jax.jit(lambda e, w, a: evaluate(a.aggregate, e, w))
  out = {}
  for shape, exchange in PROPAGATION_CASES:
    mesh = mesh_of(shape)
    n_pad = parallel.padded_rows(n, mesh)
    sadj = sharded_lib.sharded_csr_adjacency(graph, mesh, num_rows=n_pad, exchange=exchange)
    e = parallel.put(parallel.pad_rows(e0, n_pad), parallel.row_sharding(mesh))
    w = parallel.put(parallel.pad_rows(weights, n_pad), parallel.row_sharding(mesh))
    got_out, value, grad = sharded(e, w, sadj)
    out[f"{shape[0]}x{shape[1]}/{exchange}"] = {
        "rows": n_pad, "forward": _max_err(got_out[:n], want_out), "value": abs(float(value) - float(want_value)),
        "grad": _max_err(grad[:n], want_grad), "padded_rows_out": float(jnp.max(jnp.abs(got_out[n:]), initial=0.0)),
        "padded_rows_grad": float(jnp.max(jnp.abs(grad[n:]), initial=0.0)),
        "out_spec": str(got_out.sharding.spec)}
  return out


# ----------------------------------------------------------------------------------------------------------
# Training: the trainer's own model and step, one device vs a mesh.
# ----------------------------------------------------------------------------------------------------------


def toy_config(bits: str = "none"):
  config = hqgnn_test.get_config()
  config.model.dim = 8
  config.model.num_layers = 3
  config.train.learning_rate = 1e-2
  config.quant.bits = bits
  config.quant.estimator = "ste"
  return config


def toy_batches(data: InteractionData) -> list[dict]:
  batches = train.epoch_batches(data, seed=0, epoch=0, batch_size=BATCH)
  return [{k: v[i] for k, v in batches.items()} for i in range(STEPS)]


def model_config(config, data) -> model_lib.ModelConfig:
  return model_lib.ModelConfig(num_users=data.num_users, num_items=data.num_items, dim=config.model.dim,
                               num_layers=config.model.num_layers, quant=train.quantizer_config(config))


def train_reference(data: InteractionData, bits: str = "none") -> dict:
  """STEPS Adam steps of the trainer's step on one device, unsharded (the single-device trainer path)."""
  config = toy_config(bits)
  graph = graph_lib.bipartite_graph(data)
  adj = graph_lib.csr_adjacency(graph)
  model = model_lib.HQGNN(model_config(config, data), rngs=nnx.Rngs(params=0))
  model.init_quantizer(graph, adj)
  graphdef, params = nnx.split(model)
  tx = train.create_optimizer(config)
  opt_state = tx.init(params)
  step = train.make_train_step(graphdef, tx, num_users=data.num_users, decay=DECAY, distill_weight=0.0)
  deltas = {"users": jnp.zeros(()), "items": jnp.zeros(())}
  losses = []
  for batch in toy_batches(data):
    params, opt_state, metrics = step(params, opt_state, deltas, batch, graph, adj)
    losses.append(float(metrics["loss"]))
  return {"losses": losses, "params": parallel.gather(params), "opt_state": parallel.gather(opt_state)}


def sharded_state(data, config, mesh, n_rows, adjacency):
  """(graphdef, init, abstract state, shardings): the model and Adam state, created sharded."""
  tx = train.create_optimizer(config)

  def make_model():
    model = model_lib.HQGNN(model_config(config, data), rngs=nnx.Rngs(params=0))
    model.init_quantizer(None, adjacency)
    return model

  graphdef = nnx.graphdef(nnx.eval_shape(make_model))

  def init():
    params = nnx.state(make_model())
    return {"params": params, "opt_state": tx.init(params)}

  abstract = jax.eval_shape(init)
  shardings = parallel.state_shardings(abstract, mesh, table_rows=n_rows)
  return graphdef, tx, init, abstract, shardings


def train_sharded(data: InteractionData, mesh: jax.sharding.Mesh, bits: str = "none") -> dict:
  """The same steps with the state created sharded on `mesh`, batches over 'data', A~ by row blocks."""
  config = toy_config(bits)
  graph = graph_lib.bipartite_graph(data)
  n = graph_lib.num_nodes(graph)
  n_rows = parallel.padded_rows(n, mesh)
  assert n_rows == n, "the real model holds U + I rows: the toy graph must divide (padding: check_padded)"
  adjacency = sharded_lib.sharded_csr_adjacency(graph, mesh, num_rows=n_rows)
  graphdef, tx, init, _, shardings = sharded_state(data, config, mesh, n_rows, adjacency)
  state = jax.jit(init, out_shardings=shardings)()
  params, opt_state = state["params"], state["opt_state"]
  specs = {"table": str(params["encoder"]["embedding"][...].sharding.spec),
           "adam_mu": str(jax.tree.leaves(opt_state)[1].sharding.spec)}
  step = train.make_train_step(graphdef, tx, num_users=data.num_users, decay=DECAY, distill_weight=0.0)
  # Pin the state's layout (else XLA picks the outputs' shardings, and the next call recompiles for them).
  step = jax.jit(step, out_shardings=(shardings["params"], shardings["opt_state"], parallel.replicated(mesh)),
                 donate_argnums=(0, 1))
  deltas = parallel.put({"users": np.zeros((), np.float32), "items": np.zeros((), np.float32)},
                        parallel.replicated(mesh))
  losses = []
  for batch in toy_batches(data):
    batch = parallel.put(batch, parallel.batch_sharding(mesh))
    params, opt_state, metrics = step(params, opt_state, deltas, batch, None, adjacency)
    losses.append(float(metrics["loss"]))
  specs["table_after"] = str(params["encoder"]["embedding"][...].sharding.spec)
  return {"losses": losses, "params": parallel.gather(params), "opt_state": parallel.gather(opt_state),
          "specs": specs}


def compare(ref: dict, got: dict) -> dict:
  return {"losses": _max_err(got["losses"], ref["losses"]),
          "params": max(_max_err(a, b) for a, b in zip(jax.tree.leaves(got["params"]), jax.tree.leaves(ref["params"]))),
          "opt_state": max(_max_err(a, b) for a, b in zip(jax.tree.leaves(got["opt_state"]),
                                                          jax.tree.leaves(ref["opt_state"]))),
          "loss_change": float(ref["losses"][0] - ref["losses"][-1]), "specs": got.get("specs", {})}


def check_training() -> dict:
  data = toy_data()  # 96 nodes: divides by 8, so the unmodified model (U + I rows) shards
  out, refs = {}, {}
  for bits, shape in TRAINING_CASES:
    if bits not in refs:
      refs[bits] = train_reference(data, bits)
    out[f"{bits}/{shape[0]}x{shape[1]}"] = compare(refs[bits], train_sharded(data, mesh_of(shape), bits))
  return out


# ----------------------------------------------------------------------------------------------------------
# The padding rule in a training step: a minimal LightGCN-BPR step from the library's functions.
# ----------------------------------------------------------------------------------------------------------


def minimal_step(num_users: int, num_items: int, tx: optax.GradientTransformation, num_layers: int = 3):
  """LightGCN + BPR + L2 on a node table of any row count >= U + I; users E[:U], items E[U:U + I]."""

  def loss_fn(table, batch, aggregate):
    final = graph_lib.lightgcn_propagate(aggregate, table, num_layers)
    users, items = final[:num_users], final[num_users : num_users + num_items]
    t, w = batch["triples"], batch["weights"]
    bpr = lightgcn.bpr_loss(users[t[:, 0]], items[t[:, 1]], items[t[:, 2]], w)
    reg = lightgcn.l2_regularizer(table[t[:, 0]], table[num_users + t[:, 1]], table[num_users + t[:, 2]], w)
    return bpr + DECAY * reg

  @jax.jit
  def step(table, opt_state, batch, adjacency):
    aggregate = graph_lib.make_aggregate(None, adjacency, "csr")
    loss, grad = jax.value_and_grad(loss_fn)(table, batch, aggregate)
    updates, opt_state = tx.update(grad, opt_state, table)
    return optax.apply_updates(table, updates), opt_state, loss

  return step


def check_padded() -> dict:
  data = toy_data(num_users=37, num_items=50)  # 87 nodes
  graph = graph_lib.bipartite_graph(data)
  n = graph_lib.num_nodes(graph)
  tx = optax.adam(1e-2)
  step = minimal_step(data.num_users, data.num_items, tx)
  e0 = 0.1 * jax.random.normal(jax.random.key(0), (n, 8))
  batches = toy_batches(data)

  table, opt_state, ref_losses = e0, tx.init(e0), []
  adj = graph_lib.csr_adjacency(graph)
  for batch in batches:
    table, opt_state, loss = step(table, opt_state, batch, adj)
    ref_losses.append(float(loss))
  ref_table = np.asarray(table)

  out = {}
  for shape, multiple in (((4, 2), 16),):  # 87 nodes -> 96 rows
    mesh = mesh_of(shape)
    n_pad = parallel.padded_rows(n, mesh, multiple)
    sadj = sharded_lib.sharded_csr_adjacency(graph, mesh, num_rows=n_pad)

    def init(n_pad=n_pad):
      table = parallel.pad_rows(e0, n_pad)
      return {"table": table, "opt": tx.init(table)}

    shardings = parallel.state_shardings(jax.eval_shape(init), mesh, table_rows=n_pad)
    state = jax.jit(init, out_shardings=shardings)()
    table, opt_state, losses = state["table"], state["opt"], []
    for batch in batches:
      table, opt_state, loss = step(table, opt_state, parallel.put(batch, parallel.batch_sharding(mesh)), sadj)
      losses.append(float(loss))
    table = parallel.gather(table)
    out[f"{shape[0]}x{shape[1]}/multiple{multiple}"] = {
        "rows": n_pad, "losses": _max_err(losses, ref_losses), "table": _max_err(table[:n], ref_table),
        "padded_rows_max": float(np.max(np.abs(table[n:]), initial=0.0)),
        "padded_mu_max": float(np.max(np.abs(parallel.gather(opt_state[0].mu)[n:]), initial=0.0))}
  return out


# ----------------------------------------------------------------------------------------------------------
# Checkpoints: written from state sharded on 4x2, restored onto 1x1 and 2x4.
# ----------------------------------------------------------------------------------------------------------


def check_checkpoint(workdir: str) -> dict:
  data = toy_data()
  config = toy_config()
  graph = graph_lib.bipartite_graph(data)
  n = graph_lib.num_nodes(graph)
  written_on = mesh_of((4, 2))
  adjacency = sharded_lib.sharded_csr_adjacency(graph, written_on)
  _, _, init, abstract, shardings = sharded_state(data, config, written_on, n, adjacency)
  state = jax.jit(init, out_shardings=shardings)()
  state["params"]["encoder"]["embedding"][...] = state["params"]["encoder"]["embedding"][...] + 1.0  # not init
  state["epoch"] = np.asarray(3, np.int32)
  saved = parallel.gather(state)
  with Checkpointer(workdir) as ckpt:
    ckpt.save(3, state)
  out = {}
  for shape in ((1, 1), (2, 4)):
    mesh = mesh_of(shape)
    target_abstract = {**abstract, "epoch": jax.ShapeDtypeStruct((), np.int32)}
    target = parallel.with_shardings(target_abstract, parallel.state_shardings(target_abstract, mesh, table_rows=n))
    with Checkpointer(workdir) as ckpt:
      restored = ckpt.restore(target)
    table = restored["params"]["encoder"]["embedding"][...]
    out[f"4x2->{shape[0]}x{shape[1]}"] = {
        "max_err": max(_max_err(a, b) for a, b in zip(jax.tree.leaves(parallel.gather(restored)),
                                                       jax.tree.leaves(saved))),
        "table_spec": str(table.sharding.spec), "table_devices": len(table.sharding.device_set),
        "mesh_matches": table.sharding.mesh.shape == mesh.shape,
        "mu_spec": str(jax.tree.leaves(restored["opt_state"])[1].sharding.spec)}
  return out


CHECKS = {"propagation": check_propagation, "training": check_training, "padded": check_padded,
          "checkpoint": check_checkpoint}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("checks", nargs="+", choices=sorted(CHECKS))
  parser.add_argument("--workdir", default="/tmp/parallel_worker")
  args = parser.parse_args()
  results = {"devices": jax.device_count()}
  for name in args.checks:
    t = time.perf_counter()
    results[name] = CHECKS[name](args.workdir) if name == "checkpoint" else CHECKS[name]()
    results[f"{name}_seconds"] = time.perf_counter() - t
  print(json.dumps(results))


if __name__ == "__main__":
  main()
