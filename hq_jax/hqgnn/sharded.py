"""LightGCN propagation with A~ split by node rows over a device mesh (the mesh of `hq_jax.parallel`).

`sharded_csr_adjacency(graph, mesh)` cuts A~ (host side, NumPy) into B equal blocks of node rows, B = the
product of the mesh axes in `axes` (default all: ('model', 'data'), ordered so that each propagation block is
a slice of the device's 'model' block of the table: no data moves to enter it). Block b holds the CSR rows
of the receivers in its rows (senders anywhere). `sharded_aggregate` computes A~ h under `jax.shard_map`:
every device gathers the sender rows it needs and runs the same sparse-dense kernel as `graph.csr_aggregate`
(BCSR, on CPU one FFI call) on its block. Two exchanges:

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

How a trainer uses it: `hq_jax.parallel`'s docstring (the mesh, the padded row count `padded_rows`, then
`sharded_csr_adjacency(graph, mesh, num_rows=n_pad)` instead of `graph.csr_adjacency`).
"""

import dataclasses
import functools
from typing import Any, Literal

import jax
import jraph
import numpy as np
from jax.experimental import sparse
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from hq_jax.hqgnn import graph as graph_lib
from hq_jax.parallel import DATA, MODEL, gather, propagation_blocks, put

Exchange = Literal["all_gather", "needed"]
EXCHANGES = ("all_gather", "needed")


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
