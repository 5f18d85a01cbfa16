"""Plain NumPy references shared by the retrieval tests (not a test module)."""

import fractions

import numpy as np

from hq_jax.quant.quantizer import QuantizedMatrix


def exact_dequantized(rep) -> list[list[fractions.Fraction]]:
  """The dequantized rows offset + scale * codes as exact rationals."""
  if not isinstance(rep, QuantizedMatrix):
    return [[fractions.Fraction(float(v)) for v in row] for row in np.asarray(rep, np.float64)]
  codes = np.asarray(rep.codes, np.int64)
  scale = np.broadcast_to(np.asarray(rep.scale, np.float64).reshape(-1, 1), (codes.shape[0], 1))
  off = fractions.Fraction(float(np.asarray(rep.offset)))
  return [[off + fractions.Fraction(float(scale[r, 0])) * int(c) for c in row] for r, row in enumerate(codes)]


def dyadic_scores(user_rep, item_rep) -> np.ndarray:
  """float64 <x^_u, x^_i>; exact when scales and offsets are short dyadic numbers (as the tests pick)."""
  deq = lambda r: np.asarray(r.offset, np.float64) + np.asarray(r.scale, np.float64) * np.asarray(r.codes, np.float64) \
      if isinstance(r, QuantizedMatrix) else np.asarray(r, np.float64)
  return deq(user_rep) @ deq(item_rep).T


def ranked(scores: np.ndarray, k: int, excluded=()) -> np.ndarray:
  """Top-k ids of one row by (score desc, id asc) with `excluded` removed; -1 past the eligible items."""
  scores = np.array(scores, dtype=object if scores.dtype == object else np.float64)
  keep = np.ones(len(scores), bool)
  keep[list(excluded)] = False
  ids = [i for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i)) if keep[i]][:k]
  return np.asarray(ids + [-1] * (k - len(ids)), np.int64)


def reference_topk(scores: np.ndarray, indptr, indices, users, k) -> np.ndarray:
  return np.stack([ranked(scores[u], k, indices[indptr[u]:indptr[u + 1]]) for u in users])
