"""Training on a device mesh: the mesh, shardings of batches and state, LightGCN propagation split by node rows.

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

LightGCN propagation split by node rows. `sharded_csr_adjacency(graph, mesh)` cuts A~ (host side, NumPy)
into B equal blocks of node rows, B = the product of the mesh axes in `axes` (default all: ('model', 'data'),
ordered so that each propagation block is a slice of the device's 'model' block of the table: no data moves
to enter it). Block b holds the CSR rows of the receivers in its rows (senders anywhere). `sharded_aggregate`
computes A~ h under `jax.shard_map`: every device gathers the sender rows it needs and runs the same
sparse-dense kernel as `graph.csr_aggregate` (BCSR, on CPU one FFI call) on its block. Two exchanges:

* 'all_gather' (the default): all-gather h (N_pad x d on each device), then the (R x N_pad) block product.
* 'needed': block q sends block p only the rows of q that p's edges read (`all_to_all` of fixed-size
  buffers, padded to the largest (q, p) count C); p's block product reads the (B C x d) buffer. It moves
  less only when every pair of blocks shares few rows (measured below: not on random node ids).

The backward uses A~ = A~^T: d(A~ h)/dh^T g = A~ g, again a row-block product after an all-gather of g,
so `sharded_aggregate` is a `custom_vjp` whose backward is itself (as `csr_aggregate`'s), instead of
differentiating through the shard_map (which would form B^T g on every device, a full (N_pad, d) scatter,
and reduce-scatter it).

Which is better, measured (experiments/bench_scale.py --propagation, results/scale.md): forward + backward of
K = 3 layers at d = 64 on 8 simulated CPU devices (1 x 8 mesh), in CPU seconds, i.e. total work, since the 8
devices share 2 cores:

  graph                          one device  XLA's choice   sharded 'all_gather'   sharded 'needed'
  Gowalla (1.62M directed edges)    0.85 s   6.49 (7.6x)       1.33 (1.57x)          2.01 (2.36x)
  power law, 2M directed edges      0.90 s   8.81 (9.8x)       1.66 (1.84x)          2.46 (2.74x)

XLA's own choice for `csr_aggregate` under jit with h row-sharded is to replicate: the BCSR kernel is a custom
call that the SPMD partitioner cannot split, so every device all-gathers h and computes the whole product
(8 devices do 8x the work; each holds all of A~). `sharded_aggregate` does each edge once; its overhead over
one device is the all-gather (every device writes the full N_pad x d matrix per product) and, for wall time
on real devices, the imbalance of edges between blocks (Gowalla: the largest block has 1.62x the mean, user
rows being denser than item rows). 'needed' saves nothing on these graphs: a block of 8,855 rows reads 45% of
all rows on average, but some (q, p) pair needs all of q's rows, so the padded buffer C equals the block
(CPU XLA has no ragged all-to-all) and the extra local gather and all_to_all cost more. 'all_gather' is the
default; 'needed' would pay off on a node order with locality (a graph partition), not on random ids.

Checkpoints. `hq_jax.checkpoint.Checkpointer.restore(abstract_state)` keeps the sharding of a
`jax.ShapeDtypeStruct` leaf, so `with_shardings(jax.eval_shape(init), state_shardings(...))` restores a
checkpoint written on any mesh onto the current one (tested: 4x2 -> 1x1 and 4x2 -> 2x4).

How a trainer uses it (all names from this module; `config.mesh = {data: 1, model: 1, row_multiple: 0}`)::

    mesh = mesh_from_config(config.mesh.data, config.mesh.model)
    check_batch_size(config.train.batch_size, mesh)
    n_pad = padded_rows(U + I, mesh, config.mesh.row_multiple)      # E0 holds n_pad rows (pad_rows)
    adjacency = sharded_csr_adjacency(graph, mesh, num_rows=n_pad)  # instead of graph.csr_adjacency
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

`graph.make_aggregate(graph, adjacency, 'csr')` dispatches to `adjacency.aggregate` for a `ShardedCSR`, so
the model's code does not change; the GraphsTuple is not needed by the 'csr' path (pass None so that its edge
arrays are not copied to every device). Without `out_shardings` XLA picks the step's output layouts (e.g. the
table split over 'data' on an 8 x 1 mesh) and the next call recompiles for them.
"""

import dataclasses
import functools
import math
from collections.abc import Iterable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import jraph
import numpy as np
from jax.experimental import sparse
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from hq_jax.errors import UserError
from hq_jax.hqgnn import graph as graph_lib

