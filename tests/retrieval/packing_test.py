"""Round trips and golden layouts of the b-bit code packing."""

import jax
import numpy as np
import pytest

from hq_jax.retrieval import packing


def _random_codes(rng, n, d, bits):
  if bits == 1:
    return rng.choice(np.array([-1, 1], np.int8), size=(n, d))
  return rng.integers(0, 1 << bits, size=(n, d), dtype=np.uint8)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("dim", [1, 5, 31, 32, 33, 64, 127])
def test_round_trip(bits, dim):
  rng = np.random.default_rng(100 * bits + dim)
  codes = _random_codes(rng, 7, dim, bits)
  words = jax.jit(packing.pack_codes, static_argnums=1)(codes, bits)
  assert words.dtype == np.uint32
  assert words.shape == (7, packing.words_per_row(dim, bits))
  back = jax.jit(packing.unpack_codes, static_argnums=(1, 2))(words, bits, dim)
  np.testing.assert_array_equal(np.asarray(back), codes)
  assert back.dtype == (np.int8 if bits == 1 else np.uint8)


@pytest.mark.parametrize("name, bits, codes, expected", [
    # dim j sits at bit (j % per_word) * field_bits of word j // per_word.
    ("1bit_signs", 1, [1, -1, 1, 1] + [-1] * 28 + [1], [0b1101, 0b1]),
    ("2bit", 2, [3, 0, 1, 2], [3 | (1 << 4) | (2 << 6)]),
    ("3bit_in_4bit_fields", 3, [7, 1, 0, 5], [7 | (1 << 4) | (5 << 12)]),
    ("4bit", 4, [0xA, 0xB] * 4 + [0xF], [0xBABABABA, 0xF]),
    ("8bit", 8, [1, 2, 3, 255, 9], [1 | 2 << 8 | 3 << 16 | 255 << 24, 9]),
])
def test_golden_layout(name, bits, codes, expected):
  dtype = np.int8 if bits == 1 else np.uint8
  words = packing.pack_codes(np.asarray([codes], dtype), bits)
  np.testing.assert_array_equal(np.asarray(words)[0], np.asarray(expected, np.uint32), err_msg=name)


def test_packed_nbytes_counts_whole_words():
  assert packing.packed_nbytes(10, 64, 1) == 10 * 2 * 4
  assert packing.packed_nbytes(10, 65, 1) == 10 * 3 * 4
  assert packing.packed_nbytes(3, 64, 4) == 3 * 8 * 4
  assert packing.packed_nbytes(3, 10, 3) == 3 * 2 * 4  # 8 four-bit fields per word


def test_rejects_unpackable_width():
  with pytest.raises(ValueError, match="cannot pack 5-bit"):
    packing.pack_codes(np.zeros((1, 4), np.uint8), 5)
