"""Plain NumPy / Python references shared by the retrieval and evaluation tests (not a test module)."""

import fractions

import numpy as np

from hq_jax.quant.pq import ProductCodes
from hq_jax.quant.quantizer import LayeredQuantized, QuantizedMatrix, exact_weights

F = fractions.Fraction


def layers_of(rep):
  """(layers, weights) of a quantized rep: one layer with weight 1 for a QuantizedMatrix."""
  if isinstance(rep, LayeredQuantized):
    return tuple(rep.layers), tuple(rep.weights)
  return (rep,), (1.0,)


def _scales64(qm: QuantizedMatrix) -> np.ndarray:
  """(n, 1) float64 scales (exactly the stored float32 values)."""
  s = np.asarray(qm.scale_values(), np.float64).reshape(-1, 1)
  return np.broadcast_to(s, (qm.codes.shape[0], 1))


def dequantized64(qm: QuantizedMatrix) -> np.ndarray:
  """offset + scale * codes in float64 (exact: a float32 times an 8-bit integer plus a float32)."""
  return np.float64(np.asarray(qm.offset)) + _scales64(qm) * np.asarray(qm.codes, np.float64)


def pq_decoded(pc: ProductCodes) -> np.ndarray:
  """Product codes decoded by plain NumPy: row r is the concatenation over m of codebooks[m][codes[r, m]]."""
  codes, books = np.asarray(pc.codes, np.int64), np.asarray(pc.codebooks)
  return np.concatenate([books[m][codes[:, m]] for m in range(books.shape[0])], axis=1)


def float_rows(rep) -> np.ndarray:
  """The rows the float path scores: float embeddings themselves, or decoded product codes (float32)."""
  return pq_decoded(rep) if isinstance(rep, ProductCodes) else np.asarray(rep, np.float32)


def float64_scores(user_rep, item_rep) -> np.ndarray:
  """The float64 reference: sum_k w_k <x^_uk, x^_ik> from float64 dequantized rows (float reps: x itself,
  product codes: their decoded rows).

  Exact when scales and offsets (codewords) are short dyadic numbers and the sums stay below 2^53 (as the
  dyadic tests pick); otherwise float64 rounding, far below the gaps between distinct scores of random codes.
  """
  if not isinstance(user_rep, (QuantizedMatrix, LayeredQuantized)):
    return float_rows(user_rep).astype(np.float64) @ float_rows(item_rep).astype(np.float64).T
  (ul, weights), (il, _) = layers_of(user_rep), layers_of(item_rep)
  ws = [float(w) for w in (exact_weights(weights) if isinstance(user_rep, LayeredQuantized) else [1])]
  return sum(w * (dequantized64(qu) @ dequantized64(qi).T) for w, qu, qi in zip(ws, ul, il))


dyadic_scores = float64_scores  # the name the older tests use


def exact_scores(user_rep, item_rep) -> np.ndarray:
  """(B, I) exact rational scores sum_k w_k <x^_uk, x^_ik> (object array of Fractions); small inputs only."""
  (ul, weights), (il, _) = layers_of(user_rep), layers_of(item_rep)
  ws = exact_weights(weights) if isinstance(user_rep, LayeredQuantized) else [F(1)]
  num_users, num_items = ul[0].codes.shape[0], il[0].codes.shape[0]
  total = np.empty((num_users, num_items), dtype=object)
  total[:] = F(0)
  for w, qu, qi in zip(ws, ul, il):
    cu, ci = np.asarray(qu.codes, np.int64), np.asarray(qi.codes, np.int64)
    p, su_sum, si_sum, d = cu @ ci.T, cu.sum(1), ci.sum(1), cu.shape[1]
    su = [F(float(v)) for v in _scales64(qu)[:, 0]]
    si = [F(float(v)) for v in _scales64(qi)[:, 0]]
    ou, oi = F(float(np.asarray(qu.offset))), F(float(np.asarray(qi.offset)))
    for b in range(num_users):
      for j in range(num_items):
        total[b, j] += w * (su[b] * si[j] * int(p[b, j]) + ou * si[j] * int(si_sum[j]) + oi * su[b] * int(su_sum[b])
                            + d * ou * oi)
  return total


def exact_dequantized(rep) -> list[list[fractions.Fraction]]:
  """The dequantized rows offset + scale * codes as exact rationals (one matrix, or float rows)."""
  if not isinstance(rep, QuantizedMatrix):
    return [[F(float(v)) for v in row] for row in np.asarray(rep, np.float64)]
  codes = np.asarray(rep.codes, np.int64)
  scale = _scales64(rep)
  off = F(float(np.asarray(rep.offset)))
  return [[off + F(float(scale[r, 0])) * int(c) for c in row] for r, row in enumerate(codes)]


def order(scores_row) -> list[int]:
  """Item ids by (score desc, id asc): the ranking every search must reproduce."""
  return sorted(range(len(scores_row)), key=lambda i: (-scores_row[i], i))


def key_order(keys_row: np.ndarray) -> list[int]:
  """Item ids by lexicographic key words (I, W) desc, then id asc (for `scoring.ranking_scores`)."""
  cols = [np.arange(keys_row.shape[0])] + [-keys_row[:, j] for j in reversed(range(keys_row.shape[1]))]
  return np.lexsort(tuple(cols)).tolist()


def ranked(scores: np.ndarray, k: int, excluded=()) -> np.ndarray:
  """Top-k ids of one row by (score desc, id asc) with `excluded` removed; -1 past the eligible items."""
  scores = np.array(scores, dtype=object if scores.dtype == object else np.float64)
  keep = np.ones(len(scores), bool)
  keep[list(excluded)] = False
  ids = [i for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i)) if keep[i]][:k]
  return np.asarray(ids + [-1] * (k - len(ids)), np.int64)


def reference_topk(scores: np.ndarray, indptr, indices, users, k) -> np.ndarray:
  return np.stack([ranked(scores[u], k, indices[indptr[u]:indptr[u + 1]]) for u in users])