DATA = "data"
MODEL = "model"
AXES = (DATA, MODEL)
Exchange = Literal["all_gather", "needed"]
EXCHANGES = ("all_gather", "needed")


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
  """How many row blocks `sharded_csr_adjacency` cuts the node rows into: the product of `axes`' sizes."""
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


# ----------------------------------------------------------------------------------------------------------
# A~ h with the node rows split over the mesh.
# ----------------------------------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ShardedCSR:
  """A~ cut into B blocks of R = num_rows / B consecutive node rows, one per device of the `axes` of `mesh`.

  Block b's CSR rows are the receivers b R .. (b + 1) R - 1. Its column space is the matrix it multiplies:
  all N_pad rows of h ('all_gather'), or the B C rows that the other blocks send it ('needed': column
  q C + j is the j-th row block q sends). Edge arrays are padded to the largest block with zero weights after
  `indptr[-1]` (never read by the kernel).
  """

  data: jax.Array  # (B, E_max) float32 edge weights, CSR order within the block
  indices: jax.Array  # (B, E_max) int32 columns, sorted and unique within each row
  indptr: jax.Array  # (B, R + 1) int32
  send: jax.Array | None  # 'needed': (B, B, C) int32, send[q, p] = local rows of block q that block p reads
  num_rows: int = dataclasses.field(metadata=dict(static=True))  # N_pad (>= U + I)
  mesh: jax.sharding.Mesh = dataclasses.field(metadata=dict(static=True))
  axes: tuple[str, ...] = dataclasses.field(metadata=dict(static=True))
  exchange: str = dataclasses.field(metadata=dict(static=True))

  @property
  def num_blocks(self) -> int:
    return self.indptr.shape[0]

  @property
  def block_rows(self) -> int:
    return self.num_rows // self.num_blocks

  @property
  def node_sharding(self) -> NamedSharding:
    """How the rows of h (and of A~ h) are split: P(axes)."""
    return NamedSharding(self.mesh, P(self.axes))

  def aggregate(self, h: jax.Array) -> jax.Array:
    """A~ h for h of shape (num_rows, d): what `graph.make_aggregate` returns for this adjacency."""
    return sharded_aggregate(self, h)


def sharded_csr_adjacency(graph: jraph.GraphsTuple, mesh: jax.sharding.Mesh, *, num_rows: int | None = None,
                          axes: tuple[str, ...] = (MODEL, DATA), exchange: Exchange = "all_gather") -> ShardedCSR:
  """Builds the per-device blocks of the (receiver-sorted) graph on the host and places them on `mesh`.

  Args:
    graph: from `graph.bipartite_graph` (edges sorted by receiver).
    mesh: the mesh the step runs on.
    num_rows: rows of the node matrices it multiplies (padded, `padded_rows`); default the graph's nodes.
    axes: mesh axes the node rows are split over (blocks in row-major order of these axes).
    exchange: 'all_gather' or 'needed' (see the module docstring).
  """
  if exchange not in EXCHANGES:
    raise ValueError(f"unknown exchange {exchange!r} (expected one of {EXCHANGES})")
  n = graph_lib.num_nodes(graph)
  num_rows = n if num_rows is None else int(num_rows)
  blocks = propagation_blocks(mesh, axes)
  if num_rows < n or num_rows % blocks:
    raise ValueError(f"num_rows={num_rows} must be >= the graph's {n} nodes and a multiple of the {blocks} row "
                     "blocks (padded_rows)")
  arrays = block_csr_arrays(np.asarray(graph.receivers), np.asarray(graph.senders), np.asarray(graph.edges),
                            num_rows, blocks, exchange)
  spec = NamedSharding(mesh, P(axes))
  placed = {k: (None if v is None else put(v, spec)) for k, v in arrays.items()}
  return ShardedCSR(**placed, num_rows=num_rows, mesh=mesh, axes=tuple(axes), exchange=exchange)


