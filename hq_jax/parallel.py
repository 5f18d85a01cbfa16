"""Training on a device mesh: the mesh, shardings of batches and state, the padding rule for row-split tables.

Used by both model families (HQ-GNN and the CTR models) and generic: nothing here knows a model. LightGCN's
propagation with A~ split by node rows over this mesh lives with LightGCN, in `hq_jax.hqgnn.sharded`.

Mesh. `mesh_from_config(data, model)` has the axes ('data', 'model'), both `AxisType.Auto`: jit propagates
shardings itself (GSPMD), so the trainers' single-device code (row gathers of a batch from a row-sharded
table, reductions, optax) runs unchanged on a mesh; only the arrays entering the step carry shardings.
`data * model` must equal the number of devices (`jax.devices()`, all processes' devices together).

What is sharded how:
* batches: leading axis over 'data' (`batch_sharding`); the global batch must divide by `data`. Every process
  passes the same global host batch (the trainers draw batches from (seed, epoch), so they do) and `put` keeps
  the slices its devices hold.
* embedding tables / node matrices: rows over 'model' (`row_sharding`), replicated over 'data'.
* everything else (scalars, quantizer ranges, small arrays): replicated.
* state: `state_shardings(abstract_state, mesh, table_rows=N)` gives the sharding of every leaf of a pytree by
  its shape: a leaf whose leading dimension is a table's row count is row-sharded, others replicated. Adam's
  mu and nu have their parameter's shape, so they follow it; Adam's count is replicated. With it the state is
  created already sharded::

      mesh = mesh_from_config(data=4, model=2)
      tx = optax.adam(1e-3)
      def init():
        table = jax.random.normal(jax.random.key(0), (1024, 64))
        return {"table": table, "opt": tx.init(table), "step": jnp.zeros((), jnp.int32)}
      shardings = state_shardings(jax.eval_shape(init), mesh, table_rows=1024)
      state = jax.jit(init, out_shardings=shardings)()   # table, mu, nu: P('model'); count, step: P()

  The same shardings restore a checkpoint onto this mesh, whatever mesh wrote it (`with_shardings`).

Rows that do not divide (the padding rule). A sharded dimension must divide by its number of shards (JAX
refuses uneven shardings). The node table E0 (U + I rows) is therefore padded at the end to
`padded_rows(U + I, mesh, multiple)` rows: zero rows U + I .. N_pad - 1 that no edge touches. They stay out of
everything: no BPR triple indexes them (users < U, items < I, node id U + i), the L2 term only sees the
batch's rows, and A~ has empty rows and columns for them, so their gradient is exactly 0 and Adam leaves
them at 0 (update 0 / (sqrt(0) + eps) = 0) -- parameter norms are unchanged. Final embeddings, quantizer
ranges, metrics and export.npz must take users = E[:U] and items = E[U:U + I] (not E[U:]). `pad_rows` of a
(U + I, d) initialisation keeps its first rows, so a padded run starts (and trains) exactly like an unpadded
one. The padded count is part of the state's shapes: a checkpoint restores onto any mesh whose row blocks
divide it. Pick `multiple` once per run (e.g. 64) to move a run between mesh shapes; multiple = 0 pads to
the number of row blocks only (data x model with the default axes; on one device: no padding, the unsharded
layout exactly).

Checkpoints. `hq_jax.checkpoint.Checkpointer.restore(abstract_state)` keeps the sharding of a
`jax.ShapeDtypeStruct` leaf, so `with_shardings(jax.eval_shape(init), state_shardings(...))` restores a
checkpoint written on any mesh onto the current one (tested: 4x2 -> 1x1 and 4x2 -> 2x4).

How a trainer uses it (names from this module, and `hq_jax.hqgnn.sharded` for LightGCN's adjacency;
`config.mesh = {data: 1, model: 1, row_multiple: 0}`)::

    mesh = mesh_from_config(config.mesh.data, config.mesh.model)
    check_batch_size(config.train.batch_size, mesh)
    n_pad = padded_rows(U + I, mesh, config.mesh.row_multiple)      # E0 holds n_pad rows (pad_rows)
    adjacency = sharded.sharded_csr_adjacency(graph, mesh, num_rows=n_pad)  # hqgnn.sharded, for LightGCN
    abstract = jax.eval_shape(init)                                 # init() -> {params, opt_state, ...}
    shardings = state_shardings(abstract, mesh, table_rows=n_pad)
    state = jax.jit(init, out_shardings=shardings)()               # created sharded
    restored = run.restore(with_shardings(abstract, shardings))     # or resume, onto this mesh
    train_step = jax.jit(make_train_step(...), donate_argnums=(0, 1),  # pin the state's layout
                         out_shardings=(shardings["params"], shardings["opt_state"], replicated(mesh)))
    for i in range(steps):
      batch = put(step_batch(i), batch_sharding(mesh))
      params, opt_state, metrics = train_step(params, opt_state, deltas, batch, None, adjacency)
    users, items = jax.jit(represent, out_shardings=replicated(mesh))(params, None, adjacency)

`graph.make_aggregate(graph, adjacency, 'csr')` dispatches to `adjacency.aggregate` for a `sharded.ShardedCSR`, so
the model's code does not change; the GraphsTuple is not needed by the 'csr' path (pass None so that its edge
arrays are not copied to every device). Without `out_shardings` XLA picks the step's output layouts (e.g. the
table split over 'data' on an 8 x 1 mesh) and the next call recompiles for them.
"""

