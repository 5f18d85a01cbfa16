"""The HQ-GNN model module: representations, quantized codes and losses against plain NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hq_jax.data.interactions import load_dataset
from hq_jax.hqgnn import graph as graph_lib
from hq_jax.hqgnn import model as model_lib
from hq_jax.quant import module as quant_module
from hq_jax.quant import quantizer


@pytest.fixture(scope="module")
def problem():
  data = load_dataset("lastfm")
  graph = graph_lib.bipartite_graph(data)
  return data, graph, graph_lib.csr_adjacency(graph)


def _model(data, graph, adj, **kw):
  config = model_lib.ModelConfig(num_users=data.num_users, num_items=data.num_items, dim=8, num_layers=2, **kw)
  model = model_lib.HQGNN(config, rngs=nnx.Rngs(params=0))
  model.init_quantizer(graph, adj)
  return model


def _dense_layers(graph, e0, num_layers):
  n = e0.shape[0]
  a = np.zeros((n, n))
  np.add.at(a, (np.asarray(graph.receivers), np.asarray(graph.senders)), np.asarray(graph.edges, np.float64))
  layers = [np.asarray(e0, np.float64)]
  for _ in range(num_layers):
    layers.append(a @ layers[-1])
  return layers


def test_flat_rows_inner_product_is_the_weighted_layer_score():
  rng = np.random.default_rng(0)
  u, i = rng.normal(size=(3, 5, 4)), rng.normal(size=(3, 5, 4))
  w = (0.5, 0.25, 2.0)
  got = np.sum(np.asarray(model_lib.flat_rows(jnp.asarray(u), w)) * np.asarray(model_lib.flat_rows(jnp.asarray(i), w)), 1)
  want = sum(w[k] * np.sum(u[k] * i[k], 1) for k in range(3))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  ids = np.array([[4, 0], [1, 1]])
  np.testing.assert_allclose(model_lib.take_rows(jnp.asarray(u), jnp.asarray(ids), w),
                             np.asarray(model_lib.flat_rows(jnp.asarray(u), w))[ids], rtol=1e-6)


def test_full_precision_and_layerwise_embeddings_match_a_dense_reference(problem):
  data, graph, adj = problem
  fp = _model(data, graph, adj)
  layers = _dense_layers(graph, fp.encoder.embedding[...], 2)
  users, items = fp(graph, adj)
  np.testing.assert_allclose(np.concatenate([users, items]), np.mean(layers, axis=0), atol=1e-5)
  lw = _model(data, graph, adj, quant=quant_module.QuantizerConfig(bits=1, one_bit_scale="row"), codes="layerwise")
  users, items = lw.embeddings(graph, adj)
  assert users.shape == (3, data.num_users, 8) and items.shape == (3, data.num_items, 8)
  np.testing.assert_allclose(np.concatenate([users, items], axis=1), np.stack(layers), atol=1e-5)


@pytest.mark.parametrize("bits,scale,codes,weights", [(1, "matrix", "final", "mean"), (1, "row", "final", "mean"),
                                                      (1, "row", "layerwise", "mean"),
                                                      (1, "row", "layerwise", "bigear"),
                                                      (2, "matrix", "layerwise", "mean"), (4, "matrix", "final", "mean")])
def test_quantize_codes_dequantize_to_what_bpr_scores(problem, bits, scale, codes, weights):
  data, graph, adj = problem
  model = _model(data, graph, adj, quant=quant_module.QuantizerConfig(bits=bits, one_bit_scale=scale),
                 codes=codes, layer_weights=weights)
  xu, xi = model(graph, adj)
  qu, qi = model.quantize(graph, adj)
  w = model.config.weights
  kind = quantizer.LayeredQuantized if codes == "layerwise" else quantizer.QuantizedMatrix
  assert isinstance(qu, kind) and isinstance(qi, kind)
  ids = jnp.arange(50)
  want = np.asarray(model_lib.take_rows(xu, ids, w)) @ np.asarray(model_lib.take_rows(xi, ids, w)).T
  got = np.asarray(qu.dequantize())[:50] @ np.asarray(qi.dequantize())[:50].T
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  if codes == "layerwise":  # one scale per layer: the layers are quantized independently
    assert len(qu.layers) == 3 and qu.weights == quantizer.layer_weights(3, weights)


@pytest.mark.parametrize("scale_bits", [32, 8])
def test_dropped_user_scales_keep_every_users_ranking(problem, scale_bits):
  data, graph, adj = problem
  quant = quant_module.QuantizerConfig(bits=1, one_bit_scale="row", scale_bits=scale_bits)
  kept = _model(data, graph, adj, quant=quant)
  dropped = _model(data, graph, adj, quant=quant, drop_user_scales=True)
  (ku, ki), (du, di) = kept.quantize(graph, adj), dropped.quantize(graph, adj)
  np.testing.assert_array_equal(du.codes, ku.codes)
  assert not du.per_row_scale and float(du.scale) == 1.0 and di.per_row_scale
  assert ku.nbytes_packed() - du.nbytes_packed() == data.num_users * scale_bits // 8 + (8 if scale_bits == 8 else 0) - 4
  # Scores in float64 from the stored values: each user's row is its kept row divided by its own scale.
  user_scale = np.asarray(ku.scale_values(), np.float64)
  kept_scores = np.asarray(ku.dequantize(), np.float64) @ np.asarray(ki.dequantize(), np.float64).T
  dropped_scores = np.asarray(du.dequantize(), np.float64) @ np.asarray(di.dequantize(), np.float64).T
  np.testing.assert_allclose(dropped_scores * user_scale, kept_scores, rtol=1e-12)


def test_bpr_and_distillation_losses_match_numpy(problem):
  rng = np.random.default_rng(1)
  users, items = rng.normal(size=(3, 10, 4)).astype(np.float32), rng.normal(size=(3, 12, 4)).astype(np.float32)
  w = (1 / 3, 1 / 3, 1 / 3)
  triples = np.stack([rng.integers(0, 10, 6), rng.integers(0, 12, 6), rng.integers(0, 12, 6)], 1).astype(np.int32)
  teacher = rng.integers(0, 12, (6, 2)).astype(np.int32)
  weights = np.array([1, 1, 1, 1, 1, 0], np.float32)
  batch = {"triples": jnp.asarray(triples), "weights": jnp.asarray(weights), "teacher_items": jnp.asarray(teacher)}
  xhats = {"users": jnp.asarray(users), "items": jnp.asarray(items)}
  score = lambda u, i: sum(w[k] * np.dot(users[k, u], items[k, i]) for k in range(3))
  softplus = lambda z: np.log1p(np.exp(z))
  bpr = [softplus(-(score(u, p) - score(u, n))) for u, p, n in triples]
  np.testing.assert_allclose(model_lib.bpr_of_representations(xhats, batch, w), np.dot(bpr, weights) / 5, rtol=1e-5)
  dist = [np.mean([softplus(-score(u, t)) for t in teacher[b]]) for b, (u, _, _) in enumerate(triples)]
  np.testing.assert_allclose(model_lib.distillation_loss(xhats, batch, w), np.dot(dist, weights) / 5, rtol=1e-5)


def test_model_config_rejects_bad_combinations():
  with pytest.raises(ValueError, match="layerwise codes need a quantizer"):
    model_lib.ModelConfig(num_users=2, num_items=2, codes="layerwise")
  with pytest.raises(ValueError, match="unknown codes"):
    model_lib.ModelConfig(num_users=2, num_items=2, codes="middle")
  with pytest.raises(ValueError, match="layer weight"):
    model_lib.ModelConfig(num_users=2, num_items=2, layer_weights="linear",
                          quant=quant_module.QuantizerConfig(bits=1), codes="layerwise")
  for quant, codes in ((None, "final"), (quant_module.QuantizerConfig(bits=2), "final"),
                       (quant_module.QuantizerConfig(bits=1, one_bit_scale="row"), "layerwise"),
                       (quant_module.QuantizerConfig(bits=1, one_bit_scale="matrix"), "final")):
    with pytest.raises(ValueError, match="drop_user_scales needs 1-bit codes"):
      model_lib.ModelConfig(num_users=2, num_items=2, quant=quant, codes=codes, drop_user_scales=True)


def test_quantizer_params_are_split_from_the_encoder_by_type(problem):
  data, graph, adj = problem
  model = _model(data, graph, adj, quant=quant_module.QuantizerConfig(bits=2))
  quant = nnx.state(model, quant_module.QuantParam)
  encoder = nnx.state(model, nnx.All(nnx.Param, nnx.Not(quant_module.QuantParam)))
  assert len(jax.tree.leaves(quant)) == 4 and len(jax.tree.leaves(encoder)) == 1
