"""The method objects: registry, tables, MPE's search -> retrain step, exports, and adding a method."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.configs import mpe_test
from hq_jax.ctr import baselines, methods, models, mpe, train
from hq_jax.errors import UserError


def _config(method):
  c = mpe_test.get_config()
  c.method = method
  return c


EMBEDDINGS = {"fp": models.Embedding, "lsq": baselines.LSQEmbedding, "alpt": baselines.ALPTEmbedding,
              "qr": baselines.QREmbedding, "mpe": mpe.MixedPrecisionEmbedding}


@pytest.mark.parametrize("name", sorted(EMBEDDINGS))
def test_registry_builds_each_table_and_exports_its_exact_bytes(name):
  method = methods.METHODS[name]
  counts = np.arange(40)
  emb = method.create_embedding(_config(name), 40, counts, nnx.Rngs(params=0))
  method.enter_phase(emb, method.phases[-1])
  assert type(emb) is EMBEDDINGS[name]
  assert method.row_table == isinstance(emb, models.Embedding) == (name != "qr")
  assert emb(jnp.array([[0, 39]])).shape == (1, 2, 8)
  sizes, arrays = method.export(emb)
  assert sizes["fp32_table_bytes"] == 40 * 8 * 4
  if arrays is None:
    assert name in ("fp", "qr")
  else:
    assert sizes["exact_bytes"] == mpe.export_bytes(arrays)
    # The export decodes to exactly what the model computes (full-precision rows: quantized already).
    np.testing.assert_allclose(mpe.decode_export(arrays), emb(jnp.arange(40)), atol=1e-7)
  expected_bits = {"fp": 32.0, "lsq": 6.0, "alpt": 8.0, "qr": 32.0 * (20 + 2) / 40, "mpe": 6.0}[name]
  assert sizes["mean_bits_per_feature"] == pytest.approx(expected_bits)
  assert sizes["compression_bytes"] == pytest.approx(40 * 8 * 4 / sizes["exact_bytes"])


def test_only_mpe_has_two_phases_and_a_regularizer_weight():
  for name, method in methods.METHODS.items():
    c = _config(name)
    if name == "mpe":
      assert method.phases == ("search", "retrain")
      assert method.regularizer_weight(c, "search") == c.mpe.lam and method.regularizer_weight(c, "retrain") == 0
    else:
      assert method.phases == ("train",) and method.regularizer_weight(c, "train") == 0.0


@pytest.mark.parametrize("selection", ["threshold", "sampling"])
def test_mpe_next_phase_selects_widths_resets_w_and_keeps_quantizer(selection):
  method = methods.METHODS["mpe"]
  c = _config("mpe")
  c.mpe.selection = selection
  counts = np.random.default_rng(0).zipf(1.5, size=64).clip(max=1000)
  emb = method.create_embedding(c, 64, counts, nnx.Rngs(params=0))
  initial = method.create_embedding(c, 64, counts, nnx.Rngs(params=0))
  # A trained-like search state: W moved, steps / offset learnt, p_g one-hot on a width per group.
  emb.table[...] = emb.table[...] + 0.01
  emb.alpha[...] = emb.alpha[...] * 1.5
  emb.beta[...] = jnp.full((8,), 0.002)
  chosen = np.arange(16) % 7
  emb.gamma[...] = jnp.asarray(np.eye(7)[chosen] * 1.0)  # / tau = 3e-3: p_g is one-hot to float precision.
  alpha, beta = np.asarray(emb.alpha[...]), np.asarray(emb.beta[...])
  method.next_phase(c, emb, initial)
  np.testing.assert_array_equal(emb.group_bits[...], chosen)
  np.testing.assert_array_equal(emb.table[...], initial.table[...])
  np.testing.assert_array_equal(emb.alpha[...], alpha)
  np.testing.assert_array_equal(emb.beta[...], beta)
  method.enter_phase(emb, "retrain")
  assert emb.phase == "retrain" and float(emb.regularizer()) == 0.0
  np.testing.assert_array_equal(emb.feature_bits(), chosen[np.asarray(emb.group_of[...])])


def test_mpe_validate_rejects_an_unknown_selection():
  c = _config("mpe")
  c.mpe.selection = "greedy"
  with pytest.raises(UserError, match="config.mpe.selection: 'greedy'"):
    methods.METHODS["mpe"].validate(c)


class _HalfScale(methods.Method):
  """A toy method: a full-precision table whose rows are halved (only to show what adding a method takes)."""

  def create_embedding(self, config, num_features, counts, rngs):
    return _HalfEmbedding(num_features, config.model.dim, rngs=rngs)


class _HalfEmbedding(models.Embedding):
  def embed_rows(self, rows, ids):
    del ids
    return 0.5 * rows


def test_a_new_method_is_one_class_and_one_registry_line(tmp_path, monkeypatch):
  monkeypatch.setitem(methods.METHODS, "half", _HalfScale())
  c = _config("half")
  c.train.max_epochs = 1
  results = train.train_and_evaluate(c, str(tmp_path))
  assert results["method"] == "half" and 0 < results["test_auc"] < 1
  assert results["mean_bits_per_feature"] == 32.0 and list(results["phases"]) == ["train"]


@pytest.mark.parametrize("mean_bits,exact_bytes,bits_ratio,bits_reason", [
    (2.0, 100, 16.0, None),
    (0.0, 48, None, "every feature pruned (0 bits)"),
])
def test_size_summary_never_writes_infinity(mean_bits, exact_bytes, bits_ratio, bits_reason):
  # ../shared/cases/mpe-all-pruned: 32 / 0 bits was float('inf'), which results.json wrote as `Infinity`.
  sizes = methods.size_summary(10, 4, exact_bytes, mean_bits)
  assert sizes["compression_bits"] == bits_ratio
  assert sizes.get("compression_bits_reason") == bits_reason
  assert sizes["compression_bytes"] == pytest.approx(160 / exact_bytes)
  json.dumps(sizes, allow_nan=False)


def test_results_row_prints_a_null_ratio_as_a_dash():
  from experiments.mpe import results_row  # noqa: PLC0415 - the binary's table printer
  r = {"method": "mpe", "test_auc": 0.5, "test_logloss": 0.52, "mean_bits_per_feature": 0.0,
       "compression_bits": None, "compression_bits_reason": "every feature pruned (0 bits)",
       "compression_bytes": 7459.9, "phases": {"search": {"epochs": 40}, "retrain": {"epochs": 40}}}
  assert results_row(r) == "| mpe | 0.5000 | 0.5200 | 0.000 | - | 7459.9 | 40+40 |"
