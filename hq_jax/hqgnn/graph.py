"""The user-item bipartite graph as a `jraph.GraphsTuple`, and LightGCN propagation over it.

Nodes are the U users followed by the I items (node id of item i is U + i). Every training pair (u, i) gives
two directed edges, u -> U+i and U+i -> u, each with the symmetric normalisation weight
1 / sqrt(deg(s) deg(r)) stored in `graph.edges` (spec, section Encoder: A~ = D^-1/2 A D^-1/2). Edges are
sorted by receiver, so a segment sum over receivers sees sorted ids, and the same arrays read as a CSR matrix
(rows = receivers) give a fast sparse-dense product.

Propagation is `E(k+1) = A~ E(k)`, final `E = mean_k E(k)` for k = 0..K. Two aggregators compute A~ h:
* `segment_aggregate`: Jraph message passing, messages `w_e * h[sender]` summed into receivers with
  `jraph.segment_sum`. This is the definition, and the reference the other path is tested against.
* `csr_aggregate`: the same graph as a CSR matrix, multiplied by the kernel `hq_jax.backend` chooses for the
  backend (`CSRAdjacency.kernel`): on CPU a BCSR matrix (`jax.experimental.sparse`), which lowers to one
  sparse-dense kernel instead of XLA's slow row gather + scatter (about 10x faster on Gowalla on a 2-core
  CPU, see results/foundation.md); on GPU/TPU a sorted segment sum over the CSR arrays (BCSR has no fast
  default lowering there). Its gradient uses A~ = A~^T (the graph is undirected).
"""

import dataclasses
from typing import Callable, Literal

import jax
import jax.numpy as jnp
import jraph
import numpy as np
from jax.experimental import sparse

from hq_jax import backend
from hq_jax.data.interactions import InteractionData

Aggregation = Literal["segment", "csr"]


def bipartite_graph(data: InteractionData) -> jraph.GraphsTuple:
  """Builds the normalised bipartite graph of the training interactions (no node features)."""
  users = data.train.rows().astype(np.int64)
  items = data.train.indices.astype(np.int64) + data.num_users
  n = data.num_users + data.num_items
  senders = np.concatenate([users, items])
  receivers = np.concatenate([items, users])
  order = np.lexsort((senders, receivers))  # by receiver, then sender: CSR order
  senders, receivers = senders[order], receivers[order]
  degree = np.bincount(receivers, minlength=n).astype(np.float64)
  weights = 1.0 / np.sqrt(degree[senders] * degree[receivers])
  return jraph.GraphsTuple(
      nodes=None,
      edges=jnp.asarray(weights, jnp.float32),
      senders=jnp.asarray(senders, jnp.int32),
      receivers=jnp.asarray(receivers, jnp.int32),
      n_node=jnp.asarray([n], jnp.int32),
      n_edge=jnp.asarray([len(senders)], jnp.int32),
      globals=None,
  )


def num_nodes(graph: jraph.GraphsTuple) -> int:
  return int(graph.n_node.sum())


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CSRAdjacency:
  """A~ in CSR form: row r holds the weights of the edges received by node r."""

  data: jax.Array  # (E,) float32 edge weights, in receiver order
  indices: jax.Array  # (E,) int32 senders
  indptr: jax.Array  # (N + 1,) int32
  num_nodes: int = dataclasses.field(metadata=dict(static=True))
  # 'bcsr' or 'segment' (`hq_jax.backend.Tunings.sparse_kernel`); '' = the current backend's at trace time.
  kernel: str = dataclasses.field(default="", metadata=dict(static=True))


def csr_adjacency(graph: jraph.GraphsTuple) -> CSRAdjacency:
  """Reads the (receiver-sorted) graph as a CSR matrix; no copy of the edge arrays."""
  n = num_nodes(graph)
  receivers = np.asarray(graph.receivers)
  if np.any(np.diff(receivers) < 0):
    raise ValueError("csr_adjacency needs edges sorted by receiver (as bipartite_graph builds them)")
  indptr = np.zeros(n + 1, np.int32)
  np.cumsum(np.bincount(receivers, minlength=n), out=indptr[1:])
  return CSRAdjacency(data=graph.edges, indices=graph.senders, indptr=jnp.asarray(indptr), num_nodes=n,
                      kernel=backend.tunings().sparse_kernel)