def block_csr_arrays(receivers: np.ndarray, senders: np.ndarray, weights: np.ndarray, num_rows: int,
                     blocks: int, exchange: Exchange = "all_gather") -> dict:
  """The host arrays of `ShardedCSR` (data, indices, indptr, send) for receiver-sorted edges."""
  if np.any(np.diff(receivers) < 0):
    raise ValueError("block_csr_arrays needs edges sorted by receiver (as bipartite_graph builds them)")
  rows = num_rows // blocks
  starts = np.searchsorted(receivers, np.arange(blocks + 1, dtype=np.int64) * rows)
  counts = np.diff(starts)
  e_max = max(int(counts.max()), 1)
  data = np.zeros((blocks, e_max), np.float32)
  indices = np.zeros((blocks, e_max), np.int32)
  indptr = np.zeros((blocks, rows + 1), np.int32)
  local_cols = []
  for b in range(blocks):
    s, e = starts[b], starts[b + 1]
    data[b, : e - s] = weights[s:e]
    np.cumsum(np.bincount(receivers[s:e] - b * rows, minlength=rows), out=indptr[b, 1:])
    local_cols.append(senders[s:e].astype(np.int64))
  send = None
  if exchange == "all_gather":
    for b, cols in enumerate(local_cols):
      indices[b, : len(cols)] = cols
  else:
    # uniq[p]: the sorted distinct senders block p reads; grouped by owner block q = sender // rows.
    uniq = [np.unique(cols) for cols in local_cols]
    per_pair = np.stack([np.bincount(u // rows, minlength=blocks) for u in uniq])  # [p, q]
    c = max(int(per_pair.max()), 1)
    send = np.zeros((blocks, blocks, c), np.int32)
    for p, (u, cols) in enumerate(zip(uniq, local_cols)):
      owner = u // rows
      first = np.searchsorted(owner, np.arange(blocks))  # first position of each owner in u
      pos = np.arange(len(u)) - first[owner]
      for q in range(blocks):
        send[q, p, : per_pair[p, q]] = u[owner == q] - q * rows
      column = owner * c + pos  # where u's rows land in p's received (B C, d) buffer
      indices[p, : len(cols)] = column[np.searchsorted(u, cols)]
  return {"data": data, "indices": indices, "indptr": indptr, "send": send}


def _block_product(adj: ShardedCSR, h: jax.Array) -> jax.Array:
  """A~ h by row blocks under shard_map (no custom gradient; `sharded_aggregate` adds it)."""
  rows, axes = adj.block_rows, adj.axes

  def local(data, indices, indptr, send, h_block):
    if adj.exchange == "all_gather":
      source = jax.lax.all_gather(h_block, axes, tiled=True)  # (N_pad, d)
    else:
      outgoing = h_block[send[0]]  # (B, C, d): row q = what block q reads from this block
      source = jax.lax.all_to_all(outgoing, axes, 0, 0, tiled=True).reshape(-1, h_block.shape[-1])
    matrix = sparse.BCSR((data[0], indices[0], indptr[0]), shape=(rows, source.shape[0]), indices_sorted=True,
                         unique_indices=True)
    return matrix @ source

  block = P(axes)
  send_spec = None if adj.send is None else block
  return jax.shard_map(local, mesh=adj.mesh, in_specs=(block, block, block, send_spec, block),
                       out_specs=block)(adj.data, adj.indices, adj.indptr, adj.send, h)


@jax.custom_vjp
def sharded_aggregate(adj: ShardedCSR, h: jax.Array) -> jax.Array:
  """A~ h with h (num_rows, d) split by node rows over `adj.axes`; equal to `graph.csr_aggregate` (padded rows
  give 0). Differentiable in `h` only."""
  return _block_product(adj, h)


def _sharded_aggregate_fwd(adj, h):
  """Residual: the blocks, since the backward product needs A~^T = A~."""
  return _block_product(adj, h), adj


def _sharded_aggregate_bwd(adj, g):
  """A~^T g = A~ g (A~ symmetric): the same row-block product, after the same exchange of g."""
  return jax.tree.map(graph_lib._zero_cotangent, adj), _block_product(adj, g)


sharded_aggregate.defvjp(_sharded_aggregate_fwd, _sharded_aggregate_bwd)


def exchanged_rows(adj: ShardedCSR) -> int:
  """Rows of h each device receives per product: N_pad ('all_gather') or B C ('needed')."""
  return adj.num_rows if adj.send is None else adj.num_blocks * adj.send.shape[-1]


def describe(adj: ShardedCSR) -> dict[str, Any]:
  """Sizes of the blocks (for logs and benchmarks): edges per block (max / mean), rows exchanged."""
  nnz = gather(adj.indptr)[:, -1]
  return {"blocks": adj.num_blocks, "block_rows": adj.block_rows, "edges_max": int(nnz.max()),
          "edges_mean": float(nnz.mean()), "exchanged_rows": exchanged_rows(adj), "exchange": adj.exchange}


@functools.partial(jax.jit, static_argnames=("num_layers",))
def sharded_propagate(adj: ShardedCSR, e0: jax.Array, num_layers: int) -> jax.Array:
  """LightGCN's final embeddings mean_k E(k) with the sharded aggregation (a jitted convenience)."""
  return graph_lib.lightgcn_propagate(adj.aggregate, e0, num_layers)