import math
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from hq_jax.errors import UserError

DATA = "data"
MODEL = "model"
AXES = (DATA, MODEL)


# ----------------------------------------------------------------------------------------------------------
# Mesh and shardings.
# ----------------------------------------------------------------------------------------------------------


def mesh_from_config(data: int = 1, model: int = 1, *, devices=None) -> jax.sharding.Mesh:
  """The ('data', 'model') mesh of `data * model` devices (default: all of `jax.devices()`, every process's).

  Raises:
    UserError: a size below 1, or data * model != the number of devices (naming config.mesh.data / model).
  """
  devices = list(jax.devices() if devices is None else devices)
  if int(data) < 1 or int(model) < 1:
    raise UserError(f"config.mesh.data={data} and config.mesh.model={model} must both be >= 1")
  if int(data) * int(model) != len(devices):
    raise UserError(f"config.mesh.data={data} x config.mesh.model={model} = {int(data) * int(model)} devices, "
                    f"but there are {len(devices)} ({devices[0].platform}); their product must equal it")
  return jax.make_mesh((int(data), int(model)), AXES, axis_types=(AxisType.Auto, AxisType.Auto),
                       devices=devices)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data', the rest replicated."""
  return NamedSharding(mesh, P(DATA))


def row_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Rows (leading axis) of a table / node matrix split over 'model', replicated over 'data'."""
  return NamedSharding(mesh, P(MODEL))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  """The whole array on every device (scalars, small parameters, evaluation outputs)."""
  return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> None:
  """Raises a `UserError` unless the global batch divides over 'data'."""
  data = mesh.shape[DATA]
  if batch_size % data:
    raise UserError(f"config.train.batch_size={batch_size} must be a multiple of config.mesh.data={data} "
                    "(the batch is split over the 'data' axis)")


def propagation_blocks(mesh: jax.sharding.Mesh, axes: tuple[str, ...] = (MODEL, DATA)) -> int:
  """How many row blocks a row-split node matrix has (those `hqgnn.sharded.sharded_csr_adjacency` cuts A~
  into): the product of `axes`' sizes."""
  return math.prod(mesh.shape[a] for a in axes)


def padded_rows(num_rows: int, mesh: jax.sharding.Mesh, multiple: int = 0,
                axes: tuple[str, ...] = (MODEL, DATA)) -> int:
  """`num_rows` rounded up to a multiple of `multiple` (0: of the number of propagation row blocks).

  Raises:
    UserError: `multiple` is not a multiple of the row blocks (naming config.mesh.row_multiple).
  """
  blocks = propagation_blocks(mesh, axes)
  multiple = int(multiple) or blocks
  if multiple < 1 or multiple % blocks:
    raise UserError(f"config.mesh.row_multiple={multiple} must be a multiple of the {blocks} row blocks of the "
                    f"mesh {dict(mesh.shape)} (or 0: pad to {blocks})")
  return -(-int(num_rows) // multiple) * multiple


def pad_rows(x, num_rows: int):
  """`x` with zero rows appended to `num_rows` rows (the padding rule; the first rows are kept)."""
  pad = num_rows - x.shape[0]
  if pad < 0:
    raise ValueError(f"cannot pad {x.shape[0]} rows to {num_rows}")
  return jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1)) if pad else x


def state_shardings(abstract_state, mesh: jax.sharding.Mesh, *, table_rows: int | Iterable[int]):
  """The sharding of every leaf of `abstract_state` (arrays or `jax.ShapeDtypeStruct`s, e.g. from
  `jax.eval_shape`): row-sharded over 'model' when its leading dimension is one of `table_rows` (tables and
  everything shaped like them: Adam's moments, gradients), else replicated. Use it as `out_shardings` of the
  state's init, `in_shardings` of steps, and (via `with_shardings`) as the target of a checkpoint restore.

  Raises:
    ValueError: a table's row count does not divide by the 'model' size (pad it: `padded_rows`).
  """
  rows = {int(table_rows)} if isinstance(table_rows, (int, np.integer)) else {int(r) for r in table_rows}
  model = mesh.shape[MODEL]
  for r in rows:
    if r % model:
      raise ValueError(f"a table of {r} rows does not divide over 'model' = {model}: pad it (padded_rows)")
  rowwise, whole = row_sharding(mesh), replicated(mesh)
  return jax.tree.map(lambda x: rowwise if len(np.shape(x)) >= 1 and np.shape(x)[0] in rows else whole,
                      abstract_state)


def with_shardings(abstract_state, shardings):
  """`jax.ShapeDtypeStruct`s of `abstract_state` carrying `shardings` (a matching pytree): the target of
  `Checkpointer.restore`, which then places every restored array as given, whatever mesh wrote it."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), abstract_state,
                      shardings)


def put(tree, shardings):
  """Places a pytree of host arrays with `shardings` (one sharding or a matching pytree). Works with several
  processes: each process passes the same global values and keeps the slices its devices hold."""
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, tree)

  def one(x, sharding):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(one, tree, shardings)


def gather(tree):
  """Host NumPy copies of the global values of a pytree of (possibly sharded, possibly multi-process) arrays.

  Host arrays and arrays this process holds whole are taken as they are (they already are global values:
  gathering them across processes would stack every process's copy).
  """
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  from jax.experimental import multihost_utils

  def one(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(one, tree)