def segment_aggregate(graph: jraph.GraphsTuple, h: jax.Array) -> jax.Array:
  """A~ h by message passing: sum over edges s -> r of w_e * h[s], collected at r."""
  messages = graph.edges[:, None] * h[graph.senders]
  return jraph.segment_sum(messages, graph.receivers, num_segments=h.shape[0], indices_are_sorted=True)


def _csr_matmul(adj: CSRAdjacency, h: jax.Array) -> jax.Array:
  if (adj.kernel or backend.tunings().sparse_kernel) == "segment":
    rows = jnp.repeat(jnp.arange(adj.num_nodes, dtype=jnp.int32), jnp.diff(adj.indptr),
                      total_repeat_length=adj.data.shape[0])
    return jax.ops.segment_sum(adj.data[:, None] * h[adj.indices], rows, num_segments=adj.num_nodes,
                               indices_are_sorted=True)
  matrix = sparse.BCSR((adj.data, adj.indices, adj.indptr), shape=(adj.num_nodes, adj.num_nodes),
                       indices_sorted=True, unique_indices=True)
  return matrix @ h


@jax.custom_vjp
def csr_aggregate(adj: CSRAdjacency, h: jax.Array) -> jax.Array:
  """A~ h as one sparse-dense product. Differentiable in `h` only (A~ is data, not a parameter)."""
  return _csr_matmul(adj, h)


def _csr_aggregate_fwd(adj, h):
  """Residual: the adjacency itself, since the backward product needs A~^T = A~."""
  return _csr_matmul(adj, h), adj


def _csr_aggregate_bwd(adj, g):
  """d(A~ h)/dh^T g = A~^T g = A~ g, because A~ is symmetric (undirected graph, symmetric weights)."""
  zero_adj = jax.tree.map(_zero_cotangent, adj)
  return zero_adj, _csr_matmul(adj, g)


def _zero_cotangent(x):
  if jnp.issubdtype(x.dtype, jnp.integer):
    return np.zeros(x.shape, dtype=jax.dtypes.float0)
  return jnp.zeros_like(x)


csr_aggregate.defvjp(_csr_aggregate_fwd, _csr_aggregate_bwd)


def lightgcn_propagate(aggregate: Callable[[jax.Array], jax.Array], e0: jax.Array,
                       num_layers: int) -> jax.Array:
  """Mean of E(0..K) with E(k+1) = aggregate(E(k)): LightGCN's final embeddings."""
  h, total = e0, e0
  for _ in range(num_layers):
    h = aggregate(h)
    total = total + h
  return total / (num_layers + 1)


def lightgcn_layers(aggregate: Callable[[jax.Array], jax.Array], e0: jax.Array, num_layers: int) -> jax.Array:
  """(K + 1, N, d) stack of E(0), ..., E(K) with E(k+1) = aggregate(E(k)): what layer-wise codes quantize."""
  layers = [e0]
  for _ in range(num_layers):
    layers.append(aggregate(layers[-1]))
  return jnp.stack(layers)


def make_aggregate(graph: jraph.GraphsTuple, adj: CSRAdjacency | None,
                   kind: Aggregation) -> Callable[[jax.Array], jax.Array]:
  """The aggregation function for `kind`, closed over the graph arrays (pass them through jit as args).

  For 'csr', `adj` is a `CSRAdjacency`, or any adjacency with an `aggregate(h)` method (the sharded
  `hq_jax.hqgnn.sharded.ShardedCSR`, with which `graph` is not read and may be None).
  """
  if kind == "segment":
    return lambda h: segment_aggregate(graph, h)
  if kind == "csr":
    if adj is None:
      raise ValueError("csr aggregation needs the CSRAdjacency of the graph")
    if not isinstance(adj, CSRAdjacency):  # e.g. `sharded.ShardedCSR`: A~ split by rows over a mesh
      return adj.aggregate
    return lambda h: csr_aggregate(adj, h)
  raise ValueError(f"unknown aggregation {kind!r} (expected 'segment' or 'csr')")
