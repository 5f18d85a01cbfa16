"""Tests of the NNX EmbeddingQuantizer: initialisation, forward, export and gradients to its parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from hq_jax.quant import estimators
from hq_jax.quant import module
from hq_jax.quant import quantizer


def _embeddings():
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.normal(0.0, 0.1, (12, 8)), jnp.float32),
          jnp.asarray(rng.normal(0.05, 0.3, (15, 8)), jnp.float32))


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_init_from_initial_embeddings(bits):
  users, items = _embeddings()
  model = module.EmbeddingQuantizer(module.QuantizerConfig(bits=bits), users, items)
  for sub, x in ((model.users, users), (model.items, items)):
    x64 = np.asarray(x, np.float64)
    if bits == 1:
      np.testing.assert_allclose(float(sub.scale[...]), np.abs(x64).mean(), rtol=1e-6)
    else:
      np.testing.assert_allclose(float(sub.lower[...]), x64.mean() - 3 * x64.std(), rtol=1e-5)
      np.testing.assert_allclose(float(sub.upper[...]), x64.mean() + 3 * x64.std(), rtol=1e-5)
  # Separate parameters: the two matrices have different statistics, so different values.
  assert not np.allclose(jax.tree.leaves(nnx.state(model.users)), jax.tree.leaves(nnx.state(model.items)))


def test_row_scale_init():
  users, items = _embeddings()
  model = module.EmbeddingQuantizer(module.QuantizerConfig(bits=1, one_bit_scale="row"), users, items)
  assert model.users.scale[...].shape == (12, 1) and model.items.scale[...].shape == (15, 1)
  np.testing.assert_allclose(np.asarray(model.items.scale[...]), np.abs(np.asarray(items)).mean(1, keepdims=True),
                             rtol=1e-6)


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_call_and_quantized_agree_with_the_functions(bits):
  users, items = _embeddings()
  model = module.EmbeddingQuantizer(module.QuantizerConfig(bits=bits, estimator="gste"), users, items)
  users_xhat, items_xhat = nnx.jit(lambda m, u, i: m(u, i, 0.5, 0.5))(model, users, items)
  for x, xhat, sub in ((users, users_xhat, model.users), (items, items_xhat, model.items)):
    ref = jax.jit(lambda x, q: estimators.fake_quant(x, q, 0.5, bits=bits, estimator="gste"))(x, sub.qparams())
    np.testing.assert_array_equal(np.asarray(xhat), np.asarray(ref))
  (qu,), (qi,) = model.users.quantized(users), model.items.quantized(items)
  assert isinstance(qu, quantizer.QuantizedMatrix) and qu.bits == bits and qi.shape == (15, 8)
  # Eager export vs jitted forward: the step (u - l) / L may be rounded differently (see estimators_test).
  atol = 4 * float(np.finfo(np.float32).eps) * float(jnp.abs(items_xhat).max())
  np.testing.assert_allclose(np.asarray(qi.dequantize()), np.asarray(items_xhat), rtol=0, atol=atol)


@pytest.mark.parametrize("bits", [1, 4])
def test_gradients_reach_each_matrix_params_separately(bits):
  """The users' loss moves only the users' quantizer parameters, and they equal the estimator's."""
  users, items = _embeddings()
  model = module.EmbeddingQuantizer(module.QuantizerConfig(bits=bits, estimator="gste"), users, items)
  w = jnp.asarray(np.random.default_rng(1).normal(size=users.shape), jnp.float32)

  def loss(model):
    users_xhat, items_xhat = model(users, items, jnp.float32(2.0), jnp.float32(2.0))
    return jnp.sum(w * users_xhat) + 0.0 * jnp.sum(items_xhat)

  grads = nnx.jit(nnx.grad(loss))(model)
  users_grads = jax.tree.leaves(grads["users"])
  assert users_grads and all(float(jnp.abs(g).max()) > 0 for g in users_grads)
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads["items"]))
  ref = jax.grad(lambda q: jnp.sum(w * estimators.fake_quant(users, q, 2.0, bits=bits, estimator="gste")))(
      model.users.qparams())
  for name, g in ref.items():
    np.testing.assert_allclose(float(grads["users"][name][...]), float(g), rtol=1e-6)


