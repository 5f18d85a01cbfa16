"""Exact integer arithmetic in int32 limbs, and the order-preserving int32 -> float32 map, against Python ints."""

import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hq_jax.retrieval import limbs


def test_encode_int32_keeps_order_and_inverts():
  edge = limbs.ENCODABLE - 1
  values = np.asarray([-edge, -edge + 1, -(1 << 24), -5, -1, 0, 1, 2, (1 << 24) + 1, edge - 1, edge], np.int32)
  f = np.asarray(jax.jit(limbs.encode_int32)(values))
  assert (np.diff(f) > 0).all() and np.isfinite(f).all()
  assert (np.abs(f) >= np.finfo(np.float32).tiny).all()  # normal numbers only: flush-to-zero cannot tie them
  assert not np.signbit(f[values >= 0]).any()
  np.testing.assert_array_equal(np.asarray(limbs.decode_int32(f)), values)


@pytest.mark.parametrize("bound, expected", [(0, 1), (2047, 1), (2048, 2), (2**23 - 1, 2), (2**23, 3),
                                             (2**59, 6)])
def test_limbs_needed(bound, expected):
  assert limbs.limbs_needed(bound) == expected


def _value(ls) -> list[int]:
  """Python ints of limb arrays (canonical or not)."""
  arrays = [np.asarray(l, np.int64).reshape(-1) for l in ls]
  width = max(a.size for a in arrays)
  return [sum(int(np.broadcast_to(a, (width,))[i]) << (limbs.RADIX_BITS * j) for j, a in enumerate(arrays))
          for i in range(width)]


@pytest.mark.parametrize("seed, bits_a, bits_b", [(0, 40, 20), (1, 60, 2), (2, 30, 30), (3, 11, 11), (4, 75, 13)])
def test_mul_add_words_match_python_ints(seed, bits_a, bits_b):
  rng = random.Random(seed)
  a = [rng.randint(-(1 << bits_a), 1 << bits_a) for _ in range(50)]
  b = [rng.randint(-(1 << bits_b), 1 << bits_b) for _ in range(50)]
  c = [rng.randint(-(1 << 30), 1 << 30) for _ in range(50)]
  na, nb = limbs.limbs_needed(1 << bits_a), limbs.limbs_needed(1 << bits_b)
  la = tuple(jnp.asarray(limbs.host_limbs(a, na)[:, j]) for j in range(na))
  lb = tuple(jnp.asarray(limbs.host_limbs(b, nb)[:, j]) for j in range(nb))
  assert _value(la) == a
  bound = (1 << (bits_a + bits_b)) + (1 << 30)
  n = limbs.limbs_needed(bound)
  prod = limbs.mul(la, lb, limbs.limbs_needed(1 << (bits_a + bits_b)))
  total = limbs.add([prod, limbs.from_int32(jnp.asarray(c, jnp.int32), limbs.limbs_needed(1 << 30))], n)
  want = [x * y + z for x, y, z in zip(a, b, c)]
  assert _value(total) == want
  for low in total[:-1]:
    assert (np.asarray(low) >= 0).all() and (np.asarray(low) < limbs.RADIX).all()
  words = limbs.to_words(total, limbs.words_needed(bound))
  assert [limbs.words_value([float(np.asarray(w)[i]) for w in words]) for i in range(50)] == want
  # lexicographic order of the words is the order of the values
  order = sorted(range(50), key=lambda i: tuple(float(np.asarray(w)[i]) for w in words))
  assert [want[i] for i in order] == sorted(want)


def test_mul_by_python_constant():
  x = jnp.asarray([-(2**30), -1, 0, 7, 2**30], jnp.int32)
  c = 3**30 + 12345
  out = limbs.mul(limbs.from_int32(x, 3), limbs.const_limbs(c), limbs.limbs_needed(c * 2**30))
  assert _value(out) == [int(v) * c for v in np.asarray(x)]
