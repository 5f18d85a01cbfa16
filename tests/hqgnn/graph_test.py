"""LightGCN propagation: both aggregators against a dense float64 D^-1/2 A D^-1/2 reference and jraph."""

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from hq_jax.data.interactions import InteractionData, load_dataset, to_csr
from hq_jax.hqgnn import graph as graph_lib


def _random_data(num_users=13, num_items=17, nnz=60, seed=0) -> InteractionData:
  rng = np.random.default_rng(seed)
  users = rng.integers(0, num_users, nnz)
  items = rng.integers(0, num_items, nnz)
  train, _ = to_csr(users, items, num_users, num_items)
  test, _ = to_csr(users[:5], items[:5], num_users, num_items)
  return InteractionData("toy", num_users, num_items, train, test, {})


def _dense_normalised(data: InteractionData) -> np.ndarray:
  """A~ = D^-1/2 A D^-1/2 of the bipartite graph, float64, isolated nodes left at zero."""
  n = data.num_users + data.num_items
  a = np.zeros((n, n))
  for u, i in zip(data.train.rows(), data.train.indices):
    a[u, data.num_users + i] = a[data.num_users + i, u] = 1.0
  deg = a.sum(1)
  inv_sqrt = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1e-300)), 0.0)
  return inv_sqrt[:, None] * a * inv_sqrt[None, :]


def _dense_lightgcn(a_norm: np.ndarray, e0: np.ndarray, num_layers: int) -> np.ndarray:
  h, total = e0, e0.copy()
  for _ in range(num_layers):
    h = a_norm @ h
    total += h
  return total / (num_layers + 1)


@pytest.mark.parametrize("aggregation", ["segment", "csr"])
@pytest.mark.parametrize("num_layers", [0, 1, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_propagation_matches_dense_reference(aggregation, num_layers, seed):
  data = _random_data(seed=seed)
  graph = graph_lib.bipartite_graph(data)
  adj = graph_lib.csr_adjacency(graph)
  e0 = np.random.default_rng(seed).normal(size=(data.num_users + data.num_items, 8))
  want = _dense_lightgcn(_dense_normalised(data), e0, num_layers)

  @jax.jit
  def propagate(e, graph, adj):
    return graph_lib.lightgcn_propagate(graph_lib.make_aggregate(graph, adj, aggregation), e, num_layers)

  got = propagate(jnp.asarray(e0, jnp.float32), graph, adj)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_layers", [0, 2])
def test_layers_match_dense_reference(num_layers):
  data = _random_data(seed=2)
  graph = graph_lib.bipartite_graph(data)
  a_norm = _dense_normalised(data)
  e0 = np.random.default_rng(2).normal(size=(data.num_users + data.num_items, 8))
  want = [e0]
  for _ in range(num_layers):
    want.append(a_norm @ want[-1])
  aggregate = graph_lib.make_aggregate(graph, graph_lib.csr_adjacency(graph), "csr")
  got = graph_lib.lightgcn_layers(aggregate, jnp.asarray(e0, jnp.float32), num_layers)
  assert got.shape == (num_layers + 1,) + e0.shape
  np.testing.assert_allclose(np.asarray(got), np.stack(want), rtol=1e-5, atol=1e-6)


def test_edge_weights_are_symmetric_normalisation():
  data = _random_data()
  graph = graph_lib.bipartite_graph(data)
  dense = _dense_normalised(data)
  np.testing.assert_allclose(np.asarray(graph.edges), dense[np.asarray(graph.receivers), np.asarray(graph.senders)],
                             rtol=1e-6)
  assert graph.senders.shape[0] == 2 * data.train.nnz
  assert np.all(np.diff(np.asarray(graph.receivers)) >= 0)


def test_one_layer_equals_jraph_graph_convolution():
  data = load_dataset(None)
  graph = graph_lib.bipartite_graph(data)
  n = graph_lib.num_nodes(graph)
  e = jax.random.normal(jax.random.key(0), (n, 16))
  conv = jraph.GraphConvolution(update_node_fn=lambda x: x, symmetric_normalization=True, add_self_edges=False)
  want = conv(graph._replace(nodes=e)).nodes
  got = graph_lib.segment_aggregate(graph, e)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
  got_csr = jax.jit(graph_lib.csr_aggregate)(graph_lib.csr_adjacency(graph), e)
  np.testing.assert_allclose(np.asarray(got_csr), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_csr_gradient_equals_segment_gradient():
  data = _random_data(seed=3)
  graph = graph_lib.bipartite_graph(data)
  adj = graph_lib.csr_adjacency(graph)
  e0 = jax.random.normal(jax.random.key(1), (data.num_users + data.num_items, 4))
  weights = jax.random.normal(jax.random.key(2), e0.shape)

  def loss(e, kind):
    out = graph_lib.lightgcn_propagate(graph_lib.make_aggregate(graph, adj, kind), e, 3)
    return jnp.sum(jnp.sin(out) * weights)

  g_seg = jax.grad(loss)(e0, "segment")
  g_csr = jax.jit(jax.grad(loss), static_argnums=1)(e0, "csr")
  np.testing.assert_allclose(np.asarray(g_csr), np.asarray(g_seg), rtol=1e-5, atol=1e-6)


def test_unknown_aggregation_raises():
  data = _random_data()
  with pytest.raises(ValueError, match="unknown aggregation"):
    graph_lib.make_aggregate(graph_lib.bipartite_graph(data), None, "dense")
