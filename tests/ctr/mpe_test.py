"""MPE pieces on hand cases: groups, c_g, probabilities, regulariser, selection, mixture, export."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hq_jax.ctr import lsq, mpe


def test_frequency_groups_sort_by_count_and_cut_equal_chunks():
  counts = np.array([5, 0, 9, 1, 1, 7, 3, 2])
  group_of, totals = mpe.frequency_groups(counts, 4)
  # Ascending stable order: ids 1(0), 3(1), 4(1), 7(2), 6(3), 0(5), 5(7), 2(9).
  np.testing.assert_array_equal(group_of, [2, 0, 3, 0, 1, 3, 2, 1])
  np.testing.assert_array_equal(totals, [1, 3, 8, 16])


def test_frequency_groups_uneven_sizes_differ_by_one():
  group_of, _ = mpe.frequency_groups(np.arange(10), 3)
  np.testing.assert_array_equal(np.bincount(group_of), [4, 3, 3])


@pytest.mark.parametrize("totals,expected", [
    ("normal", [1.0, 3.0, 8.0, 16.0]),
    ("zero_total_floored", [1.0, 1.0, 4.0]),
], ids=["normal", "zero_total_floored"])
def test_group_costs(totals, expected):
  arr = {"normal": [1, 3, 8, 16], "zero_total_floored": [0, 1, 4]}[totals]
  np.testing.assert_allclose(mpe.group_costs(np.array(arr)), expected)


def test_bit_regularizer_matches_formula():
  gamma = jnp.array([[0.0, 0.01, 0.0, 0.0, 0.0, 0.0, -0.01], [0.003, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
  costs = jnp.array([1.0, 4.0])
  got = jax.jit(lambda g, c: mpe.bit_regularizer(mpe.precision_probs(g, 3e-3), c))(gamma, costs)
  z = np.asarray(gamma, np.float64) / 3e-3
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  ref = sum(p[g, b] * b / float(costs[g]) for g in range(2) for b in range(7))
  assert float(got) == pytest.approx(ref, rel=1e-5)


SELECTION_CASES = [  # name, probabilities over B = 0..6, expected width (threshold 1 / 14 = 0.0714)
    ("uniform_takes_largest", [1 / 7] * 7, 6),
    ("one_hot_2", [0, 0, 1, 0, 0, 0, 0], 2),
    ("just_above_threshold", [0.5, 0, 0.3, 0.0715, 0.1285, 0, 0], 4),
    ("just_below_threshold", [0.5, 0, 0.3, 0.1286, 0.0714, 0, 0], 3),
    ("pruned", [1, 0, 0, 0, 0, 0, 0], 0),
]


@pytest.mark.parametrize("name,probs,expected", SELECTION_CASES, ids=[c[0] for c in SELECTION_CASES])
def test_select_bits_threshold(name, probs, expected):
  del name
  assert mpe.select_bits_threshold(np.array([probs]))[0] == expected


def test_select_bits_sampling_follows_probabilities():
  probs = np.tile([0.0, 0.0, 0.25, 0.0, 0.75, 0.0, 0.0], (4000, 1))
  bits = mpe.select_bits_sampling(probs, seed=0)
  assert set(np.unique(bits)) == {2, 4}
  assert np.mean(bits == 4) == pytest.approx(0.75, abs=0.03)
  np.testing.assert_array_equal(mpe.select_bits_sampling(np.eye(7), seed=1), np.arange(7))


def test_mixed_quantize_is_weighted_sum_of_quantized_copies():
  rng = np.random.default_rng(0)
  rows = jnp.asarray(rng.normal(size=(3, 2, 4)) * 0.01, jnp.float32)
  probs = jnp.asarray(rng.dirichlet(np.ones(7), size=(3, 2)), jnp.float32)
  alphas = jnp.asarray([1.0, 0.02, 0.01, 0.005, 0.003, 0.002, 0.001], jnp.float32)
  beta = jnp.asarray([0.001, 0.0, -0.001, 0.0], jnp.float32)
  got = jax.jit(lambda r, p: mpe.mixed_quantize(r, p, alphas, beta, 100))(rows, probs)
  ref = sum(probs[..., b:b + 1] * lsq.lsq_quantize(rows, alphas[b], beta, b, 100) for b in range(1, 7))
  np.testing.assert_allclose(got, ref, atol=1e-7)
  bits = jnp.array([[0, 3], [6, 1], [2, 0]])
  frozen = jax.jit(lambda r, b: mpe.frozen_quantize(r, b, alphas, beta, 100))(rows, bits)
  for i in range(3):
    for j in range(2):
      b = int(bits[i, j])
      want = np.zeros(4) if b == 0 else lsq.lsq_quantize(rows[i, j], alphas[b], beta, b, 100)
      np.testing.assert_allclose(frozen[i, j], want, atol=1e-7)


@pytest.mark.parametrize("widths", [[0, 1, 2, 3, 6, 6, 5, 0, 4], [6] * 5, [8] * 3, [0] * 4],
                         ids=["mixed", "uniform6", "uniform8", "all_pruned"])
def test_pack_unpack_round_trip(widths):
  widths = np.array(widths)
  rng = np.random.default_rng(1)
  values = rng.integers(0, 2 ** widths[:, None], size=(len(widths), 3)) * (widths[:, None] > 0)
  packed = mpe.pack_bits(values, widths)
  assert packed.nbytes == -(-int(widths.sum()) * 3 // 8)
  np.testing.assert_array_equal(mpe.unpack_bits(packed, widths, 3), values)


def _trained_like_embedding():
  counts = np.random.default_rng(0).zipf(1.5, size=300).clip(max=10_000)
  emb = mpe.MixedPrecisionEmbedding(300, 8, counts, num_groups=10, rngs=nnx.Rngs(params=0))
  emb.group_bits[...] = jnp.array([0, 1, 2, 3, 4, 5, 6, 2, 0, 6], jnp.int32)
  emb.beta[...] = jnp.linspace(-0.001, 0.001, 8)
  emb.phase = "retrain"
  return emb


def test_export_bytes_and_dequantized_export_reproduce_the_embedding(tmp_path):
  emb = _trained_like_embedding()
  widths = emb.feature_bits()
  alphas = {b: float(a) for b, a in enumerate(np.asarray(lsq.effective_step(emb.alpha[...]))) if b > 0}
  export = mpe.export_codes(np.asarray(emb.table[...]), widths, alphas, np.asarray(emb.beta[...]))
  path = tmp_path / "export.npz"
  np.savez(path, **export)
  with np.load(path) as stored:
    assert mpe.export_bytes(export) == sum(stored[k].nbytes for k in stored.files)
    decoded = mpe.decode_export({k: stored[k] for k in stored.files})
  # Codes at each width, 3-bit width map, 6 steps, an 8-float offset, the shape.
  expected = -(-int(widths.sum()) * 8 // 8) + -(-300 * 3 // 8) + 6 * 4 + 8 * 4 + 2 * 8
  assert mpe.export_bytes(export) == expected
  model_rows = np.asarray(emb(jnp.arange(300)))
  np.testing.assert_allclose(decoded, model_rows, atol=1e-7)
  assert np.all(decoded[widths == 0] == 0)


def test_mean_bits_per_feature():
  assert mpe.mean_bits_per_feature(np.array([0, 4]), np.array([0, 1, 1, 1])) == 3.0


@pytest.mark.parametrize("feature_bits,offsets,expected", [
    ([0, 0, 3, 0, 2, 0, 0], [0, 2, 5, 7], [0, 2]),
    ([1, 0, 0, 0], [0, 1, 1, 4], [2]),  # an empty field (no ids) is not "pruned"
    ([0, 0, 0], [0, 3], [0]),
    ([4, 4], [0, 1, 2], []),
], ids=["two_of_three", "empty_field_skipped", "one_field", "none"])
def test_pruned_fields(feature_bits, offsets, expected):
  np.testing.assert_array_equal(mpe.pruned_fields(np.array(feature_bits), np.array(offsets)), expected)


def test_pruning_warning_names_an_empty_table_or_the_pruned_fields():
  # ../shared/cases/mpe-all-pruned: one line, naming what was pruned and what to change.
  offsets = np.array([0, 2, 5, 7])
  assert mpe.pruning_warning(np.zeros(16, np.int32), np.zeros(7), offsets) == (
      "all 16 groups selected 0 bits: the embedding table is empty (the model predicts a constant); lower "
      "mpe.lam")
  assert mpe.pruning_warning(np.array([0, 3]), np.array([0, 0, 3, 3, 3, 0, 0]), offsets, ["a", "b", "c"]) == (
      "every feature of 2 of 3 fields (a, c) selected 0 bits: those fields embed as zero vectors; lower mpe.lam "
      "to keep them")
  assert mpe.pruning_warning(np.array([0, 3]), np.array([0, 3, 3, 3, 3, 0, 3]), offsets) is None