def test_quant_params_get_their_own_learning_rate():
  """A trainer partitions by the QuantParam type: optax.multi_transform with labels from the state."""
  users, items = _embeddings()
  model = module.EmbeddingQuantizer(module.QuantizerConfig(bits=2), users, items)
  assert len(jax.tree.leaves(nnx.state(model, module.QuantParam))) == 4  # users and items: lower, upper
  params = nnx.state(model, nnx.Param)
  labels = jax.tree.map(lambda v: "quant" if isinstance(v, module.QuantParam) else "model", params,
                        is_leaf=lambda v: isinstance(v, nnx.Variable))
  tx = optax.multi_transform({"quant": optax.sgd(1e-3), "model": optax.sgd(1.0)}, labels)
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

  def loss(model):
    u, i = model(users, items)
    return jnp.sum(u) + jnp.sum(i)

  before = float(model.users.upper[...])
  grads = nnx.grad(loss)(model)
  opt.update(model, grads)
  np.testing.assert_allclose(float(model.users.upper[...]), before - 1e-3 * float(grads["users"]["upper"][...]),
                             rtol=1e-6)


def test_split_merge_roundtrip():
  users, items = _embeddings()
  model = module.EmbeddingQuantizer(module.QuantizerConfig(bits=4), users, items)
  graphdef, state = nnx.split(model)

  @jax.jit
  def apply(state, users, items):
    return nnx.merge(graphdef, state)(users, items)

  out = apply(state, users, items)
  np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(nnx.jit(lambda m: m(users, items))(model)[0]))


def test_config_validation():
  with pytest.raises(ValueError):
    module.QuantizerConfig(bits=5)
  with pytest.raises(ValueError):
    module.QuantizerConfig(estimator="ewgs")
  with pytest.raises(ValueError):
    module.QuantizerConfig(bits=2, one_bit_clip=1.0)
  with pytest.raises(TypeError):
    module.QuantizerConfig(1)  # keyword-only


@pytest.mark.parametrize("bits,scale", [(1, "matrix"), (1, "row"), (3, "matrix")])
def test_layer_stack_gets_one_set_of_parameters_per_layer(bits, scale):
  rng = np.random.default_rng(3)
  stack = jnp.asarray(rng.normal(size=(3, 20, 4)) * np.array([0.1, 1.0, 5.0])[:, None, None], jnp.float32)
  config = module.QuantizerConfig(bits=bits, one_bit_scale=scale)
  stacked = module.MatrixQuantizer(config, stack)
  for k in range(3):
    single = module.MatrixQuantizer(config, stack[k])
    for name, value in single.qparams().items():
      np.testing.assert_allclose(np.asarray(stacked.qparams()[name][k]).reshape(np.shape(value)), value, rtol=1e-6)
    np.testing.assert_allclose(stacked(stack)[k], single(stack[k]), rtol=1e-6)
    np.testing.assert_allclose(stacked.quantized(stack)[k].dequantize(), single.quantized(stack[k])[0].dequantize(),
                               rtol=1e-6)


def test_eight_bit_row_scales_only_for_one_bit_row_scales():
  with pytest.raises(ValueError, match="scale_bits = 8"):
    module.QuantizerConfig(bits=2, scale_bits=8)
  config = module.QuantizerConfig(bits=1, one_bit_scale="row", scale_bits=8)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(30, 8)), jnp.float32)
  (qm,) = module.MatrixQuantizer(config, x).quantized(x)
  assert qm.scale_bits == 8 and qm.nbytes_packed() == 30 * 1 + 30 + 8 + 4


def test_one_bit_scale_that_crosses_zero_stays_positive():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(4, 3)), jnp.float32)
  q = module.MatrixQuantizer(module.QuantizerConfig(bits=1, one_bit_scale="row"), x)
  q.scale[...] = jnp.asarray([[0.5], [-0.25], [0.0], [1.0]])
  np.testing.assert_allclose(q.qparams()["scale"], [[0.5], [0.25], [1e-12], [1.0]])
  (qm,) = q.quantized(x)
  assert np.all(np.asarray(qm.scale_values()) > 0)
  np.testing.assert_allclose(q(x), np.asarray(q.qparams()["scale"]) * np.where(np.asarray(x) >= 0, 1, -1))
