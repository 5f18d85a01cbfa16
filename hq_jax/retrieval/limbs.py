"""Exact integer arithmetic on int32 arrays, for ranking keys wider than a float32 mantissa (ours).

Ranking keys are integers (see `scoring`). `lax.top_k` is fast only on float32 (XLA:CPU's integer path is
~10x slower; XLA:GPU's TopK kernel takes float32 / bfloat16 only: `hq_jax.backend`), and float32 holds
integers exactly below 2^24; this module gives the two ways past that:

* `encode_int32`: an order-preserving map from int32 values v with |v| < 2^31 - 2^24 (`ENCODABLE`) to finite,
  normal float32 numbers (never -0.0, never subnormal, so flush-to-zero cannot merge two of them):
    v >= 0: bits = v + 2^23;   v < 0: bits = 2^31 | (-v - 1 + 2^23).
  Both halves are monotone in v and every positive image lies above every negative one, so
  v < w  <=>  encode(v) < encode(w). `decode_int32` inverts it.
* Limbs: wider integers as tuples of int32 arrays in radix 2^12, little-endian,
    value = sum_j l_j 2^(12 j),  0 <= l_j < 2^12 for j < n - 1, the top limb signed;
  a value needs `limbs_needed(bound)` limbs (|top limb| <= 2^11). Products of two limbs are below 2^24 in
  magnitude, so a column of up to 64 of them stays below 2^30 and `mul` sums whole columns before carrying.
  `to_words` turns limbs into words of 24 bits, most significant first: float32 integers (exact), the top one
  signed, the others in [0, 2^24); their lexicographic order is the order of the values.

All functions are pure jnp on tuples of arrays of one broadcast shape (host helpers are marked).
"""

import jax
import jax.numpy as jnp
import numpy as np

RADIX_BITS = 12
RADIX = 1 << RADIX_BITS
MASK = RADIX - 1
WORD_BITS = 2 * RADIX_BITS  # 24: a word is two limbs, an exact float32 integer
ENCODABLE = (1 << 31) - (1 << 24)  # int32 keys below this in magnitude have an order-preserving float32 image
_MIN_NORMAL_BITS = 1 << 23

Limbs = tuple[jax.Array, ...]


# ----------------------------------------------------------------------------------------------------------
# int32 <-> order-preserving float32
# ----------------------------------------------------------------------------------------------------------


def encode_int32(v: jax.Array) -> jax.Array:
  """Order-preserving float32 image of int32 values with |v| < ENCODABLE (module docstring)."""
  v = jnp.asarray(v, jnp.int32)
  mag = jnp.where(v >= 0, v, -v - 1) + _MIN_NORMAL_BITS
  bits = jnp.where(v >= 0, mag.astype(jnp.uint32), mag.astype(jnp.uint32) | jnp.uint32(1 << 31))
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def decode_int32(f: jax.Array) -> jax.Array:
  """Inverse of `encode_int32`."""
  bits = jax.lax.bitcast_convert_type(jnp.asarray(f, jnp.float32), jnp.uint32)
  mag = (bits & jnp.uint32(0x7FFFFFFF)).astype(jnp.int32) - _MIN_NORMAL_BITS
  return jnp.where(bits >> 31 == 0, mag, -mag - 1)


# ----------------------------------------------------------------------------------------------------------
# Limbs
# ----------------------------------------------------------------------------------------------------------


def limbs_needed(bound: int) -> int:
  """Limbs that hold every integer in [-bound, bound] with the top limb in [-2^11, 2^11]."""
  n = 1
  while bound >= 1 << (RADIX_BITS * (n - 1) + RADIX_BITS - 1):
    n += 1
  return n


def words_needed(bound: int) -> int:
  """24-bit words (two limbs each) for integers in [-bound, bound]."""
  return -(-limbs_needed(bound) // 2)


def normalize(limbs, n: int) -> Limbs:
  """Carries into the canonical form with exactly n limbs (the value must fit n limbs, see `limbs_needed`).

  Column sums below 2^30 are fine: each carry is below 2^18 and is added to the next column before its own
  carry is taken. Limbs past the n-th are folded into the top one from the top down (Horner), where every
  partial value is floor(value / 2^(12 i)) and so stays small when the value fits.
  """
  limbs = list(limbs)
  m = max(len(limbs), n)
  limbs += [0] * (m - len(limbs))
  out, carry = [], 0
  for j in range(m - 1):
    x = limbs[j] + carry
    if isinstance(x, int):
      carry, low = x >> RADIX_BITS, x & MASK
    else:
      x = jnp.asarray(x, jnp.int32)
      carry, low = jnp.right_shift(x, RADIX_BITS), x & MASK  # arithmetic shift: floor division
    out.append(low)
  top = limbs[m - 1] + carry
  for i in range(m - 2, n - 2, -1):
    top = top * RADIX + out[i]
  return tuple(jnp.asarray(x, jnp.int32) for x in out[:n - 1] + [top])


def from_int32(x: jax.Array, n: int) -> Limbs:
  """Limbs of an int32 array whose values fit n limbs."""
  x = jnp.asarray(x, jnp.int32)
  out = []
  for j in range(n - 1):
    out.append(x & MASK)
    x = jnp.right_shift(x, RADIX_BITS)
  out.append(x)
  return tuple(out)


def const_limbs(value: int, n: int | None = None) -> tuple[int, ...]:
  """Limbs of a Python int (host), as Python ints."""
  n = n or limbs_needed(abs(value))
  out = []
  for _ in range(n - 1):
    out.append(value & MASK)
    value >>= RADIX_BITS
  out.append(value)
  return tuple(out)


def host_limbs(values, n: int) -> np.ndarray:
  """(len, n) int32 limbs of a sequence of Python ints (host)."""
  values = [int(v) for v in np.asarray(values, dtype=object).reshape(-1)]
  return np.asarray([const_limbs(v, n) for v in values], np.int32).reshape(-1, n)


def mul(a, b, n: int) -> Limbs:
  """a * b as n normalized limbs; a, b tuples of arrays or Python ints (normalized, at most 64 limbs each)."""
  cols = [0] * (len(a) + len(b) - 1)
  for i, x in enumerate(a):
    for j, y in enumerate(b):
      if isinstance(x, int) and x == 0 or isinstance(y, int) and y == 0:
        continue
      cols[i + j] = cols[i + j] + x * y
  return normalize(cols, n)


def add(terms, n: int) -> Limbs:
  """Sum of a few (< 2^17) normalized limb tuples, as n normalized limbs."""
  width = max(len(t) for t in terms)
  cols = [sum((t[j] for t in terms if j < len(t)), 0) for j in range(width)]
  return normalize(cols, n)


def to_words(limbs: Limbs, words: int) -> tuple[jax.Array, ...]:
  """Words of 24 bits, most significant first, as exact float32 integers (lexicographic order = value order)."""
  limbs = normalize(limbs, 2 * words)
  return tuple((limbs[2 * j] + RADIX * limbs[2 * j + 1]).astype(jnp.float32) for j in reversed(range(words)))


def words_value(words) -> int:
  """The integer that host-side word values (most significant first) stand for (for tests and reports)."""
  value = 0
  for w in words:
    value = value * (1 << WORD_BITS) + int(w)
  return value
