"""Top-K of multi-word keys in lexicographic order, ties to the lower position (ours).

A ranking key is one or more words (see `hq_jax.retrieval.scoring`): one float32 word (exact integers below
2^24, or float embeddings' inner products), one int32 word, or W float32 words compared lexicographically
(first word, then the next among entries that tie on the earlier ones). These are the maximum and top-K
operations `topk` and `sharded` build on, with one tie rule everywhere: on equal keys the lower position wins.
"""

import jax
import jax.numpy as jnp

from hq_jax.retrieval import limbs as limbs_lib


def lowest(dtype) -> jax.Array:
  """The "removed" key: -inf for float keys, the minimum int32 for integer keys."""
  if jnp.issubdtype(dtype, jnp.integer):
    return jnp.array(jnp.iinfo(dtype).min, dtype)
  return jnp.array(-jnp.inf, dtype)


def to_float(keys: jax.Array) -> jax.Array:
  """A key word as float32 for `lax.top_k` (its integer path is ~10x slower on CPU, and XLA:GPU's TopK kernel
  takes float32 / bfloat16 only: the same on every backend, see `hq_jax.backend`); removed -> -inf.

  int32 words go through the order-preserving `limbs.encode_int32`. -0.0 becomes +0.0: `lax.top_k` orders
  floats totally (+0.0 above -0.0), and equal scores must tie.
  """
  if jnp.issubdtype(keys.dtype, jnp.integer):
    return jnp.where(keys == lowest(keys.dtype), -jnp.inf, limbs_lib.encode_int32(keys))
  return jnp.where(keys == 0, jnp.zeros((), keys.dtype), keys)


def lex_max(keys) -> tuple[jax.Array, ...]:
  """Lexicographic maximum of the key words over the last axis."""
  first = jnp.max(keys[0], axis=-1)
  out, tied = [first], keys[0] == first[..., None]
  for k in keys[1:]:
    m = jnp.max(jnp.where(tied, k, lowest(k.dtype)), axis=-1)
    out.append(m)
    tied = tied & (k == m[..., None])
  return tuple(out)


def lex_top_k(keys, k: int):
  """Top k of (B, N) float32 key words: (words (B, k) each, positions (B, k)), best first, ties by position.

  One word: `lax.top_k`. Several: word by word, the threshold t_j is the r-th largest value of word j among
  the entries still tied on the earlier words (r = slots not yet filled); entries above it are in, entries
  equal to it stay tied, and after the last word the tied entries fill the remaining slots by position.
  The k chosen entries are then sorted by (words desc, position asc).
  """
  if len(keys) == 1:
    vals, pos = jax.lax.top_k(keys[0], k)
    return (vals,), pos
  n = keys[0].shape[-1]
  chosen = jnp.zeros(keys[0].shape, bool)
  tied = jnp.ones(keys[0].shape, bool)
  left = jnp.full(keys[0].shape[:-1] + (1,), k, jnp.int32)
  for word in keys:
    vals, _ = jax.lax.top_k(jnp.where(tied, word, -jnp.inf), k)
    t = jnp.take_along_axis(vals, jnp.clip(left - 1, 0, k - 1), axis=-1)
    above = tied & (word > t)
    chosen = chosen | above
    left = left - jnp.sum(above, axis=-1, keepdims=True, dtype=jnp.int32)
    tied = tied & (word == t)
  rank = jnp.cumsum(tied, axis=-1, dtype=jnp.int32) - 1
  chosen = chosen | (tied & (rank < left))
  positions = jnp.arange(n, dtype=jnp.float32)
  _, pos = jax.lax.top_k(jnp.where(chosen, -positions, -jnp.inf), k)  # chosen positions, ascending
  words = [jnp.take_along_axis(w, pos, axis=-1) for w in keys]
  out = jax.lax.sort([-w for w in words] + [pos], dimension=-1, num_keys=len(words) + 1)
  return tuple(-w for w in out[:-1]), out[-1]


def merge_topk(vals_a, ids_a, vals_b, ids_b, k: int):
  """Top k of the union of two candidate lists of key words; on equal keys the entry listed first (in a,
  then b) wins. Callers list lower rows first, so ties go to the lower row."""
  vals = tuple(jnp.concatenate([a, b], axis=1) for a, b in zip(vals_a, vals_b))
  ids = jnp.concatenate([ids_a, ids_b], axis=1)
  top, pos = lex_top_k(vals, k)
  return top, jnp.take_along_axis(ids, pos, axis=1)
