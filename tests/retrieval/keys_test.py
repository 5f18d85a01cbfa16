"""hq_jax.retrieval.keys: the arithmetic tier of a key follows its bound; raw inner products are exact."""

import jax.numpy as jnp
import numpy as np
import pytest

from hq_jax.retrieval import keys, limbs, packing


def _layer(kind, raw_bound, **kw):
  return keys.LayerSpec(kind=kind, dim=64, bits=1 if kind == "hamming" else 4, raw_bound=raw_bound, chunk=64, **kw)


@pytest.mark.parametrize("layers,shift,tier", [
    ((keys.LayerSpec(kind="float", dim=8, bits=0, raw_bound=0, chunk=0),), 0, "float"),
    ((_layer("matmul", 1000),), 10, "f32"),  # float raw, bound < 2^24
    ((_layer("hamming", 64),), 0, "i32"),  # int32 raw scores never take the f32 tier
    ((_layer("matmul", 1000, beta_bound=1 << 20),), 0, "i32"),  # 1000 * 2^20 >= 2^24
    ((_layer("matmul", 1000, beta_bound=1 << 20, alpha_bound=1 << 20),), 0, "limbs"),
])
def test_tier_follows_the_bound(layers, shift, tier):
  spec = keys.choose_tier(layers, shift)
  assert spec.tier == tier
  if tier == "limbs":
    assert spec.bound >= limbs.ENCODABLE and spec.words == limbs.words_needed(spec.bound)


def test_hamming_raw_scores_equal_the_sign_inner_product():
  rng = np.random.default_rng(0)
  u, i = np.where(rng.random((5, 70)) < 0.5, -1, 1), np.where(rng.random((9, 70)) < 0.5, -1, 1)
  layer = keys.LayerSpec(kind="hamming", dim=70, bits=1, raw_bound=70, chunk=70)
  got = keys.raw_scores(layer, jnp.asarray(packing.pack_codes(u.astype(np.int8), 1)), jnp.asarray(packing.pack_codes(i.astype(np.int8), 1)))
  np.testing.assert_array_equal(np.asarray(got), u @ i.T)
