"""Bit-packing of low-bit codes into uint32 words, and back.

Retrieval from b-bit codes is memory bound, so the codes travel packed: a row of d codes of b bits becomes
`words_per_row(d, b)` uint32 words. Field layout (little-endian inside a word): dimension j lives in word
`j // (32 // w)` at bit offset `(j % (32 // w)) * w`, where w = `field_bits(b)` is b rounded up to a power of
two (3-bit codes use 4-bit fields, so no field straddles a word). Padding fields at the end of a row are 0.

What a field holds:
  * b == 1: the sign bit, 1 for code +1 and 0 for code -1 (codes are int8 in {-1, +1}, as in
    `hq_jax.quant.QuantizedMatrix`);
  * b >= 2: the unsigned code itself (uint8 in {0..2^b-1}).

All functions are pure jnp functions (jit-able; `bits` and `dim` are static).
"""

import jax
import jax.numpy as jnp

from hq_jax.quant.quantizer import SUPPORTED_BITS


def field_bits(bits: int) -> int:
  """Width of the field that holds one code: b rounded up to a power of two (1, 2, 4 or 8)."""
  if bits not in SUPPORTED_BITS:
    raise ValueError(f"cannot pack {bits}-bit codes (supported: {SUPPORTED_BITS})")
  return 1 << (bits - 1).bit_length()


def codes_per_word(bits: int) -> int:
  return 32 // field_bits(bits)


def words_per_row(dim: int, bits: int) -> int:
  """uint32 words per packed row: ceil(dim / codes_per_word)."""
  per = codes_per_word(bits)
  return -(-dim // per)


def pack_codes(codes: jax.Array, bits: int) -> jax.Array:
  """Packs (n, d) codes into (n, words_per_row(d, bits)) uint32 words.

  Args:
    codes: int8 in {-1, +1} for bits == 1; integers in {0..2^b-1} otherwise.
    bits: code width.
  """
  codes = jnp.asarray(codes)
  w = field_bits(bits)
  per = 32 // w
  n, d = codes.shape
  nw = words_per_row(d, bits)
  if bits == 1:
    fields = (codes > 0).astype(jnp.uint32)
  else:
    fields = codes.astype(jnp.uint32)
  fields = jnp.pad(fields, ((0, 0), (0, nw * per - d))).reshape(n, nw, per)
  shifts = (jnp.arange(per, dtype=jnp.uint32) * w)
  # Fields do not overlap, so the sum is the bitwise or.
  return jnp.sum(fields << shifts, axis=-1, dtype=jnp.uint32)


def unpack_codes(words: jax.Array, bits: int, dim: int) -> jax.Array:
  """Inverse of `pack_codes`: (n, nw) uint32 -> (n, dim) codes (int8 +-1 for 1 bit, uint8 otherwise)."""
  words = jnp.asarray(words, jnp.uint32)
  w = field_bits(bits)
  per = 32 // w
  n, nw = words.shape
  if nw != words_per_row(dim, bits):
    raise ValueError(f"{nw} words per row do not hold {dim} {bits}-bit codes")
  shifts = jnp.arange(per, dtype=jnp.uint32) * w
  mask = jnp.uint32((1 << w) - 1)
  fields = ((words[:, :, None] >> shifts) & mask).reshape(n, nw * per)[:, :dim]
  if bits == 1:
    return jnp.where(fields == 1, 1, -1).astype(jnp.int8)
  return fields.astype(jnp.uint8)


def packed_nbytes(num_rows: int, dim: int, bits: int) -> int:
  """Bytes of a packed (num_rows, dim) code matrix."""
  return 4 * num_rows * words_per_row(dim, bits)
